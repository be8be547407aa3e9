//! The jobs Herald runs in-process, by name: `brand-alerts.build-due`,
//! `queues.redrive` and `store.prune`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_alerts::{AudienceWorker, BuildOutcome};
use herald_bus::Bus;
use herald_core::{Clock, QueueName};
use herald_store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Arguments of a built-in job, as written in its task.
pub type Args = BTreeMap<String, Value>;

#[async_trait]
pub trait BuiltinJob: Send + Sync {
    /// Runs once; `Ok` holds a summary for the attempt's log, `Err` the
    /// reason it failed. Stops early when `cancel` fires.
    async fn run(&self, args: &Args, cancel: CancellationToken) -> Result<String, String>;
}

/// The built-in jobs this process can run, by name.
#[derive(Clone, Default)]
pub struct Builtins(HashMap<String, Arc<dyn BuiltinJob>>);

impl Builtins {
    pub fn with(mut self, name: &str, job: Arc<dyn BuiltinJob>) -> Self {
        self.0.insert(name.to_owned(), job);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn BuiltinJob>> {
        self.0.get(name)
    }

    /// Every built-in Herald ships, over these backends.
    pub fn standard(
        store: Store,
        bus: Arc<dyn Bus>,
        audience: Arc<AudienceWorker>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Builtins::default()
            .with("brand-alerts.build-due", Arc::new(BuildDueAlerts(audience)))
            .with("queues.redrive", Arc::new(Redrive(bus)))
            .with("store.prune", Arc::new(Prune { store, clock }))
    }
}

/// Finds the brand alerts due now and builds their audiences.
pub struct BuildDueAlerts(pub Arc<AudienceWorker>);

#[async_trait]
impl BuiltinJob for BuildDueAlerts {
    async fn run(&self, _args: &Args, cancel: CancellationToken) -> Result<String, String> {
        self.0
            .job()
            .ensure_queue()
            .await
            .map_err(|e| e.to_string())?;
        let outcomes = self.0.run_once(&cancel).await.map_err(|e| e.to_string())?;
        let mut log = format!("{} due alert(s)\n", outcomes.len());
        let mut interrupted = 0;
        for (alert, outcome) in &outcomes {
            let line = match outcome {
                BuildOutcome::Finished(a) => format!(
                    "{alert}: built, {} member(s) enqueued",
                    a.build.audience_size.unwrap_or(a.build.enqueued)
                ),
                BuildOutcome::Failed(reason) => format!("{alert}: failed: {reason}"),
                BuildOutcome::Stopped(state) => {
                    format!("{alert}: not built, the alert is {state:?}")
                }
                BuildOutcome::Interrupted => {
                    interrupted += 1;
                    format!("{alert}: interrupted; resumes at the next run")
                }
            };
            log.push_str(&line);
            log.push('\n');
        }
        if interrupted > 0 && cancel.is_cancelled() {
            return Err(format!(
                "stopped with {interrupted} build(s) unfinished\n{log}"
            ));
        }
        Ok(log)
    }
}

/// Moves messages from a dead-letter queue back: `args.queue` (the DLQ),
/// `args.to` (default: the DLQ name without `.dlq`), `args.limit`.
pub struct Redrive(pub Arc<dyn Bus>);

#[async_trait]
impl BuiltinJob for Redrive {
    async fn run(&self, args: &Args, _cancel: CancellationToken) -> Result<String, String> {
        let dlq = text_arg(args, "queue")?.ok_or("args.queue: give the dead-letter queue")?;
        let to = match text_arg(args, "to")? {
            Some(to) => to,
            None => dlq
                .strip_suffix(".dlq")
                .ok_or("args.to: give the queue to move messages to")?
                .to_owned(),
        };
        let dlq = QueueName::parse(&dlq).map_err(|e| format!("args.queue: {e}"))?;
        let to = QueueName::parse(&to).map_err(|e| format!("args.to: {e}"))?;
        let limit = match args.get("limit") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or("args.limit: give a whole number")?),
        };
        let moved = self
            .0
            .redrive(&dlq, &to, limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("moved {moved} message(s) from {dlq} to {to}"))
    }
}

/// Deletes scheduler runs that ended longer than `args.retention` ago
/// (default 30 days).
pub struct Prune {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
}

#[async_trait]
impl BuiltinJob for Prune {
    async fn run(&self, args: &Args, _cancel: CancellationToken) -> Result<String, String> {
        let retention = match text_arg(args, "retention")? {
            Some(text) => humantime::parse_duration(&text)
                .map_err(|e| format!("args.retention: {text:?}: {e}"))?,
            None => Duration::from_secs(30 * 24 * 3600),
        };
        let before = herald_core::Timestamp(
            self.clock.now().millis() - herald_core::time::duration_millis(retention),
        );
        let runs = self
            .store
            .processes()
            .prune_runs(before)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "deleted {runs} scheduler run(s) older than {}",
            humantime::format_duration(retention)
        ))
    }
}

fn text_arg(args: &Args, name: &str) -> Result<Option<String>, String> {
    match args.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("args.{name}: give a string")),
    }
}
