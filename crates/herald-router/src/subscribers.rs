//! Herald's own subscribers to the `email-events` topic, run by the `ingest`
//! role beside the webhook receivers:
//!
//! - [`SuppressionHandler`] on `herald.suppressions`: a hard bounce, a drop
//!   because the address bounced before, a spam report and an unsubscribe
//!   suppress the address; an unsubscribe also records that the member (the
//!   `member_id` custom arg) no longer gets brand alerts.
//! - [`StatsHandler`] on `herald.stats`: events of a brand alert (the
//!   `alert_id` custom arg) count toward its statistics by type (delivered,
//!   open, click, bounce, ...), as `GET /api/brand-alerts/{id}/stats` shows
//!   them, and toward its chart over time on the alert's page.
//!
//! Delivery is at least once, so both are idempotent: suppressing and
//! unsubscribing again change nothing, and the statistics count an event
//! only if the store had not marked it counted before; the mark and the
//! counts are written in one transaction, so each event counts exactly once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_bus::{Bus, BusError, Delivery, ReceiveOptions};
use herald_core::catalog::{EmailType, SuppressionReason};
use herald_core::email_event::{BounceClass, EmailEvent, EventType};
use herald_core::QueueName;
use herald_store::email_events::{alert_id, EventKey};
use herald_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::ingest::{stats_queue, suppressions_queue};

/// The custom arg naming the member a message was sent to.
pub const MEMBER_ID_ARG: &str = "member_id";

#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What one subscriber does with a batch of events. Must be idempotent.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    async fn handle(&self, events: &[EmailEvent]) -> Result<(), SubscriberError>;
}

/// How a subscriber reads its queue.
#[derive(Debug, Clone, Copy)]
pub struct SubscriberSettings {
    /// Messages per receive.
    pub batch: usize,
    /// How long received messages stay invisible while they are handled.
    pub visibility: Duration,
    /// How long one receive waits on an empty queue.
    pub poll_wait: Duration,
    /// Pause after a failed batch before the next receive.
    pub retry_delay: Duration,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        Self {
            batch: 100,
            visibility: Duration::from_secs(60),
            poll_wait: Duration::from_secs(5),
            retry_delay: Duration::from_secs(5),
        }
    }
}

/// A queue and the handler of its messages.
pub struct Subscriber<H> {
    bus: Arc<dyn Bus>,
    queue: QueueName,
    handler: H,
    settings: SubscriberSettings,
}

/// How long an undecodable message waits before its next delivery; after
/// the queue's `max_receives` it is dead-lettered for someone to look at.
const UNDECODABLE_RETRY: Duration = Duration::from_secs(60);

impl<H: EventHandler> Subscriber<H> {
    pub fn new(
        bus: Arc<dyn Bus>,
        queue: QueueName,
        handler: H,
        settings: SubscriberSettings,
    ) -> Self {
        Self {
            bus,
            queue,
            handler,
            settings,
        }
    }

    /// Receives one batch (waiting up to `wait`), handles it and acks it;
    /// returns how many messages it took. On an error nothing is acked: the
    /// messages come back when their visibility runs out.
    pub async fn step(&self, wait: Duration) -> Result<usize, SubscriberError> {
        let deliveries = self
            .bus
            .receive(
                &self.queue,
                ReceiveOptions {
                    max: self.settings.batch,
                    wait,
                    visibility: self.settings.visibility,
                },
            )
            .await?;
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(deliveries.len());
        let mut handled = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            match decode(delivery) {
                Ok(event) => {
                    events.push(event);
                    handled.push(delivery.receipt.clone());
                }
                Err(e) => {
                    tracing::error!(queue = %self.queue, message_id = %delivery.id, error = %e, "email event message cannot be read; it will be dead-lettered");
                    self.bus
                        .nack(&self.queue, &delivery.receipt, UNDECODABLE_RETRY)
                        .await?;
                }
            }
        }
        self.handler.handle(&events).await?;
        self.bus.ack_batch(&self.queue, &handled).await?;
        Ok(deliveries.len())
    }

    /// Handles messages until the queue has none visible; returns how many.
    pub async fn drain(&self) -> Result<usize, SubscriberError> {
        let mut total = 0;
        loop {
            match self.step(Duration::ZERO).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Handles messages until `stop` fires; a failed batch is retried after
    /// a pause instead of ending the worker.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), SubscriberError> {
        while !stop.is_cancelled() {
            let step = tokio::select! {
                () = stop.cancelled() => break,
                step = self.step(self.settings.poll_wait) => step,
            };
            if let Err(e) = step {
                tracing::warn!(queue = %self.queue, error = %e, "email event batch failed; retrying after {:?}", self.settings.retry_delay);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.settings.retry_delay) => {}
                }
            }
        }
        Ok(())
    }
}

fn decode(delivery: &Delivery) -> Result<EmailEvent, serde_json::Error> {
    serde_json::from_slice(&delivery.body)
}

/// The suppression subscriber on its queue.
pub fn suppressions(
    store: Store,
    bus: Arc<dyn Bus>,
    settings: SubscriberSettings,
) -> Subscriber<SuppressionHandler> {
    Subscriber::new(
        bus,
        suppressions_queue(),
        SuppressionHandler { store },
        settings,
    )
}

/// The statistics subscriber on its queue.
pub fn stats(
    store: Store,
    bus: Arc<dyn Bus>,
    settings: SubscriberSettings,
) -> Subscriber<StatsHandler> {
    Subscriber::new(bus, stats_queue(), StatsHandler::new(store), settings)
}

pub struct SuppressionHandler {
    store: Store,
}

/// Why an event suppresses its address, if it does.
fn suppression_reason(event: &EmailEvent) -> Option<SuppressionReason> {
    match event.event_type {
        EventType::Bounce if event.bounce == Some(BounceClass::Hard) => {
            Some(SuppressionReason::HardBounce)
        }
        EventType::Dropped if dropped_for_bounce(event) => Some(SuppressionReason::HardBounce),
        EventType::SpamReport => Some(SuppressionReason::SpamReport),
        EventType::Unsubscribe => Some(SuppressionReason::Unsubscribe),
        _ => None,
    }
}

/// A drop because the address bounced before (SendGrid's reason
/// "Bounced Address").
fn dropped_for_bounce(event: &EmailEvent) -> bool {
    event
        .raw
        .get("reason")
        .and_then(|r| r.as_str())
        .is_some_and(|r| r.to_ascii_lowercase().contains("bounced address"))
}

fn detail(event: &EmailEvent) -> Option<String> {
    let reason = event.raw.get("reason").and_then(|r| r.as_str());
    Some(match reason {
        Some(reason) => format!("{} {}: {reason}", event.provider, event.event_type),
        None => format!(
            "{} {} {}",
            event.provider, event.event_type, event.provider_event_id
        ),
    })
}

#[async_trait]
impl EventHandler for SuppressionHandler {
    async fn handle(&self, events: &[EmailEvent]) -> Result<(), SubscriberError> {
        let members = self.store.members();
        for event in events {
            let Some(reason) = suppression_reason(event) else {
                continue;
            };
            let source = format!("webhook:{}", event.provider);
            match members
                .suppress(&event.address, reason, &source, detail(event).as_deref())
                .await
            {
                Ok(_) => {}
                // A provider event with an address we cannot store: nothing
                // to suppress, and retrying will not change that.
                Err(StoreError::InvalidInput { field, message }) => {
                    tracing::warn!(address = %event.address, field, message, "event address not suppressed");
                }
                Err(e) => return Err(e.into()),
            }
            if event.event_type == EventType::Unsubscribe {
                self.unsubscribe_member(event, &source).await?;
            }
        }
        Ok(())
    }
}

impl SuppressionHandler {
    async fn unsubscribe_member(
        &self,
        event: &EmailEvent,
        source: &str,
    ) -> Result<(), SubscriberError> {
        let Some(member_id) = event
            .custom_args
            .get(MEMBER_ID_ARG)
            .and_then(|m| m.as_str())
        else {
            return Ok(());
        };
        match self
            .store
            .members()
            .set_subscription(member_id, &EmailType::brand_alerts(), false, source)
            .await
        {
            Ok(_) => Ok(()),
            // Mail to someone who is not (or no longer) a member.
            Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

pub struct StatsHandler {
    store: Store,
}

impl StatsHandler {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl EventHandler for StatsHandler {
    async fn handle(&self, events: &[EmailEvent]) -> Result<(), SubscriberError> {
        let keys: Vec<EventKey> = events
            .iter()
            .filter(|e| alert_id(e).is_some())
            .map(EventKey::of)
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.store.brand_alerts().count_events(&keys).await?;
        Ok(())
    }
}
