//! Wiring: opening the store and the bus from configuration, and running the
//! roles of one process until it is told to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_alerts::{AudienceJob, AudienceWorker, Composer, Mailer, MailerSettings, Transports};
use herald_bus::embedded::EmbeddedBus;
use herald_bus::{Bus, PostgresBus, QueueConfig};
use herald_core::{Clock, SystemClock};
use herald_router::ingest::{ensure_topology, EmbeddedSink, EventSink, PostgresSink};
use herald_router::routing::{HoldExpiry, Releaser, RouteWorker};
use herald_router::sharding::{ReleaseSignal, ShardingConsumer};
use herald_router::subscribers;
use herald_scheduler::builtin::{BuildDueAlerts, ExpireHolds, Prune, Redrive};
use herald_scheduler::{
    Builtins, EmailSender, Notifier, Scheduler, SchedulerSettings, TransportEmail,
};
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
    /// Stores webhook batches and publishes them in one transaction.
    pub events: Arc<dyn EventSink>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] herald_store::StoreError),
    #[error(transparent)]
    Bus(#[from] herald_bus::BusError),
    #[error(
        "bus.backend = {backend:?} needs the {needs} store; store.url gives the {store} store: \
         set bus.backend = {fits:?} (HERALD_BUS__BACKEND={fits}) or another store.url"
    )]
    BusStoreMismatch {
        backend: &'static str,
        needs: &'static str,
        store: &'static str,
        /// The bus that lives in the store given.
        fits: &'static str,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    Settings(#[from] herald_alerts::SettingsError),
    #[error("invalid route: {0}")]
    Route(#[from] herald_core::NameError),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("push delivery: {0}")]
    Push(#[from] herald_router::push::PushError),
    #[error("invalid configuration: {0}")]
    Ingest(#[from] crate::ingest::IngestConfigError),
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
            fits: if store.sqlite().is_some() {
                "embedded"
            } else {
                "postgres"
            },
        };
        // Each pairing's event sink shares the bus instance, so a publish
        // wakes this process's receivers at once.
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (bus, events): (Arc<dyn Bus>, Arc<dyn EventSink>) = match config.bus.backend {
            BusBackend::Embedded => {
                let db = store
                    .sqlite()
                    .ok_or_else(|| mismatch("embedded", "SQLite"))?;
                let bus = Arc::new(EmbeddedBus::new(db.clone()));
                (bus.clone(), Arc::new(EmbeddedSink::new(bus, clock)))
            }
            BusBackend::Postgres => {
                let db = store
                    .postgres()
                    .ok_or_else(|| mismatch("postgres", "PostgreSQL"))?;
                let bus = Arc::new(PostgresBus::new(db.clone()).await?);
                (bus.clone(), Arc::new(PostgresSink::new(bus, clock)))
            }
        };
        Ok(Backends { store, bus, events })
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

/// The composer for this configuration: transports, sender, signing key;
/// `mailer` as [`Config::mailer_settings`] gives it.
pub fn composer(
    config: &Config,
    mailer: &MailerSettings,
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
        mailer,
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
    // Unsubscribe links lead to the port actually bound (`--listen
    // 127.0.0.1:0` included) unless a public URL is configured.
    let mailer_settings = config.mailer_settings(listener.local_addr()?);
    let composer = composer(config, &mailer_settings, &backends.store, clock.clone())?;
    // Before any worker or request can publish: an event published before
    // its subscriber queues exist would be lost to them.
    ensure_topology(backends.bus.as_ref(), queue_config(config)).await?;
    herald_router::routing::ensure_topology(backends.bus.as_ref(), &config.routes).await?;
    let release_signal = ReleaseSignal::new();
    let mut workers = JoinSet::new();
    if roles.contains(Role::Ingest) {
        let settings = config.ingest.subscriber_settings();
        let suppressions = Arc::new(subscribers::suppressions(
            backends.store.clone(),
            backends.bus.clone(),
            settings,
        ));
        supervise(
            &mut workers,
            "suppressions",
            shutdown.clone(),
            move |stop| {
                let worker = suppressions.clone();
                async move { worker.run(stop).await }
            },
        );
        let stats = Arc::new(subscribers::stats(
            backends.store.clone(),
            backends.bus.clone(),
            settings,
        ));
        supervise(&mut workers, "stats", shutdown.clone(), move |stop| {
            let worker = stats.clone();
            async move { worker.run(stop).await }
        });
    }
    if roles.contains(Role::Scheduler) {
        let scheduler = scheduler(config, &backends, roles, clock.clone())?;
        let store = backends.store.clone();
        let folder = config
            .scheduler
            .process_dir
            .clone()
            .unwrap_or_else(|| config.store.data_dir.join("processes"));
        supervise(&mut workers, "scheduler", shutdown.clone(), move |stop| {
            let scheduler = scheduler.clone();
            let store = store.clone();
            let folder = folder.clone();
            async move {
                // Loaded on every (re)start of the worker: the files win.
                let loaded = herald_scheduler::files::load(&store, Some(&folder))
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(folder = %folder.display(), processes = ?loaded, "process definitions loaded");
                scheduler.run(stop).await.map_err(|e| e.to_string())
            }
        });
    }
    if roles.contains(Role::Mailer) {
        let mailer = Mailer::new(
            backends.store.clone(),
            backends.bus.clone(),
            composer.clone(),
            mailer_settings,
            queue_config(config),
            clock.clone(),
        )?;
        supervise(&mut workers, "mailer", shutdown.clone(), move |stop| {
            let mailer = mailer.clone();
            async move { mailer.run(stop).await.map(drop) }
        });
    }

    if roles.contains(Role::Router) {
        start_router(
            &mut workers,
            config,
            &backends,
            &release_signal,
            clock.clone(),
            &shutdown,
        )?;
        start_push(&mut workers, config, &backends, clock.clone(), &shutdown)?;
    }
    let mut state = AppState::new(backends.store.clone(), backends.bus.clone(), composer)
        .with_release_signal(release_signal.clone());
    if roles.contains(Role::Ingest) {
        let receivers = config
            .ingest
            .receivers(backends.events.clone(), clock.clone())?;
        state = state.with_webhooks(Arc::new(receivers));
    }
    let limits = HttpLimits {
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: config.server.request_timeout,
    };
    let web = roles.contains(Role::Web).then(|| {
        herald_web::router(herald_web::WebState::new(
            state.clone(),
            web_settings(config),
        ))
    });
    let router = herald_server::router(state, limits).layer(axum::Extension(ImportLimits {
        max_bytes: config.server.max_import_bytes,
        spool_dir: Some(config.store.data_dir.clone()),
    }));
    // The UI's routes carry their own layers (HTML errors, not JSON ones).
    let router = match web {
        Some(web) => router.merge(web),
        None => router,
    };

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

/// The web role's settings from configuration.
pub fn web_settings(config: &Config) -> herald_web::WebSettings {
    herald_web::WebSettings {
        secure_cookies: config.web.secure_cookies,
        session_ttl: config.web.session_ttl,
        lockout: herald_store::users::LockoutPolicy {
            max_failures: config.web.max_failed_sign_ins,
            window: config.web.lockout_window,
        },
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: config.server.request_timeout,
    }
}

/// Process notifications by email go out through the configured transports,
/// from the mailer's sender.
fn notification_email(config: &Config) -> Result<Arc<dyn EmailSender>, AppError> {
    let transports = Transports::build(
        &config.transports,
        &config.mailer.default_transport,
        &config.store.data_dir,
    )?;
    let sender = &config.mailer.from;
    let address = sender.address.parse().map_err(|e| {
        AppError::Settings(herald_alerts::SettingsError::new(
            "mailer.from.address",
            format!("{e}"),
        ))
    })?;
    let domain = sender
        .address
        .rsplit_once('@')
        .map_or("herald.localhost", |(_, d)| d)
        .to_owned();
    Ok(Arc::new(TransportEmail {
        transports: Arc::new(transports),
        from: herald_mail::Mailbox::new(sender.name.clone(), address),
        domain,
    }))
}

/// The scheduler of this process. Audience
/// builds have no polling loop of their own: they are the built-in job
/// `brand-alerts.build-due`, which the shipped `brand-alerts` process runs
/// every minute. A scheduler can run that job only in a process that also
/// has the audience role (so `--roles scheduler,audience` in a distributed
/// deployment).
fn scheduler(
    config: &Config,
    backends: &Backends,
    roles: &Roles,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Scheduler>, AppError> {
    let mut builtins = Builtins::default()
        .with(
            "holds.expire",
            Arc::new(ExpireHolds {
                expiry: Arc::new(HoldExpiry::new(
                    config.routes.clone(),
                    backends.store.clone(),
                    backends.bus.clone(),
                )),
                default_max_age: config.routing.hold_max_age,
            }),
        )
        .with("queues.redrive", Arc::new(Redrive(backends.bus.clone())))
        .with(
            "store.prune",
            Arc::new(Prune {
                store: backends.store.clone(),
                clock: clock.clone(),
            }),
        );
    if roles.contains(Role::Audience) {
        let job = Arc::new(AudienceJob::new(
            backends.store.clone(),
            backends.bus.clone(),
            config.audience.clone(),
            queue_config(config),
            clock.clone(),
        )?);
        builtins = builtins.with(
            "brand-alerts.build-due",
            Arc::new(BuildDueAlerts(Arc::new(AudienceWorker::new(job)))),
        );
    }
    let settings = SchedulerSettings {
        lease_ttl: config.scheduler.lease_ttl,
        renew_every: config.scheduler.renew_every,
        tick_interval: config.scheduler.tick_interval,
        ..SchedulerSettings::default()
    };
    Ok(Arc::new(Scheduler::new(
        backends.store.clone(),
        clock.clone(),
        settings,
        builtins,
        Arc::new(Notifier::new(Some(notification_email(config)?), clock)),
    )))
}

/// One push worker per `[[push]]` entry, each delivering its shard's queue
/// to the shard's endpoint.
fn start_push(
    workers: &mut JoinSet<()>,
    config: &Config,
    backends: &Backends,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    for target in config.push_targets()? {
        let worker = herald_router::push::PushWorker::new(
            backends.bus.clone(),
            target,
            queue_config(config),
            clock.clone(),
        )?;
        supervise(workers, "push", shutdown.clone(), move |stop| {
            let worker = worker.clone();
            async move { worker.run(stop).await.map(drop) }
        });
    }
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

/// The router role: one worker per configured route, the hold releaser and
/// the consumer of the `sharding-events` queue, which wakes the releaser
/// through `signal` as the API does.
fn start_router(
    workers: &mut JoinSet<()>,
    config: &Config,
    backends: &Backends,
    signal: &ReleaseSignal,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    for route in &config.routes {
        let worker = RouteWorker::new(
            route.clone(),
            backends.store.clone(),
            backends.bus.clone(),
            config.routing.clone(),
        )?;
        supervise(workers, "route", shutdown.clone(), move |stop| {
            worker.clone().run(stop)
        });
    }
    let releaser = Releaser::new(
        config.routes.clone(),
        backends.store.clone(),
        backends.bus.clone(),
        signal.clone(),
        config.routing.clone(),
        clock,
    );
    supervise(workers, "hold releaser", shutdown.clone(), move |stop| {
        releaser.clone().run(stop)
    });
    let consumer =
        ShardingConsumer::new(backends.store.clone(), backends.bus.clone(), signal.clone());
    supervise(workers, "sharding events", shutdown.clone(), move |stop| {
        consumer.clone().run(stop)
    });
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
