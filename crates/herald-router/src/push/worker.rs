//! The push worker: receives from a shard's queue, POSTs each message to the
//! shard's endpoint signed with Standard Webhooks, acks on a 2xx, retries on
//! the schedule, and dead-letters when the schedule is exhausted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_bus::{Bus, BusError, Delivery, OutgoingMessage, QueueConfig, ReceiveOptions};
use herald_core::{Clock, QueueName};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::settings::PushTarget;
use super::telemetry::{AttemptOutcome, PushAttempt, PushDeadLettered};
use crate::verify::{WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER};

/// On a dead-letter copy: why the last attempt failed.
pub const REASON_ATTRIBUTE: &str = "reason";
/// On a dead-letter copy: the queue it was delivered from.
pub const SOURCE_QUEUE_ATTRIBUTE: &str = "source_queue";
/// On a dead-letter copy: how many attempts were made.
pub const ATTEMPTS_ATTRIBUTE: &str = "attempts";
/// On a dead-letter copy: the id of the message it copies. A copy redriven
/// into a pushed queue is sent with this as its `webhook-id`, so receivers
/// that deduplicate on it recognise a message they may have taken already.
pub const ORIGINAL_ID_ATTRIBUTE: &str = "original_message_id";

/// Added to the request timeout to size a message's visibility: the
/// attempt is settled long before another worker could receive it.
const VISIBILITY_MARGIN: Duration = Duration::from_secs(30);
/// How long [`PushWorker::run`] long-polls an empty queue per receive.
const POLL_WAIT: Duration = Duration::from_secs(20);
/// Pause after a failed receive before the next.
const RECEIVE_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_REASON_LEN: usize = 500;

/// What the worker did with the messages of a step (or, summed, of a run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    pub received: u64,
    /// Answered 2xx and acked.
    pub delivered: u64,
    /// Failed and scheduled for another attempt.
    pub retried: u64,
    /// Failed their last attempt and were moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Settled too late: the receipt had gone stale (the message's
    /// visibility ran out), so the message will be delivered again.
    pub stale: u64,
}

impl std::ops::AddAssign for PushReport {
    fn add_assign(&mut self, other: Self) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.stale += other.stale;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Delivers one `[[push]]` queue. Clones share the HTTP client and state.
#[derive(Clone)]
pub struct PushWorker {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    client: reqwest::Client,
    target: PushTarget,
    base_config: QueueConfig,
    clock: Arc<dyn Clock>,
    /// The dead-letter queue, once the queue is set up.
    dead_letter: OnceCell<QueueName>,
}

impl std::fmt::Debug for PushWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushWorker")
            .field("shard", &self.inner.target.shard)
            .field("queue", &self.inner.target.queue)
            .field("url", &self.inner.target.url.as_str())
            .finish_non_exhaustive()
    }
}

impl PushWorker {
    /// `base_config` is used when the worker has to create the queue; its
    /// `max_receives` is always replaced by the target's attempts.
    pub fn new(
        bus: Arc<dyn Bus>,
        target: PushTarget,
        base_config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<PushWorker, PushError> {
        let client = reqwest::Client::builder()
            .timeout(target.timeout)
            .user_agent(concat!("Herald-push/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(PushWorker {
            inner: Arc::new(Inner {
                bus,
                client,
                target,
                base_config,
                clock,
                dead_letter: OnceCell::new(),
            }),
        })
    }

    /// Creates the queue if needed and sets its `max_receives` to the
    /// target's attempts (so a worker that dies mid-attempt cannot retry a
    /// message forever: the bus dead-letters it then); returns the
    /// dead-letter queue. Runs once per worker.
    pub async fn prepare(&self) -> Result<&QueueName, BusError> {
        let inner = &self.inner;
        inner
            .dead_letter
            .get_or_try_init(|| async {
                let queue = &inner.target.queue;
                let existing = inner
                    .bus
                    .list_queues()
                    .await?
                    .into_iter()
                    .find(|info| &info.name == queue)
                    .map(|info| info.config);
                let config = existing.unwrap_or_else(|| inner.base_config.clone());
                let dead_letter = match &config.dead_letter_queue {
                    Some(name) => name.clone(),
                    None => queue.default_dead_letter()?,
                };
                let config = QueueConfig {
                    max_receives: inner.target.attempts(),
                    dead_letter_queue: Some(dead_letter.clone()),
                    ..config
                };
                inner.bus.ensure_queue(queue, config).await?;
                Ok(dead_letter)
            })
            .await
    }

    /// One receive (up to `concurrency` messages, waiting up to `wait` for
    /// the first), then one attempt for each message, all at once.
    pub async fn step(&self, wait: Duration) -> Result<PushReport, BusError> {
        let deliveries = self.receive(wait).await?;
        Ok(self.deliver(deliveries).await)
    }

    /// Pushes until `shutdown` fires; attempts in flight then finish (each
    /// within the timeout) before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<PushReport, BusError> {
        self.prepare().await?;
        let target = &self.inner.target;
        tracing::info!(shard = %target.shard, queue = %target.queue, url = %target.url, "push worker started");
        let mut total = PushReport::default();
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = self.receive(POLL_WAIT) => received,
            };
            match received {
                Ok(deliveries) => total += self.deliver(deliveries).await,
                Err(e) => {
                    tracing::error!(shard = %target.shard, queue = %target.queue, error = %e, "receiving from the pushed queue failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(RECEIVE_RETRY_DELAY) => {}
                    }
                }
            }
        }
        tracing::info!(shard = %target.shard, delivered = total.delivered, "push worker stopped");
        Ok(total)
    }

    async fn receive(&self, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.prepare().await?;
        let target = &self.inner.target;
        let options = ReceiveOptions {
            max: target.concurrency,
            wait,
            visibility: target.timeout + VISIBILITY_MARGIN,
        };
        self.inner.bus.receive(&target.queue, options).await
    }

    async fn deliver(&self, deliveries: Vec<Delivery>) -> PushReport {
        let reports =
            futures::future::join_all(deliveries.into_iter().map(|d| self.inner.handle(d))).await;
        let mut total = PushReport::default();
        for report in reports {
            total += report;
        }
        total
    }
}

impl Inner {
    async fn handle(&self, delivery: Delivery) -> PushReport {
        let mut report = PushReport {
            received: 1,
            ..PushReport::default()
        };
        let target = &self.target;
        let webhook_id = delivery
            .attributes
            .get(ORIGINAL_ID_ATTRIBUTE)
            .cloned()
            .unwrap_or_else(|| delivery.id.0.clone());
        let attempt = delivery.receive_count.max(1);
        let started = Instant::now();
        let outcome = self.post(&webhook_id, &delivery.body).await;
        PushAttempt {
            shard: &target.shard,
            message_id: &webhook_id,
            attempt,
            outcome: &outcome,
            elapsed: started.elapsed(),
        }
        .emit();
        let settled = if outcome == AttemptOutcome::Delivered {
            report.delivered = 1;
            self.bus.ack(&target.queue, &delivery.receipt).await
        } else if let Some(delay) = target.retry_schedule.get(attempt as usize - 1) {
            report.retried = 1;
            self.bus
                .nack(&target.queue, &delivery.receipt, *delay)
                .await
        } else {
            report.dead_lettered = 1;
            self.dead_letter(&delivery, &webhook_id, attempt, &outcome.reason())
                .await
        };
        match settled {
            Ok(()) => {}
            Err(BusError::StaleReceipt(_)) => {
                report.stale = 1;
                tracing::warn!(shard = %target.shard, message_id = %webhook_id, "the message's visibility ran out before its attempt was settled; it will be delivered again");
            }
            Err(e) => {
                tracing::error!(shard = %target.shard, message_id = %webhook_id, error = %e, "cannot settle a push attempt; the message comes back when its visibility runs out");
            }
        }
        report
    }

    /// One signed POST of `body`.
    async fn post(&self, webhook_id: &str, body: &Bytes) -> AttemptOutcome {
        let timestamp = self.clock.now().millis().div_euclid(1000);
        let signature = self.target.signer.sign(webhook_id, timestamp, body);
        let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            "application/json"
        } else {
            "application/octet-stream"
        };
        let sent = self
            .client
            .post(self.target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(WEBHOOK_ID_HEADER, webhook_id)
            .header(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string())
            .header(WEBHOOK_SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => AttemptOutcome::Delivered,
            Ok(response) => AttemptOutcome::Rejected(response.status().as_u16()),
            Err(e) if e.is_timeout() => AttemptOutcome::Timeout,
            Err(e) => AttemptOutcome::Unreachable(error_chain(&e)),
        }
    }

    /// Copies the message to the dead-letter queue with why it failed, then
    /// acks it. Should the copy fail, the message is left in flight: it
    /// comes back past `max_receives` and the bus moves it itself.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        webhook_id: &str,
        attempts: u32,
        reason: &str,
    ) -> Result<(), BusError> {
        let target = &self.target;
        let dead_letter = self
            .dead_letter
            .get()
            .expect("receive prepares the queue before any delivery");
        let mut copy = OutgoingMessage::new(delivery.body.clone())
            .attribute(REASON_ATTRIBUTE, truncate(reason, MAX_REASON_LEN))
            .attribute(SOURCE_QUEUE_ATTRIBUTE, target.queue.as_str())
            .attribute(ORIGINAL_ID_ATTRIBUTE, webhook_id)
            .attribute(ATTEMPTS_ATTRIBUTE, attempts.to_string());
        for (key, value) in &delivery.attributes {
            copy.attributes
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        self.bus.send(dead_letter, copy).await?;
        PushDeadLettered {
            shard: &target.shard,
            message_id: webhook_id,
            dead_letter_queue: dead_letter.as_str(),
            attempts,
            reason,
        }
        .emit();
        self.bus.ack(&target.queue, &delivery.receipt).await
    }
}

/// An error and its causes on one line: reqwest's own message alone does
/// not say whether the connection was refused or reset.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
