use std::path::PathBuf;

use herald::app::{self, Backends};
use herald::config::Config;
use herald::roles::Roles;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    pub backends: Backends,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    _data: tempfile::TempDir,
}

/// Starts Herald on 127.0.0.1:0 with a fresh SQLite database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// As [`spawn_app`], with the configuration adjusted first (its data folder
/// already points at the fresh temporary folder).
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.store.data_dir = data.path().to_path_buf();
    adjust(&mut config);
    let backends = Backends::open(&config).await.expect("backends open");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let backends = backends.clone();
        let shutdown = shutdown.clone();
        async move {
            app::run(&config, backends, &Roles::all(), listener, shutdown)
                .await
                .expect("app runs");
        }
    });
    let app = TestApp {
        address,
        data_dir: data.path().to_path_buf(),
        client: reqwest::Client::new(),
        backends,
        shutdown,
        server,
        _data: data,
    };
    app.wait_until_serving().await;
    app
}

impl TestApp {
    /// Start-up work (topology, process files) runs before the listener
    /// answers; a test that breaks a backend must not race it.
    async fn wait_until_serving(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let answered = self
                .client
                .get(format!("{}/healthz", self.address))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline && !self.server.is_finished(),
                "the app did not start serving"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap();
    }
}

/// The `herald` binary built for these tests.
pub fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}
