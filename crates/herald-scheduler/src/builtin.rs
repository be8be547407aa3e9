//! The jobs Herald runs in-process, by name: `brand-alerts.build-due`,
//! `holds.expire`, `queues.redrive` and `store.prune`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_alerts::{AudienceWorker, BuildOutcome};
use herald_bus::Bus;
use herald_core::{Clock, QueueName, Timestamp};
use herald_router::routing::HoldExpiry;
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

/// Moves events held (for a migrating customer) longer than `args.max_age`
/// to their route's dead-letter queue, as the router's releaser does;
/// `max_age` defaults to `routing.hold_max_age`.
pub struct ExpireHolds {
    pub expiry: Arc<HoldExpiry>,
    pub default_max_age: Duration,
}

#[async_trait]
impl BuiltinJob for ExpireHolds {
    async fn run(&self, args: &Args, _cancel: CancellationToken) -> Result<String, String> {
        let max_age = duration_arg(args, "max_age")?.unwrap_or(self.default_max_age);
        if max_age.is_zero() {
            return Err("args.max_age: must be longer than 0s".into());
        }
        let expired = self
            .expiry
            .expire(max_age)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "moved {expired} event(s) held longer than {} to their route's dead-letter queue",
            describe(max_age)
        ))
    }
}

/// Rows deleted per statement, so a large prune never holds the (SQLite)
/// writer for long and stops soon when cancelled.
const PRUNE_CHUNK: u32 = 1000;

/// Deletes scheduler runs that ended longer than `args.retention` ago
/// (default 30 days), and email events received and send-log rows of
/// finished alerts claimed longer than `args.events_retention` ago (default
/// 90 days). Send-log rows inside the members' cadence window always stay:
/// the cadence counts them.
pub struct Prune {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
}

#[async_trait]
impl BuiltinJob for Prune {
    async fn run(&self, args: &Args, cancel: CancellationToken) -> Result<String, String> {
        const DAY: u64 = 24 * 3600;
        let retention = duration_arg(args, "retention")?.unwrap_or(Duration::from_secs(30 * DAY));
        let events_retention =
            duration_arg(args, "events_retention")?.unwrap_or(Duration::from_secs(90 * DAY));
        let now = self.clock.now();
        let store_error = |e: herald_store::StoreError| e.to_string();

        let runs = self
            .store
            .processes()
            .prune_runs(ago(now, retention))
            .await
            .map_err(store_error)?;
        let mut log = format!(
            "deleted {runs} scheduler run(s) older than {}\n",
            describe(retention)
        );

        let events_before = ago(now, events_retention);
        let events = self.store.email_events();
        let mut deleted = 0;
        loop {
            if cancel.is_cancelled() {
                return Err(format!("stopped after {deleted} email event(s)\n{log}"));
            }
            let chunk = events
                .prune_received_before(events_before, PRUNE_CHUNK)
                .await
                .map_err(store_error)?;
            deleted += chunk;
            if chunk < u64::from(PRUNE_CHUNK) {
                break;
            }
        }
        log.push_str(&format!(
            "deleted {deleted} email event(s) received more than {} ago\n",
            describe(events_retention)
        ));

        let window = self
            .store
            .members()
            .cadence_policy()
            .await
            .map_err(store_error)?
            .window();
        let send_log_age = events_retention.max(window);
        let alerts = self.store.brand_alerts();
        let mut deleted = 0;
        loop {
            if cancel.is_cancelled() {
                return Err(format!("stopped after {deleted} send-log row(s)\n{log}"));
            }
            let chunk = alerts
                .prune_send_log(ago(now, send_log_age), PRUNE_CHUNK)
                .await
                .map_err(store_error)?;
            deleted += chunk;
            if chunk < u64::from(PRUNE_CHUNK) {
                break;
            }
        }
        log.push_str(&format!(
            "deleted {deleted} send-log row(s) of finished alerts claimed more than {} ago",
            describe(send_log_age)
        ));
        if send_log_age > events_retention {
            log.push_str(" (the cadence window)");
        }
        log.push('\n');
        Ok(log)
    }
}

/// A duration as an operator writes it: whole days as "90d" (humantime
/// would say "2months 29days 2h 52m 48s"), anything else as humantime does.
fn describe(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    if d.subsec_nanos() == 0 && d.as_secs() > 0 && d.as_secs().is_multiple_of(DAY) {
        format!("{}d", d.as_secs() / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn ago(now: Timestamp, age: Duration) -> Timestamp {
    Timestamp(now.millis() - herald_core::time::duration_millis(age))
}

fn duration_arg(args: &Args, name: &str) -> Result<Option<Duration>, String> {
    text_arg(args, name)?
        .map(|text| {
            humantime::parse_duration(&text).map_err(|e| format!("args.{name}: {text:?}: {e}"))
        })
        .transpose()
}

fn text_arg(args: &Args, name: &str) -> Result<Option<String>, String> {
    match args.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("args.{name}: give a string")),
    }
}
