//! Wiring: opening the store and the bus from configuration, and running the
//! roles of one process until it is told to stop.

use std::sync::Arc;

use herald_bus::embedded::EmbeddedBus;
use herald_bus::Bus;
use herald_server::{AppState, HttpLimits};
use herald_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{BusBackend, Config};
use crate::roles::Roles;

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
    #[error("bus.backend = {backend:?} needs the SQLite store; store.url is {store}")]
    BusNeedsSqlite {
        backend: &'static str,
        store: &'static str,
    },
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

impl Backends {
    /// Connects to the store (applying its migrations) and the bus.
    pub async fn open(config: &Config) -> Result<Backends, AppError> {
        let store = Store::connect(&config.store_url()).await?;
        store.migrate().await?;
        let bus: Arc<dyn Bus> = match config.bus.backend {
            BusBackend::Embedded => {
                let db = store.sqlite().ok_or(AppError::BusNeedsSqlite {
                    backend: "embedded",
                    store: store.backend(),
                })?;
                Arc::new(EmbeddedBus::new(db.clone()))
            }
        };
        Ok(Backends { store, bus })
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
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
    let state = AppState {
        store: backends.store.clone(),
        bus: backends.bus.clone(),
        metrics: herald_server::telemetry::prometheus(),
    };
    let limits = HttpLimits {
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: config.server.request_timeout,
    };
    let router = herald_server::router(state, limits);

    let address = listener.local_addr()?;
    tracing::info!(%address, %roles, store = backends.store.backend(), bus = backends.bus.backend(), "Herald is listening");
    let serving = herald_server::serve(listener, router, shutdown.clone());
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => result?,
        () = shutdown.cancelled() => {
            let grace = config.server.shutdown_grace;
            tracing::info!(?grace, "stopping: finishing in-flight requests");
            match tokio::time::timeout(grace, &mut serving).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(?grace, "requests still open after the grace period; closing them"),
            }
        }
    }
    backends.close().await;
    tracing::info!("stopped");
    Ok(())
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
