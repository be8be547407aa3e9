//! The test harness every API test uses: the real router on 127.0.0.1:0
//! over a fresh SQLite database in its own temporary folder, and one API key
//! per scope.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::sync::Arc;
use std::time::Duration;

use herald_alerts::{Composer, MailerSettings, Transports};
use herald_bus::{Bus, EmbeddedBus};
use herald_core::api_key::{ApiKeyName, Scope, Scopes};
use herald_core::SystemClock;
use herald_server::{AppState, HttpLimits};
use herald_store::Store;
use tokio_util::sync::CancellationToken;

pub const LIMITS: HttpLimits = HttpLimits {
    max_body_bytes: 64 * 1024,
    request_timeout: Duration::from_secs(30),
};

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    /// Keys with the admin, marketing and read-only scopes.
    pub admin_key: String,
    pub marketing_key: String,
    pub read_key: String,
    pub data: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|router| router).await
}

/// As [`spawn_app`], with the router passed through `wrap` first (to add a
/// layer such as an `Extension` with other limits).
pub async fn spawn_app_with(wrap: impl FnOnce(axum::Router) -> axum::Router) -> TestApp {
    let data = tempfile::tempdir().expect("temporary folder");
    let store = Store::connect(&format!(
        "sqlite://{}",
        data.path().join("herald.db").display()
    ))
    .await
    .expect("store opens");
    store.migrate().await.expect("migrations apply");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(store.sqlite().unwrap().clone()));
    launch(store, bus, data, wrap).await
}

/// The backends a test can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite store and embedded bus, the all-in-one default.
    Embedded,
    /// PostgreSQL store and bus, in a fresh schema of the database
    /// `HERALD_TEST_DATABASE_URL` names.
    Postgres,
}

/// As [`spawn_app`] on `backend`; `None` (the test is skipped) for
/// PostgreSQL when no server is configured, unless `HERALD_REQUIRE_POSTGRES=1`.
pub async fn spawn_app_on(backend: Backend) -> Option<TestApp> {
    match backend {
        Backend::Embedded => Some(spawn_app().await),
        Backend::Postgres => {
            let url = postgres_schema_url().await?;
            let data = tempfile::tempdir().expect("temporary folder");
            let store = Store::connect(&url).await.expect("store opens");
            store.migrate().await.expect("migrations apply");
            let bus: Arc<dyn Bus> = Arc::new(
                herald_bus::PostgresBus::new(store.postgres().unwrap().clone())
                    .await
                    .expect("bus opens"),
            );
            Some(launch(store, bus, data, |router| router).await)
        }
    }
}

/// A fresh schema in the `HERALD_TEST_DATABASE_URL` database, as a store URL
/// whose connections use it.
async fn postgres_schema_url() -> Option<String> {
    let Ok(base) = std::env::var("HERALD_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set"
        );
        eprintln!("skipped: HERALD_TEST_DATABASE_URL is not set");
        return None;
    };
    let schema = format!("herald_api_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("schema created");
    pool.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// Serves the real router over `store` and `bus` on 127.0.0.1:0.
async fn launch(
    store: Store,
    bus: Arc<dyn Bus>,
    data: tempfile::TempDir,
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> TestApp {
    let settings = MailerSettings::default();
    let transports = Transports::build(
        &Default::default(),
        &settings.default_transport,
        data.path(),
    )
    .expect("default transports");
    let composer = Composer::new(
        store.clone(),
        Arc::new(transports),
        &settings,
        &[7u8; 32],
        Arc::new(SystemClock),
    )
    .expect("composer");
    let state = AppState::new(store.clone(), bus.clone(), Arc::new(composer));
    let router = wrap(herald_server::router(state, LIMITS));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_server::serve(listener, router, shutdown.clone()));

    let key = |scope: Scope, name: &'static str| {
        let store = store.clone();
        async move {
            let (_, token) = store
                .api_keys()
                .create(
                    &ApiKeyName::parse(name).unwrap(),
                    &Scopes::new([scope]).unwrap(),
                )
                .await
                .expect("key created");
            token.expose().to_owned()
        }
    };
    TestApp {
        address,
        client: reqwest::Client::new(),
        admin_key: key(Scope::Admin, "admin").await,
        marketing_key: key(Scope::Marketing, "marketing").await,
        read_key: key(Scope::ReadOnly, "reader").await,
        store,
        bus,
        data,
        shutdown,
    }
}

impl TestApp {
    /// A new key with these scopes (`"queues:shard-1."`), as its token.
    pub async fn key_with(&self, name: &str, scopes: &str) -> String {
        let (_, token) = self
            .store
            .api_keys()
            .create(&ApiKeyName::parse(name).unwrap(), &scopes.parse().unwrap())
            .await
            .expect("key created");
        token.expose().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request with the marketing key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.marketing_key)
    }

    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }
}

/// The status and JSON body of a response (`Null` for an empty body).
pub async fn json_of(response: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"))
    };
    (status, body)
}
