//! Routing functions at work: each configured route
//! ([`herald_core::routing::Route`]) reads its own input queue,
//! `route.<name>`, subscribed to the route's source topic, and sends every
//! event to the queue of the shard that owns its customer.
//!
//! - **Worker** ([`RouteWorker`]): one batch at a time, in queue order. The
//!   batch's customers are looked up in one query (placement, and whether
//!   the route holds events of theirs); then per event
//!   [`Route::decide`](herald_core::routing::Route::decide) says deliver
//!   (send to the shard's queue), hold (park in the customer's hold), delay
//!   (a copy comes back to the route queue after the delay and is looked at
//!   again), drop, or broadcast (every known shard's queue). The batch's
//!   parks are stored first, then its sends and its acks are one bus commit
//!   ([`herald_bus::Bus::commit`]): nothing is sent for an event unless it
//!   is acked with it. Sends also carry the event's message id as dedup
//!   key, which the releaser's sends share, so an event parked by a batch
//!   whose commit then failed goes to its shard once.
//! - **Releaser** ([`Releaser`]): sends the holds of customers that are
//!   stable again to their shard's queue, oldest first, then deletes them.
//!   Woken at once when this process records the end of a migration
//!   ([`ReleaseSignal`](crate::sharding::ReleaseSignal)), and sweeping every
//!   `release_interval` for ends recorded by other processes and for holds
//!   left by a restart. It also moves holds older than `hold_max_age` to the
//!   route's dead-letter queue, and keeps the hold gauges current.
//!
//! A customer's events never overtake each other: while their hold is not
//! empty, new events join its back, and the worker delivers directly only
//! once the releaser has emptied it. This holds for one worker per route;
//! run the router role in one process per route queue (any number of
//! processes may record sharding events).

mod release;
mod telemetry;
mod worker;

use std::time::Duration;

use herald_bus::{Bus, BusError, QueueConfig, Subscription};
use herald_core::routing::{Route, UnknownPolicy};
use herald_core::{NameError, QueueName};
use serde::{Deserialize, Serialize};

pub use release::{HoldExpiry, ReleaseReport, Releaser};
pub use worker::{RouteReport, RouteWorker};

use crate::sharding::ShardingConsumer;

/// The attribute a delayed copy carries: the message id of the event as it
/// first reached the route queue, which stays its dedup key.
pub const ORIGIN_ATTRIBUTE: &str = "herald_origin";

/// The attribute naming the route an event went through.
pub const ROUTE_ATTRIBUTE: &str = "herald_route";

/// How the routing workers and the releaser run (`[routing]` in
/// herald.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Events taken from a route queue per batch (1 to 1000).
    pub batch_size: usize,
    /// How long one receive waits on an empty route queue.
    #[serde(with = "humantime_serde_compat")]
    pub poll_wait: Duration,
    /// How long a received batch stays invisible to other workers.
    #[serde(with = "humantime_serde_compat")]
    pub visibility: Duration,
    /// How often the releaser looks for holds to release (besides being
    /// woken by migration ends recorded in this process).
    #[serde(with = "humantime_serde_compat")]
    pub release_interval: Duration,
    /// Held events older than this go to the route's dead-letter queue.
    #[serde(with = "humantime_serde_compat")]
    pub hold_max_age: Duration,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
            release_interval: Duration::from_millis(500),
            hold_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RoutingSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.batch_size) {
            return Err(format!(
                "routing.batch_size: must be 1 to 1000, got {}",
                self.batch_size
            ));
        }
        for (key, value) in [
            ("routing.visibility", self.visibility),
            ("routing.release_interval", self.release_interval),
            ("routing.hold_max_age", self.hold_max_age),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be longer than 0s"));
            }
        }
        Ok(())
    }
}

/// Durations as humantime text ("500ms", "24h") without a dependency on
/// humantime-serde.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// The default route of `config.default.toml`, for tests and tools.
pub fn default_route() -> Route {
    serde_json::from_value(serde_json::json!({
        "name": "shards",
        "source": "email-events",
        "key": "/custom_args/customer_id",
        "target": "shard-{shard}.email-events",
    }))
    .expect("the default route is valid")
}

/// The input queue of a route: `route.<name>`.
pub fn route_queue(route: &Route) -> Result<QueueName, NameError> {
    QueueName::parse(format!("route.{}", route.name))
}

/// Where a route's expired holds and malformed events go:
/// `route.<name>.dlq`, the route queue's own dead-letter queue.
pub fn route_dead_letter(route: &Route) -> Result<QueueName, NameError> {
    route_queue(route)?.default_dead_letter()
}

/// Makes sure every route's source topic, input queue (subscribed to the
/// topic, with its dead-letter queue), unknown-customer queue and the
/// `sharding-events` queue exist, so nothing published is lost. Every
/// process calls this at start, whatever its roles.
pub async fn ensure_topology(bus: &dyn Bus, routes: &[Route]) -> Result<(), BusError> {
    let config = QueueConfig::default();
    for route in routes {
        bus.ensure_topic(&route.source).await?;
        let queue = route_queue(route)?;
        bus.ensure_queue(
            &queue,
            QueueConfig {
                dead_letter_queue: Some(queue.default_dead_letter()?),
                ..config.clone()
            },
        )
        .await?;
        bus.subscribe(Subscription {
            topic: route.source.clone(),
            queue,
            filter: Default::default(),
        })
        .await?;
        if let herald_core::routing::RouteMode::Keyed {
            unknown: UnknownPolicy::Queue(unroutable),
            ..
        } = &route.mode
        {
            ensure_if_missing(bus, unroutable).await?;
        }
    }
    ShardingConsumer::ensure_queue(bus, &config).await
}

/// Creates a queue with default settings unless it exists, leaving an
/// operator's settings alone.
async fn ensure_if_missing(bus: &dyn Bus, queue: &QueueName) -> Result<(), BusError> {
    match bus.stats(queue).await {
        Ok(_) => Ok(()),
        Err(BusError::QueueNotFound(_)) => bus.ensure_queue(queue, QueueConfig::default()).await,
        Err(e) => Err(e),
    }
}

/// The queues a worker has seen exist: a shard's queue is created with the
/// shard's first event, once per process.
#[derive(Debug, Default)]
struct KnownQueues(std::sync::Mutex<std::collections::HashSet<QueueName>>);

impl KnownQueues {
    async fn ensure(&self, bus: &dyn Bus, queue: &QueueName) -> Result<(), BusError> {
        if self.lock().contains(queue) {
            return Ok(());
        }
        ensure_if_missing(bus, queue).await?;
        self.lock().insert(queue.clone());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<QueueName>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
