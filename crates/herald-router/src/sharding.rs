//! Sharding events from outside: the wire shape `POST /api/sharding-events`
//! and the `sharding-events` queue both accept, the consumer of that queue,
//! and the signal that wakes the hold releaser when a migration ends.
//!
//! One event on the wire:
//!
//! ```json
//! {"id": "se-1", "customer": "c-42", "kind": "migration_started",
//!  "from": "shard-1", "to": "shard-2", "occurred_at": "2026-11-25T12:00:00Z"}
//! ```
//!
//! `assigned` and `migration_succeeded` take `shard`; `migration_started`
//! takes `from` and `to`; `migration_failed` takes none. A field the kind
//! does not take is refused rather than ignored.
//!
//! The queue carries one event per message. Shards that publish there
//! should use the customer id as the message group, so one customer's
//! events arrive in the order they were sent; an event the state machine
//! refuses (or a body that is not an event) goes to `sharding-events.dlq`
//! with a `reason` attribute and is not retried.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_bus::{Bus, BusError, Delivery, OutgoingMessage, QueueConfig, ReceiveOptions};
use herald_core::sharding::{
    CustomerId, ShardId, ShardingEvent, ShardingEventId, ShardingEventKind,
};
use herald_core::{QueueName, Timestamp};
use herald_store::sharding::{Recorded, ShardingError};
use herald_store::{Store, StoreError};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The queue shards may publish sharding events to.
pub const SHARDING_EVENTS_QUEUE: &str = "sharding-events";

/// The attribute of a dead letter that says why it is there.
pub const REASON_ATTRIBUTE: &str = "reason";

/// Longest dead-letter reason kept, in bytes.
const MAX_REASON_LEN: usize = 1_000;

/// Delay before a message whose store write failed is tried again.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Pause after a failed receive.
const RECEIVE_RETRY_DELAY: Duration = Duration::from_secs(1);

pub fn sharding_events_queue() -> QueueName {
    QueueName::parse(SHARDING_EVENTS_QUEUE).expect("a valid queue name")
}

/// Wakes the hold releaser of this process when a migration ends, so held
/// events leave at once instead of at the next sweep. Clones share one
/// signal; a wake with nobody waiting is kept for the next wait.
#[derive(Debug, Clone, Default)]
pub struct ReleaseSignal(Arc<Notify>);

impl ReleaseSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

/// What a sharding event names, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShardingEventKindName {
    Assigned,
    MigrationStarted,
    MigrationSucceeded,
    MigrationFailed,
}

/// A sharding event as clients send it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardingEventInput {
    /// Unique per event: sending the same id again is accepted once.
    #[schema(value_type = String, example = "se-1")]
    pub id: ShardingEventId,
    #[schema(value_type = String, example = "c-42")]
    pub customer: CustomerId,
    pub kind: ShardingEventKindName,
    /// `assigned` and `migration_succeeded`: the shard.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub shard: Option<ShardId>,
    /// `migration_started`: the shard the customer leaves.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub from: Option<ShardId>,
    /// `migration_started`: the shard the customer moves to.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub to: Option<ShardId>,
    /// When it happened (RFC 3339, UTC).
    #[schema(format = DateTime, example = "2026-11-25T12:00:00Z")]
    pub occurred_at: String,
}

/// A field of an input event that does not fit its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: &'static str,
    pub message: String,
}

impl ShardingEventInput {
    pub fn into_event(self) -> Result<ShardingEvent, InputError> {
        let required = |field: &'static str, value: Option<ShardId>, kind: &str| {
            value.ok_or_else(|| InputError {
                field,
                message: format!("{kind} needs `{field}`"),
            })
        };
        let refuse = |field: &'static str, set: bool, kind: &str| {
            if set {
                Err(InputError {
                    field,
                    message: format!("{kind} does not take `{field}`"),
                })
            } else {
                Ok(())
            }
        };
        let kind = match self.kind {
            ShardingEventKindName::Assigned | ShardingEventKindName::MigrationSucceeded => {
                let name = if self.kind == ShardingEventKindName::Assigned {
                    "assigned"
                } else {
                    "migration_succeeded"
                };
                refuse("from", self.from.is_some(), name)?;
                refuse("to", self.to.is_some(), name)?;
                let shard = required("shard", self.shard, name)?;
                if self.kind == ShardingEventKindName::Assigned {
                    ShardingEventKind::Assigned { shard }
                } else {
                    ShardingEventKind::MigrationSucceeded { shard }
                }
            }
            ShardingEventKindName::MigrationStarted => {
                refuse("shard", self.shard.is_some(), "migration_started")?;
                ShardingEventKind::MigrationStarted {
                    from: required("from", self.from, "migration_started")?,
                    to: required("to", self.to, "migration_started")?,
                }
            }
            ShardingEventKindName::MigrationFailed => {
                refuse("shard", self.shard.is_some(), "migration_failed")?;
                refuse("from", self.from.is_some(), "migration_failed")?;
                refuse("to", self.to.is_some(), "migration_failed")?;
                ShardingEventKind::MigrationFailed
            }
        };
        Ok(ShardingEvent {
            id: self.id,
            customer: self.customer,
            kind,
            occurred_at: parse_time(&self.occurred_at)?,
        })
    }
}

fn parse_time(text: &str) -> Result<Timestamp, InputError> {
    let invalid = |detail: String| InputError {
        field: "occurred_at",
        message: format!(
            "{text:?} is not an RFC 3339 time in UTC such as 2026-11-25T12:00:00Z: {detail}"
        ),
    };
    let time = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| invalid(e.to_string()))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| invalid("times before 1970 are not accepted".to_owned()))?;
    Ok(Timestamp(
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
    ))
}

/// Records events through the store and, when one ended a migration, wakes
/// the releaser. The API and the queue consumer both come through here.
pub async fn record(
    store: &Store,
    signal: &ReleaseSignal,
    events: &[ShardingEvent],
) -> Result<Vec<Recorded>, ShardingError> {
    let recorded = store.sharding().record(events).await?;
    if recorded
        .iter()
        .any(|r| !r.duplicate && r.record.release_to.is_some())
    {
        signal.wake();
    }
    Ok(recorded)
}

/// What the consumer did with the messages it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    pub received: u64,
    pub recorded: u64,
    pub duplicates: u64,
    /// Refused or malformed; moved to the dead-letter queue with a reason.
    pub dead_lettered: u64,
    /// The store failed; retried later.
    pub retried: u64,
}

impl std::ops::AddAssign for ConsumerReport {
    fn add_assign(&mut self, other: Self) {
        self.received += other.received;
        self.recorded += other.recorded;
        self.duplicates += other.duplicates;
        self.dead_lettered += other.dead_lettered;
        self.retried += other.retried;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Consumes the `sharding-events` queue with the same rules as the API.
#[derive(Clone)]
pub struct ShardingConsumer {
    store: Store,
    bus: Arc<dyn Bus>,
    signal: ReleaseSignal,
    queue: QueueName,
    dead_letter: QueueName,
    batch: usize,
    poll_wait: Duration,
}

impl ShardingConsumer {
    pub fn new(store: Store, bus: Arc<dyn Bus>, signal: ReleaseSignal) -> Self {
        let queue = sharding_events_queue();
        let dead_letter = queue
            .default_dead_letter()
            .expect("sharding-events.dlq is a valid queue name");
        Self {
            store,
            bus,
            signal,
            queue,
            dead_letter,
            batch: 100,
            poll_wait: Duration::from_secs(5),
        }
    }

    /// How long one receive waits on an empty queue in [`Self::run`].
    pub fn with_poll_wait(mut self, poll_wait: Duration) -> Self {
        self.poll_wait = poll_wait;
        self
    }

    /// The queue with its dead-letter queue.
    pub async fn ensure_queue(bus: &dyn Bus, config: &QueueConfig) -> Result<(), BusError> {
        let queue = sharding_events_queue();
        let config = QueueConfig {
            dead_letter_queue: Some(queue.default_dead_letter()?),
            ..config.clone()
        };
        bus.ensure_queue(&queue, config).await
    }

    /// Handles one batch of what is visible now.
    pub async fn step(&self) -> Result<ConsumerReport, ConsumerError> {
        self.receive_and_handle(Duration::ZERO).await
    }

    /// Steps until the queue has nothing visible.
    pub async fn drain(&self) -> Result<ConsumerReport, ConsumerError> {
        let mut total = ConsumerReport::default();
        loop {
            let report = self.step().await?;
            if report.received == 0 {
                return Ok(total);
            }
            total += report;
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        loop {
            let step = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                step = self.receive_and_handle(self.poll_wait) => step,
            };
            if let Err(e) = step {
                tracing::error!(error = %e, queue = %self.queue, "consuming sharding events failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RECEIVE_RETRY_DELAY) => {}
                }
            }
        }
    }

    async fn receive_and_handle(&self, wait: Duration) -> Result<ConsumerReport, ConsumerError> {
        let deliveries = self
            .bus
            .receive(
                &self.queue,
                ReceiveOptions {
                    max: self.batch,
                    wait,
                    visibility: Duration::from_secs(30),
                },
            )
            .await?;
        let mut report = ConsumerReport {
            received: deliveries.len() as u64,
            ..ConsumerReport::default()
        };
        for delivery in deliveries {
            self.handle(delivery, &mut report).await?;
        }
        Ok(report)
    }

    async fn handle(
        &self,
        delivery: Delivery,
        report: &mut ConsumerReport,
    ) -> Result<(), ConsumerError> {
        let event = match parse_message(&delivery.body) {
            Ok(event) => event,
            Err(reason) => {
                report.dead_lettered += 1;
                return self.dead_letter(&delivery, &reason).await;
            }
        };
        match record(&self.store, &self.signal, std::slice::from_ref(&event)).await {
            Ok(recorded) => {
                if recorded.first().is_some_and(|r| r.duplicate) {
                    report.duplicates += 1;
                } else {
                    report.recorded += 1;
                }
                self.bus.ack(&self.queue, &delivery.receipt).await?;
            }
            Err(ShardingError::Store(e)) => {
                tracing::warn!(error = %e, event_id = %event.id, "storing a sharding event failed; retrying");
                report.retried += 1;
                self.bus
                    .nack(&self.queue, &delivery.receipt, STORE_RETRY_DELAY)
                    .await?;
            }
            Err(refused) => {
                report.dead_lettered += 1;
                self.dead_letter(&delivery, &refused.to_string()).await?;
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), ConsumerError> {
        tracing::warn!(message_id = %delivery.id, reason, "dead-lettering a sharding event");
        let letter = dead_letter_message(delivery.body.clone(), &self.queue, reason);
        self.bus.send(&self.dead_letter, letter).await?;
        self.bus.ack(&self.queue, &delivery.receipt).await?;
        Ok(())
    }
}

/// One message body as one event, or why not.
pub fn parse_message(body: &[u8]) -> Result<ShardingEvent, String> {
    let input: ShardingEventInput =
        serde_json::from_slice(body).map_err(|e| format!("not a sharding event: {e}"))?;
    input.into_event().map_err(|e| e.to_string())
}

/// A copy of a message for a dead-letter queue, carrying why it is there and
/// where it came from.
pub fn dead_letter_message(body: Bytes, source: &QueueName, reason: &str) -> OutgoingMessage {
    OutgoingMessage::new(body)
        .attribute(REASON_ATTRIBUTE, truncate(reason, MAX_REASON_LEN))
        .attribute("source_queue", source.as_str())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ShardingEvent, String> {
        parse_message(json.as_bytes())
    }

    #[test]
    fn each_kind_takes_its_own_fields() {
        let started = parse(
            r#"{"id":"e1","customer":"c1","kind":"migration_started","from":"a","to":"b","occurred_at":"2026-11-25T12:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            started.kind,
            ShardingEventKind::MigrationStarted {
                from: ShardId::parse("a").unwrap(),
                to: ShardId::parse("b").unwrap()
            }
        );
        assert_eq!(started.occurred_at, Timestamp(1_795_608_000_000));
        let failed = parse(
            r#"{"id":"e2","customer":"c1","kind":"migration_failed","occurred_at":"2026-11-25T12:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(failed.kind, ShardingEventKind::MigrationFailed);
        let cases = [
            (
                r#"{"id":"e","customer":"c","kind":"assigned","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "assigned needs `shard`",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"assigned","shard":"a","to":"b","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "assigned does not take `to`",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"migration_started","from":"a","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "needs `to`",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"migration_failed","shard":"a","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "does not take `shard`",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"assigned","shard":"a","occurred_at":"yesterday"}"#,
                "occurred_at",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"moved","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "unknown variant `moved`",
            ),
            (
                r#"{"id":"e","customer":"c d","kind":"assigned","shard":"a","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "customer id",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"assigned","shard":"a/b","occurred_at":"2026-11-25T12:00:00Z"}"#,
                "shard id",
            ),
            (
                r#"{"id":"e","customer":"c","kind":"assigned","shard":"a","occurred_at":"2026-11-25T12:00:00Z","extra":1}"#,
                "unknown field `extra`",
            ),
            ("[1,2]", "not a sharding event"),
        ];
        for (json, needle) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn dead_letters_keep_the_reason_short() {
        let queue = sharding_events_queue();
        let letter = dead_letter_message(Bytes::from_static(b"x"), &queue, &"é".repeat(900));
        assert!(letter.attributes[REASON_ATTRIBUTE].len() <= MAX_REASON_LEN + 3);
        assert_eq!(letter.attributes["source_queue"], SHARDING_EVENTS_QUEUE);
    }
}
