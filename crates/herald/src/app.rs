//! Wiring: opening the store and the bus from configuration, and running the
//! roles of one process until it is told to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_alerts::{AudienceJob, AudienceWorker, Composer, Mailer, Transports};
use herald_bus::embedded::EmbeddedBus;
use herald_bus::{Bus, PostgresBus, QueueConfig};
use herald_core::{Clock, SystemClock};
use herald_server::api::members::ImportLimits;
use herald_server::{AppState, HttpLimits};
use herald_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{BusBackend, Config, ConfigError};
use crate::roles::{Role, Roles};

/// How long a failed worker waits before it starts again.
const WORKER_RESTART_DELAY: Duration = Duration::from_secs(5);

/// The backends of one process, opened from configuration.
#[derive(Clone)]
pub struct Backends {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] herald_store::StoreError),
    #[error(transparent)]
    Bus(#[from] herald_bus::BusError),
    #[error(
        "bus.backend = {backend:?} needs the {needs} store; store.url gives the {store} store"
    )]
    BusStoreMismatch {
        backend: &'static str,
        needs: &'static str,
        store: &'static str,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    Settings(#[from] herald_alerts::SettingsError),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

impl Backends {
    /// Connects to the store (applying its migrations) and the bus.
    pub async fn open(config: &Config) -> Result<Backends, AppError> {
        let store = Store::connect(&config.store_url()).await?;
        store.migrate().await?;
        let mismatch = |backend, needs| AppError::BusStoreMismatch {
            backend,
            needs,
            store: store.backend(),
        };
        let bus: Arc<dyn Bus> = match config.bus.backend {
            BusBackend::Embedded => {
                let db = store
                    .sqlite()
                    .ok_or_else(|| mismatch("embedded", "SQLite"))?;
                Arc::new(EmbeddedBus::new(db.clone()))
            }
            BusBackend::Postgres => {
                let db = store
                    .postgres()
                    .ok_or_else(|| mismatch("postgres", "PostgreSQL"))?;
                Arc::new(PostgresBus::new(db.clone()).await?)
            }
        };
        Ok(Backends { store, bus })
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// The configuration of queues Herald creates itself.
pub fn queue_config(config: &Config) -> QueueConfig {
    QueueConfig {
        max_receives: config.bus.max_receives,
        dead_letter_queue: None,
        dedup_window: config.bus.dedup_window,
        max_body_bytes: config.bus.max_body_bytes,
    }
}

/// The composer for this configuration: transports, sender, signing key.
pub fn composer(
    config: &Config,
    store: &Store,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Composer>, AppError> {
    let transports = Transports::build(
        &config.transports,
        &config.mailer.default_transport,
        &config.store.data_dir,
    )?;
    let key = config.unsubscribe_key()?;
    Ok(Arc::new(Composer::new(
        store.clone(),
        Arc::new(transports),
        &config.mailer,
        &key,
        clock,
    )?))
}

/// Runs the given roles on `listener` until `shutdown` fires, then stops
/// taking work, lets in-flight requests and workers finish, and returns.
pub async fn run(
    config: &Config,
    backends: Backends,
    roles: &Roles,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    // Imports spool here and the outbox writes here, whatever the store.
    std::fs::create_dir_all(&config.store.data_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let composer = composer(config, &backends.store, clock.clone())?;
    let mut workers = JoinSet::new();
    if roles.contains(Role::Audience) {
        let job = Arc::new(AudienceJob::new(
            backends.store.clone(),
            backends.bus.clone(),
            config.audience.clone(),
            queue_config(config),
            clock.clone(),
        )?);
        supervise(&mut workers, "audience", shutdown.clone(), move |stop| {
            AudienceWorker::new(job.clone()).run(stop)
        });
    }
    if roles.contains(Role::Mailer) {
        let mailer = Mailer::new(
            backends.store.clone(),
            backends.bus.clone(),
            composer.clone(),
            config.mailer.clone(),
            queue_config(config),
            clock.clone(),
        )?;
        supervise(&mut workers, "mailer", shutdown.clone(), move |stop| {
            let mailer = mailer.clone();
            async move { mailer.run(stop).await.map(drop) }
        });
    }

    let state = AppState::new(backends.store.clone(), backends.bus.clone(), composer);
    let limits = HttpLimits {
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: config.server.request_timeout,
    };
    let router = herald_server::router(state, limits).layer(axum::Extension(ImportLimits {
        max_bytes: config.server.max_import_bytes,
        spool_dir: Some(config.store.data_dir.clone()),
    }));

    let address = listener.local_addr()?;
    tracing::info!(%address, %roles, store = backends.store.backend(), bus = backends.bus.backend(), "Herald is listening");
    let serving = herald_server::serve(listener, router, shutdown.clone());
    tokio::pin!(serving);
    let grace = config.server.shutdown_grace;
    tokio::select! {
        result = &mut serving => result?,
        () = shutdown.cancelled() => {
            tracing::info!(?grace, "stopping: finishing in-flight requests and sends");
            match tokio::time::timeout(grace, &mut serving).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(?grace, "requests still open after the grace period; closing them"),
            }
        }
    }
    // Workers saw the same token: they stop taking work and finish what
    // they hold (a mailer confirms its in-flight sends) before they return.
    if tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            ?grace,
            "workers still busy after the grace period; stopping them"
        );
        workers.shutdown().await;
    }
    backends.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs a worker until `shutdown`, starting it again after an error (a
/// database restart, say) rather than leaving the role dead in a live
/// process.
fn supervise<F, Fut, E>(
    workers: &mut JoinSet<()>,
    name: &'static str,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    workers.spawn(async move {
        tracing::info!(worker = name, "started");
        loop {
            match start(shutdown.clone()).await {
                Ok(()) if shutdown.is_cancelled() => break,
                Ok(()) => tracing::warn!(worker = name, "stopped on its own; starting it again"),
                Err(e) => tracing::error!(worker = name, error = %e, "failed; starting it again in {WORKER_RESTART_DELAY:?}"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(WORKER_RESTART_DELAY) => {}
            }
        }
        tracing::info!(worker = name, "stopped");
    });
}

/// A token fired by Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fired = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops Herald");
                    let _ = ctrl_c.await;
                    fired.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => tracing::info!("interrupt received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        fired.cancel();
    });
    token
}
