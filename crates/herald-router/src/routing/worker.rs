//! One route's worker: route queue → shard queues, holds, delays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_bus::{Bus, BusError, Delivery, OutgoingMessage, Receipt, ReceiveOptions, WriteBatch};
use herald_core::routing::{CustomerState, Route, RouteMode, RoutingDecision, UnknownPolicy};
use herald_core::sharding::{CustomerId, Placement, ShardId};
use herald_core::{NameError, QueueName};
use herald_store::holds::NewHeldEvent;
use herald_store::{Store, StoreError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    route_dead_letter, route_queue, telemetry, KnownQueues, RoutingSettings, ORIGIN_ATTRIBUTE,
    ROUTE_ATTRIBUTE,
};
use crate::sharding::dead_letter_message;

/// Pause after a failed batch before the next receive.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What a worker did with the events it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteReport {
    pub received: u64,
    /// Sent to a queue (a shard's, the unknown-customer queue, or each
    /// shard's for broadcast: counted once per event).
    pub delivered: u64,
    /// Parked in a customer's hold.
    pub held: u64,
    /// Sent back to the route queue to be looked at again after the delay.
    pub delayed: u64,
    /// Dropped by the unknown-customer policy.
    pub dropped: u64,
    /// Not matched by the route's filter.
    pub filtered: u64,
    /// Of the above, events whose customer was unknown.
    pub unroutable: u64,
    /// Bodies that are not JSON; moved to the route's dead-letter queue.
    pub malformed: u64,
}

impl std::ops::AddAssign for RouteReport {
    fn add_assign(&mut self, other: Self) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.held += other.held;
        self.delayed += other.delayed;
        self.dropped += other.dropped;
        self.filtered += other.filtered;
        self.unroutable += other.unroutable;
        self.malformed += other.malformed;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Name(#[from] NameError),
}

/// The worker of one route. Clones share it; run one per route.
#[derive(Clone)]
pub struct RouteWorker {
    inner: Arc<Inner>,
}

struct Inner {
    route: Route,
    queue: QueueName,
    dead_letter: QueueName,
    store: Store,
    bus: Arc<dyn Bus>,
    settings: RoutingSettings,
    known: KnownQueues,
}

/// Where one batch's events go, gathered before anything is written.
#[derive(Default)]
struct Plan {
    /// Sends to target queues, delayed copies, dead letters and the acks of
    /// the batch: one bus commit.
    writes: WriteBatch,
    holds: Vec<NewHeldEvent>,
    /// Events per shard, for the routed metric.
    routed: HashMap<ShardId, u64>,
}

impl RouteWorker {
    pub fn new(
        route: Route,
        store: Store,
        bus: Arc<dyn Bus>,
        settings: RoutingSettings,
    ) -> Result<RouteWorker, NameError> {
        Ok(RouteWorker {
            inner: Arc::new(Inner {
                queue: route_queue(&route)?,
                dead_letter: route_dead_letter(&route)?,
                route,
                store,
                bus,
                settings,
                known: KnownQueues::default(),
            }),
        })
    }

    pub fn route(&self) -> &Route {
        &self.inner.route
    }

    /// The route's input queue.
    pub fn queue(&self) -> &QueueName {
        &self.inner.queue
    }

    /// Routes one batch of what is visible now.
    pub async fn step(&self) -> Result<RouteReport, RouteError> {
        let inner = &self.inner;
        let batch = inner.receive(Duration::ZERO).await?;
        if batch.is_empty() {
            return Ok(RouteReport::default());
        }
        inner.route_or_release(batch).await
    }

    /// Routes until nothing is visible (delayed copies are left for later).
    pub async fn drain(&self) -> Result<RouteReport, RouteError> {
        let inner = &self.inner;
        let mut total = RouteReport::default();
        let mut batch = inner.receive(Duration::ZERO).await?;
        while !batch.is_empty() {
            let (report, next) = inner.route_prefetching(batch).await?;
            total += report;
            batch = next;
        }
        Ok(total)
    }

    /// Routes until `shutdown` fires; a batch in progress finishes first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RouteError> {
        let inner = &self.inner;
        tracing::info!(route = %inner.route.name, queue = %inner.queue, "routing worker started");
        let mut batch = Vec::new();
        loop {
            if batch.is_empty() {
                batch = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    received = inner.receive(inner.settings.poll_wait) => match received {
                        Ok(batch) => batch,
                        Err(e) => {
                            inner.pause_after(&e.into(), &shutdown).await;
                            Vec::new()
                        }
                    },
                };
                continue;
            }
            match inner.route_prefetching(std::mem::take(&mut batch)).await {
                Ok((_, next)) => batch = next,
                Err(e) => inner.pause_after(&e, &shutdown).await,
            }
            if shutdown.is_cancelled() {
                inner.release(&receipts_of(&batch)).await;
                return Ok(());
            }
        }
    }
}

impl Inner {
    async fn receive(&self, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.bus
            .receive(
                &self.queue,
                ReceiveOptions {
                    max: self.settings.batch_size,
                    wait,
                    visibility: self.settings.visibility,
                },
            )
            .await
    }

    /// Routes a batch; on failure makes it visible again at once, so the
    /// next receive takes its events in their order instead of after
    /// events that came later.
    async fn route_or_release(&self, batch: Vec<Delivery>) -> Result<RouteReport, RouteError> {
        let receipts: Vec<Receipt> = batch.iter().map(|d| d.receipt.clone()).collect();
        match self.route_batch(batch).await {
            Ok(report) => Ok(report),
            Err(e) => {
                self.release(&receipts).await;
                Err(e)
            }
        }
    }

    /// Routes a batch while the next one is received: the receive is the
    /// only part that overlaps, so batches are still routed one after the
    /// other, in queue order. Returns the next batch (empty when the queue
    /// had nothing more).
    async fn route_prefetching(
        &self,
        batch: Vec<Delivery>,
    ) -> Result<(RouteReport, Vec<Delivery>), RouteError> {
        let (routed, next) =
            tokio::join!(self.route_or_release(batch), self.receive(Duration::ZERO));
        match (routed, next) {
            (Ok(report), Ok(next)) => Ok((report, next)),
            (Ok(_), Err(e)) => Err(e.into()),
            (Err(e), next) => {
                if let Ok(next) = next {
                    self.release(&receipts_of(&next)).await;
                }
                Err(e)
            }
        }
    }

    /// Makes received events visible again at once.
    async fn release(&self, receipts: &[Receipt]) {
        for receipt in receipts {
            if let Err(e) = self.bus.nack(&self.queue, receipt, Duration::ZERO).await {
                tracing::debug!(error = %e, "could not release a message of an unfinished batch");
            }
        }
    }

    async fn pause_after(&self, error: &RouteError, shutdown: &CancellationToken) {
        tracing::error!(route = %self.route.name, error = %error, "routing failed; retrying");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }

    async fn route_batch(&self, deliveries: Vec<Delivery>) -> Result<RouteReport, RouteError> {
        let route = &self.route;
        let mut report = RouteReport {
            received: deliveries.len() as u64,
            ..RouteReport::default()
        };
        let mut plan = Plan::default();
        let mut events: Vec<(Delivery, Option<CustomerId>)> = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let document: Value = match serde_json::from_slice(&delivery.body) {
                Ok(document) => document,
                Err(e) => {
                    report.malformed += 1;
                    let reason = format!("route {}: the event is not JSON: {e}", route.name);
                    tracing::warn!(route = %route.name, message_id = %delivery.id, %reason, "dead-lettering an event");
                    plan.writes.send(
                        &self.dead_letter,
                        dead_letter_message(delivery.body.clone(), &self.queue, &reason),
                    );
                    plan.writes.ack(&self.queue, delivery.receipt);
                    continue;
                }
            };
            if !route.matches(&document) {
                report.filtered += 1;
                plan.writes.ack(&self.queue, delivery.receipt);
                continue;
            }
            let customer = match route.customer_key(&document) {
                Ok(customer) => customer,
                Err(e) => {
                    tracing::debug!(route = %route.name, message_id = %delivery.id, error = %e, "event has no usable customer key; treated as unknown");
                    None
                }
            };
            events.push((delivery, customer));
        }

        let (mut states, shards) = match &route.mode {
            RouteMode::Broadcast => (HashMap::new(), self.store.sharding().shards().await?),
            RouteMode::Keyed { .. } => {
                let customers: Vec<CustomerId> =
                    events.iter().filter_map(|(_, c)| c.clone()).collect();
                let states = self
                    .store
                    .sharding()
                    .routing_states(&route.name, &customers)
                    .await?;
                (states, Vec::new())
            }
        };

        for (delivery, customer) in events {
            let state = customer
                .as_ref()
                .and_then(|c| states.get(c))
                .cloned()
                .unwrap_or_else(CustomerState::unknown);
            let decision = match route.decide(&state, &shards) {
                Ok(decision) => decision,
                Err(e) => {
                    report.malformed += 1;
                    plan.writes.send(
                        &self.dead_letter,
                        dead_letter_message(delivery.body.clone(), &self.queue, &e.to_string()),
                    );
                    plan.writes.ack(&self.queue, delivery.receipt);
                    continue;
                }
            };
            let keyed_unknown = matches!(route.mode, RouteMode::Keyed { .. })
                && state.placement == Placement::Unknown
                && !state.hold_nonempty;
            if keyed_unknown {
                report.unroutable += 1;
            }
            let origin = origin_id(&delivery);
            match decision {
                RoutingDecision::Deliver { queue } => {
                    report.delivered += 1;
                    if let Some(shard) = self.shard_of(&state) {
                        *plan.routed.entry(shard).or_default() += 1;
                    }
                    plan.writes.send(&queue, self.forward(&delivery, &origin));
                }
                RoutingDecision::Broadcast { queues } => {
                    report.delivered += 1;
                    for (queue, shard) in queues.into_iter().zip(&shards) {
                        *plan.routed.entry(shard.clone()).or_default() += 1;
                        plan.writes.send(&queue, self.forward(&delivery, &origin));
                    }
                }
                RoutingDecision::Hold => {
                    // A hold exists only for a customer the batch named.
                    let Some(customer) = customer else {
                        report.malformed += 1;
                        plan.writes.send(
                            &self.dead_letter,
                            dead_letter_message(
                                delivery.body.clone(),
                                &self.queue,
                                "held without a customer key",
                            ),
                        );
                        plan.writes.ack(&self.queue, delivery.receipt);
                        continue;
                    };
                    report.held += 1;
                    states
                        .entry(customer.clone())
                        .or_insert_with(CustomerState::unknown)
                        .hold_nonempty = true;
                    plan.holds.push(NewHeldEvent {
                        customer,
                        message_id: origin,
                        body: delivery.body.to_vec(),
                        attributes: delivery.attributes.clone(),
                    });
                }
                RoutingDecision::Delay { recheck_after } => {
                    report.delayed += 1;
                    let mut copy = OutgoingMessage::new(delivery.body.clone()).delay(recheck_after);
                    copy.attributes = delivery.attributes.clone();
                    copy.attributes.insert(ORIGIN_ATTRIBUTE.to_owned(), origin);
                    plan.writes.send(&self.queue, copy);
                }
                RoutingDecision::Drop => report.dropped += 1,
            }
            plan.writes.ack(&self.queue, delivery.receipt);
        }

        self.write(plan).await?;
        if report.unroutable > 0 {
            telemetry::unroutable(&route.name, report.unroutable);
        }
        Ok(report)
    }

    /// Parks what the plan holds, then commits its sends, delayed copies,
    /// dead letters and acks together. Parking goes first: should the
    /// commit fail, the whole batch comes back and parks again, which skips
    /// the events already held; had the acks gone first, a failed park
    /// would lose events. A batch received again may meet a hold that was
    /// released meanwhile and deliver an event the release already sent:
    /// both carry the event's origin id as dedup key, so it goes once.
    async fn write(&self, plan: Plan) -> Result<(), RouteError> {
        let bus = self.bus.as_ref();
        for (queue, _) in plan.writes.sends() {
            self.known.ensure(bus, queue).await?;
        }
        if !plan.holds.is_empty() {
            self.store
                .holds()
                .park(&self.route.name, &plan.holds)
                .await?;
        }
        bus.commit(plan.writes).await?;
        for (shard, count) in plan.routed {
            telemetry::routed(&self.route.name, shard.as_str(), count);
        }
        Ok(())
    }

    /// The shard a delivered event counts for, if it went to one.
    fn shard_of(&self, state: &CustomerState) -> Option<ShardId> {
        match (&state.placement, &self.route.mode) {
            (Placement::Stable { shard }, _) => Some(shard.clone()),
            (
                Placement::Unknown,
                RouteMode::Keyed {
                    unknown: UnknownPolicy::Shard(shard),
                    ..
                },
            ) => Some(shard.clone()),
            _ => None,
        }
    }

    /// The event as it goes to a target queue: same body and attributes,
    /// the route's name, and the origin id as dedup key.
    fn forward(&self, delivery: &Delivery, origin: &str) -> OutgoingMessage {
        forward_message(
            delivery.body.clone(),
            &delivery.attributes,
            &self.route.name,
            origin,
        )
    }
}

/// The message a route sends on for an event first seen on the route queue
/// with id `origin`.
pub(super) fn forward_message(
    body: bytes::Bytes,
    attributes: &herald_bus::Attributes,
    route: &str,
    origin: &str,
) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(body).dedup_key(origin);
    message.attributes = attributes.clone();
    message.attributes.remove(ORIGIN_ATTRIBUTE);
    message
        .attributes
        .insert(ROUTE_ATTRIBUTE.to_owned(), route.to_owned());
    message
}

fn receipts_of(batch: &[Delivery]) -> Vec<Receipt> {
    batch.iter().map(|d| d.receipt.clone()).collect()
}

/// The id an event had when it first reached the route queue: a delayed
/// copy carries it in an attribute.
fn origin_id(delivery: &Delivery) -> String {
    delivery
        .attributes
        .get(ORIGIN_ATTRIBUTE)
        .cloned()
        .unwrap_or_else(|| delivery.id.0.clone())
}
