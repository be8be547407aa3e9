//! The hold releaser: holds of customers that are stable again go to their
//! shard's queue, oldest first; holds too old go to the route's DLQ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_bus::Bus;
use herald_core::routing::Route;
use herald_core::sharding::{CustomerId, Placement, ShardId};
use herald_core::{Clock, QueueName};
use herald_store::holds::CustomerHold;
use herald_store::Store;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::worker::{forward_message, RouteError};
use super::{route_dead_letter, route_queue, telemetry, KnownQueues, RoutingSettings};
use crate::sharding::{dead_letter_message, ReleaseSignal};

/// Held events read, sent and removed per round trip.
const CHUNK: u32 = 500;
/// Holds looked at per query of a sweep.
const HOLDS_PER_QUERY: u32 = 200;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Held events sent to their shard's queue.
    pub released: u64,
    /// Holds emptied (or released from) this sweep.
    pub holds: u64,
    /// Held events moved to the route's dead-letter queue for their age.
    pub expired: u64,
}

/// Releases the holds of every configured route. Clones share it; sweeps
/// of one process never overlap.
#[derive(Clone)]
pub struct Releaser {
    inner: Arc<Inner>,
}

struct Inner {
    routes: HashMap<String, Route>,
    expiry: HoldExpiry,
    store: Store,
    bus: Arc<dyn Bus>,
    signal: ReleaseSignal,
    settings: RoutingSettings,
    clock: Arc<dyn Clock>,
    known: KnownQueues,
    sweeping: Mutex<()>,
}

impl Releaser {
    pub fn new(
        routes: Vec<Route>,
        store: Store,
        bus: Arc<dyn Bus>,
        signal: ReleaseSignal,
        settings: RoutingSettings,
        clock: Arc<dyn Clock>,
    ) -> Releaser {
        Releaser {
            inner: Arc::new(Inner {
                expiry: HoldExpiry::new(routes.clone(), store.clone(), bus.clone()),
                routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
                store,
                bus,
                signal,
                settings,
                clock,
                known: KnownQueues::default(),
                sweeping: Mutex::new(()),
            }),
        }
    }

    /// Releases every hold whose customer is stable, expires old holds and
    /// refreshes the hold gauges.
    pub async fn sweep(&self) -> Result<ReleaseReport, RouteError> {
        let inner = &self.inner;
        let _turn = inner.sweeping.lock().await;
        let mut report = ReleaseReport::default();
        loop {
            let holds = inner.store.holds().releasable(HOLDS_PER_QUERY).await?;
            let mut progressed = false;
            for hold in &holds {
                let released = inner.release(hold).await?;
                if released > 0 {
                    progressed = true;
                    report.released += released;
                    report.holds += 1;
                }
            }
            if !progressed || holds.len() < HOLDS_PER_QUERY as usize {
                break;
            }
        }
        report.expired = inner.expiry.expire(inner.settings.hold_max_age).await?;
        inner.refresh_gauges().await?;
        Ok(report)
    }

    /// Sweeps when woken by a migration's end and every `release_interval`,
    /// until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RouteError> {
        let interval = self.inner.settings.release_interval;
        tracing::info!(?interval, "hold releaser started");
        loop {
            match self.sweep().await {
                Ok(report) if report.released > 0 => tracing::info!(
                    released = report.released,
                    holds = report.holds,
                    "held events released"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "releasing holds failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.inner.signal.woken() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Moves held events that are too old to their route's dead-letter queue:
/// the releaser's last step, and the scheduler's `holds.expire` job.
pub struct HoldExpiry {
    routes: HashMap<String, Route>,
    store: Store,
    bus: Arc<dyn Bus>,
    known: KnownQueues,
}

impl HoldExpiry {
    /// Expires the holds of these routes; holds of other routes are left
    /// for the router that runs them.
    pub fn new(routes: Vec<Route>, store: Store, bus: Arc<dyn Bus>) -> HoldExpiry {
        HoldExpiry {
            routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            store,
            bus,
            known: KnownQueues::default(),
        }
    }

    /// Moves events held longer than `max_age` to their route's dead-letter
    /// queue, chunk by chunk: each chunk is sent (deduplicated by message
    /// id) before it is removed, so a crash in between loses nothing and a
    /// second expiry running at the same time sends nothing twice. Returns
    /// how many events it moved.
    pub async fn expire(&self, max_age: Duration) -> Result<u64, RouteError> {
        let mut total = 0;
        loop {
            let expired = self.store.holds().expired(max_age, CHUNK).await?;
            let mut by_route: HashMap<&str, Vec<_>> = HashMap::new();
            for event in &expired {
                if self.routes.contains_key(&event.route) {
                    by_route
                        .entry(event.route.as_str())
                        .or_default()
                        .push(event);
                }
            }
            if by_route.is_empty() {
                return Ok(total);
            }
            for (name, events) in by_route {
                let route = &self.routes[name];
                let source: QueueName = route_queue(route)?;
                let dead_letter = route_dead_letter(route)?;
                self.known.ensure(self.bus.as_ref(), &dead_letter).await?;
                let letters = events
                    .iter()
                    .map(|e| {
                        let reason = format!(
                            "held for customer {} longer than routing.hold_max_age ({}) while the customer migrated",
                            e.customer,
                            humantime::format_duration(max_age)
                        );
                        let mut letter = dead_letter_message(e.body.clone().into(), &source, &reason);
                        for (key, value) in &e.attributes {
                            letter.attributes.entry(key.clone()).or_insert_with(|| value.clone());
                        }
                        letter.dedup_key(format!("expired:{}", e.message_id))
                    })
                    .collect();
                self.bus.send_batch(&dead_letter, letters).await?;
                let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
                self.store.holds().remove(&seqs).await?;
                telemetry::expired(name, events.len() as u64);
                total += events.len() as u64;
            }
            if expired.len() < CHUNK as usize {
                return Ok(total);
            }
        }
    }
}

impl Inner {
    /// Sends one customer's hold to its shard, oldest first, chunk by
    /// chunk: each chunk is sent (with its dedup keys) before it is
    /// removed, so a crash in between sends it again instead of losing it.
    /// Stops if the customer starts migrating again meanwhile.
    async fn release(&self, hold: &CustomerHold) -> Result<u64, RouteError> {
        let (Some(route), Some(shard)) = (self.routes.get(&hold.route), &hold.release_to) else {
            tracing::debug!(route = %hold.route, customer = %hold.customer, "hold of a route this process does not run; left for its router");
            return Ok(0);
        };
        let queue = route
            .queue_for(shard)
            .map_err(|e| RouteError::Name(e.source))?;
        self.known.ensure(self.bus.as_ref(), &queue).await?;
        let mut released = 0;
        while self.still_stable_on(&hold.customer, shard).await? {
            let events = self
                .store
                .holds()
                .oldest(&route.name, &hold.customer, CHUNK)
                .await?;
            if events.is_empty() {
                break;
            }
            let messages = events
                .iter()
                .map(|e| {
                    forward_message(
                        e.body.clone().into(),
                        &e.attributes,
                        &route.name,
                        &e.message_id,
                    )
                })
                .collect();
            self.bus.send_batch(&queue, messages).await?;
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            self.store.holds().remove(&seqs).await?;
            telemetry::routed(&route.name, shard.as_str(), events.len() as u64);
            released += events.len() as u64;
        }
        Ok(released)
    }

    async fn still_stable_on(
        &self,
        customer: &CustomerId,
        shard: &ShardId,
    ) -> Result<bool, RouteError> {
        let now = self.store.sharding().placement(customer).await?;
        Ok(matches!(&now.placement, Placement::Stable { shard: s } if s == shard))
    }

    async fn refresh_gauges(&self) -> Result<(), RouteError> {
        let now = self.clock.now();
        let summary = self.store.holds().summary().await?;
        for name in self.routes.keys() {
            match summary.iter().find(|s| &s.route == name) {
                Some(s) => telemetry::holds(name, s.events, now.since(s.oldest_held_at)),
                None => telemetry::holds(name, 0, std::time::Duration::ZERO),
            }
        }
        Ok(())
    }
}
