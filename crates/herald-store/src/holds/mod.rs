//! Migration holds: per route and customer, a FIFO of events parked while
//! the customer migrates, kept in the database so they survive restarts.
//!
//! Events are appended in arrival order and read back oldest first. A
//! release sends a hold's oldest events on and only then removes them, so a
//! crash between the two sends them again (the router's dedup keys make
//! that harmless) rather than losing them. The same queue message parked
//! twice (a redelivery) is held once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::sharding::{CustomerId, ShardId};
use herald_core::{Clock, Timestamp};

use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// A held message's attributes, as the bus carries them.
pub type Attributes = BTreeMap<String, String>;

/// An event to park.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHeldEvent {
    pub customer: CustomerId,
    /// The event's message id on the route's queue.
    pub message_id: String,
    pub body: Vec<u8>,
    pub attributes: Attributes,
}

/// A parked event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEvent {
    /// Arrival order across every hold.
    pub seq: i64,
    pub route: String,
    pub customer: CustomerId,
    pub message_id: String,
    pub body: Vec<u8>,
    pub attributes: Attributes,
    pub held_at: Timestamp,
}

/// The holds of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHolds {
    pub route: String,
    pub events: u64,
    pub customers: u64,
    pub oldest_held_at: Timestamp,
}

/// The hold of one customer on one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerHold {
    pub route: String,
    pub customer: CustomerId,
    pub events: u64,
    pub oldest_held_at: Timestamp,
    /// The shard it goes to now, when the customer is stable (the hold is
    /// waiting for its release); `None` while the customer migrates.
    pub release_to: Option<ShardId>,
}

#[async_trait]
pub trait HoldStore: Send + Sync {
    /// Appends events to their customers' holds on `route`, in the given
    /// order; returns how many were new (a message already held is skipped).
    async fn park(&self, route: &str, events: &[NewHeldEvent]) -> Result<u64, StoreError>;

    /// The oldest `limit` events of one customer's hold, oldest first.
    async fn oldest(
        &self,
        route: &str,
        customer: &CustomerId,
        limit: u32,
    ) -> Result<Vec<HeldEvent>, StoreError>;

    /// Removes released (or dead-lettered) events by `seq`; returns how many.
    async fn remove(&self, seqs: &[i64]) -> Result<u64, StoreError>;

    /// Holds whose customer is stable again: the ones to release now, each
    /// with the shard it goes to; oldest first, at most `limit`.
    async fn releasable(&self, limit: u32) -> Result<Vec<CustomerHold>, StoreError>;

    /// Per customer holds, oldest first, at most `limit` (for operators).
    async fn customers(&self, limit: u32) -> Result<Vec<CustomerHold>, StoreError>;

    /// Per route: how many events are held and since when.
    async fn summary(&self) -> Result<Vec<RouteHolds>, StoreError>;

    /// Events held longer than `max_age`, oldest first, at most `limit`.
    async fn expired(&self, max_age: Duration, limit: u32) -> Result<Vec<HeldEvent>, StoreError>;
}

#[async_trait]
pub(crate) trait HoldSql: Send + Sync + 'static {
    async fn park(
        &self,
        route: &str,
        events: &[NewHeldEvent],
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    async fn oldest(
        &self,
        route: &str,
        customer: &str,
        limit: u32,
    ) -> Result<Vec<HeldRow>, StoreError>;
    async fn remove(&self, seqs: &[i64]) -> Result<u64, StoreError>;
    async fn customers(
        &self,
        stable_only: bool,
        limit: u32,
    ) -> Result<Vec<CustomerRow>, StoreError>;
    async fn summary(&self) -> Result<Vec<SummaryRow>, StoreError>;
    async fn held_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<HeldRow>, StoreError>;
}

pub(crate) struct Holds<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: HoldSql> Holds<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }
}

#[async_trait]
impl<S: HoldSql> HoldStore for Holds<S> {
    async fn park(&self, route: &str, events: &[NewHeldEvent]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        self.sql.park(route, events, self.clock.now()).await
    }

    async fn oldest(
        &self,
        route: &str,
        customer: &CustomerId,
        limit: u32,
    ) -> Result<Vec<HeldEvent>, StoreError> {
        self.sql
            .oldest(route, customer.as_str(), limit.max(1))
            .await?
            .into_iter()
            .map(HeldRow::into_event)
            .collect()
    }

    async fn remove(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        self.sql.remove(seqs).await
    }

    async fn releasable(&self, limit: u32) -> Result<Vec<CustomerHold>, StoreError> {
        self.sql
            .customers(true, limit.max(1))
            .await?
            .into_iter()
            .map(CustomerRow::into_hold)
            .collect()
    }

    async fn customers(&self, limit: u32) -> Result<Vec<CustomerHold>, StoreError> {
        self.sql
            .customers(false, limit.max(1))
            .await?
            .into_iter()
            .map(CustomerRow::into_hold)
            .collect()
    }

    async fn summary(&self) -> Result<Vec<RouteHolds>, StoreError> {
        Ok(self
            .sql
            .summary()
            .await?
            .into_iter()
            .map(|row| RouteHolds {
                route: row.route,
                events: row.events.max(0) as u64,
                customers: row.customers.max(0) as u64,
                oldest_held_at: Timestamp(row.oldest_held_at),
            })
            .collect())
    }

    async fn expired(&self, max_age: Duration, limit: u32) -> Result<Vec<HeldEvent>, StoreError> {
        let cutoff = Timestamp(
            self.clock
                .now()
                .millis()
                .saturating_sub(herald_core::time::duration_millis(max_age)),
        );
        self.sql
            .held_before(cutoff, limit.max(1))
            .await?
            .into_iter()
            .map(HeldRow::into_event)
            .collect()
    }
}

fn corrupt(what: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        backend: "store",
        what,
        message: message.into(),
    }
}

pub(crate) fn attributes_json(attributes: &Attributes) -> String {
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) const HELD_COLUMNS: &str = "seq, route, customer, message_id, body, attributes, held_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct HeldRow {
    seq: i64,
    route: String,
    customer: String,
    message_id: String,
    body: Vec<u8>,
    attributes: String,
    held_at: i64,
}

impl HeldRow {
    fn into_event(self) -> Result<HeldEvent, StoreError> {
        Ok(HeldEvent {
            seq: self.seq,
            route: self.route,
            customer: CustomerId::parse(self.customer)
                .map_err(|e| corrupt("held event", e.to_string()))?,
            message_id: self.message_id,
            body: self.body,
            attributes: serde_json::from_str(&self.attributes)
                .map_err(|e| corrupt("held event attributes", e.to_string()))?,
            held_at: Timestamp(self.held_at),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CustomerRow {
    route: String,
    customer: String,
    events: i64,
    oldest_held_at: i64,
    release_to: Option<String>,
}

impl CustomerRow {
    fn into_hold(self) -> Result<CustomerHold, StoreError> {
        Ok(CustomerHold {
            route: self.route,
            customer: CustomerId::parse(self.customer)
                .map_err(|e| corrupt("held event", e.to_string()))?,
            events: self.events.max(0) as u64,
            oldest_held_at: Timestamp(self.oldest_held_at),
            release_to: self
                .release_to
                .map(|s| ShardId::parse(s).map_err(|e| corrupt("placement", e.to_string())))
                .transpose()?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SummaryRow {
    route: String,
    events: i64,
    customers: i64,
    oldest_held_at: i64,
}

/// The per-customer listing; `{stable}` is replaced by the stable-only
/// condition or nothing.
pub(crate) fn customers_sql(stable_only: bool, limit_param: &str) -> String {
    let stable = if stable_only {
        "WHERE p.state = 'stable'"
    } else {
        ""
    };
    format!(
        "SELECT h.route, h.customer, h.events, h.oldest_held_at, \
             CASE WHEN p.state = 'stable' THEN p.shard END AS release_to \
         FROM (SELECT route, customer, COUNT(*) AS events, MIN(held_at) AS oldest_held_at, \
                   MIN(seq) AS first_seq \
               FROM holds GROUP BY route, customer) AS h \
         LEFT JOIN customer_placements AS p ON p.customer = h.customer \
         {stable} ORDER BY h.first_seq LIMIT {limit_param}"
    )
}

pub(crate) const SUMMARY_SQL: &str =
    "SELECT route, COUNT(*) AS events, COUNT(DISTINCT customer) AS customers, \
         MIN(held_at) AS oldest_held_at FROM holds GROUP BY route ORDER BY route";
