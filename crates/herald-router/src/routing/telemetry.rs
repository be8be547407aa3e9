//! The routing metrics, named once here so logs and `/metrics` agree:
//!
//! - `herald_events_routed_total{route,shard}`: events sent to a shard's
//!   queue (directly, released from a hold, by broadcast, or to the default
//!   shard of an unknown customer);
//! - `herald_events_unroutable_total{route}`: events whose customer is
//!   unknown (or whose key is missing), whatever the policy did with them;
//! - `herald_holds_events{route}` and `herald_hold_oldest_age_seconds{route}`:
//!   gauges of what is held now, refreshed by every release sweep;
//! - `herald_holds_expired_total{route}`: held events moved to the route's
//!   dead-letter queue after `hold_max_age`.

use std::time::Duration;

pub fn routed(route: &str, shard: &str, count: u64) {
    metrics::counter!("herald_events_routed_total", "route" => route.to_owned(), "shard" => shard.to_owned())
        .increment(count);
}

pub fn unroutable(route: &str, count: u64) {
    metrics::counter!("herald_events_unroutable_total", "route" => route.to_owned())
        .increment(count);
}

pub fn holds(route: &str, events: u64, oldest_age: Duration) {
    metrics::gauge!("herald_holds_events", "route" => route.to_owned()).set(events as f64);
    metrics::gauge!("herald_hold_oldest_age_seconds", "route" => route.to_owned())
        .set(oldest_age.as_secs_f64());
}

pub fn expired(route: &str, count: u64) {
    tracing::warn!(
        route,
        count,
        "held events expired; moved to the route's dead-letter queue"
    );
    metrics::counter!("herald_holds_expired_total", "route" => route.to_owned()).increment(count);
}
