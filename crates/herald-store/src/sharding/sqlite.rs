use async_trait::async_trait;
use herald_core::sharding::{CustomerId, ShardingEvent};
use herald_core::Timestamp;

use super::{
    kind_columns, placement_columns, plan, EventRow, PlacementRow, Recorded, RoutingRow,
    ShardingError, ShardingSql, EVENT_COLUMNS, PLACEMENT_COLUMNS,
};
use crate::{SqliteDb, StoreError};

/// Reads go to the reader pool; a batch is recorded through the single
/// writer in a `BEGIN IMMEDIATE` transaction, which takes the write lock
/// before reading the placements it judges against.
pub(crate) struct SqliteShardingSql(pub SqliteDb);

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::sqlite(e, context)
}

fn json_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    serde_json::to_string(&items.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".to_owned())
}

#[async_trait]
impl ShardingSql for SqliteShardingSql {
    async fn record(
        &self,
        events: &[ShardingEvent],
        now: Timestamp,
    ) -> Result<Vec<Recorded>, ShardingError> {
        const CONTEXT: &str = "record sharding events";
        let mut tx = self
            .0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(CONTEXT))?;
        let existing: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM sharding_events WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_array(events.iter().map(|e| e.id.as_str())))
        .fetch_all(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let placements: Vec<PlacementRow> = sqlx::query_as(&format!(
            "SELECT {PLACEMENT_COLUMNS} FROM customer_placements \
             WHERE customer IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_array(events.iter().map(|e| e.customer.as_str())))
        .fetch_all(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let plan = plan(events, existing, placements, now)?;
        let mut seqs = Vec::with_capacity(plan.inserts.len());
        for index in &plan.inserts {
            let record = &plan.answers[*index].record;
            let (kind, shard, from, to) = kind_columns(&record.event.kind);
            let (state, p_shard, p_from, p_to) = placement_columns(&record.placement);
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO sharding_events (id, customer, kind, shard, from_shard, to_shard, \
                     occurred_at, recorded_at, outcome, placement_state, placement_shard, \
                     placement_from, placement_to, release_to) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 RETURNING seq",
            )
            .bind(record.event.id.as_str())
            .bind(record.event.customer.as_str())
            .bind(kind)
            .bind(shard)
            .bind(from)
            .bind(to)
            .bind(record.event.occurred_at.millis())
            .bind(record.recorded_at.millis())
            .bind(record.outcome.as_str())
            .bind(state)
            .bind(p_shard)
            .bind(p_from)
            .bind(p_to)
            .bind(record.release_to.as_ref().map(|s| s.as_str()))
            .fetch_one(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
            seqs.push(seq);
        }
        for write in &plan.placements {
            let (state, shard, from, to) = placement_columns(&write.placement);
            sqlx::query(
                "INSERT INTO customer_placements (customer, state, shard, from_shard, to_shard, \
                     last_event_id, last_occurred_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (customer) DO UPDATE SET state = excluded.state, \
                     shard = excluded.shard, from_shard = excluded.from_shard, \
                     to_shard = excluded.to_shard, last_event_id = excluded.last_event_id, \
                     last_occurred_at = excluded.last_occurred_at, \
                     updated_at = excluded.updated_at",
            )
            .bind(&write.customer)
            .bind(state)
            .bind(shard)
            .bind(from)
            .bind(to)
            .bind(&write.last_event_id)
            .bind(write.last_occurred_at)
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
        }
        for shard in &plan.shards {
            sqlx::query(
                "INSERT INTO shards (id, first_seen_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(shard)
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?;
        }
        tx.commit().await.map_err(err(CONTEXT))?;
        Ok(plan.finish(seqs))
    }

    async fn placement(&self, customer: &CustomerId) -> Result<Option<PlacementRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {PLACEMENT_COLUMNS} FROM customer_placements WHERE customer = ?1"
        ))
        .bind(customer.as_str())
        .fetch_optional(&self.0.reader)
        .await
        .map_err(err("read customer placement"))
    }

    async fn history(
        &self,
        customer: &CustomerId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM sharding_events \
             WHERE customer = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))
        .bind(customer.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read sharding history"))
    }

    async fn shards(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT id FROM shards ORDER BY id")
            .fetch_all(&self.0.reader)
            .await
            .map_err(err("list shards"))
    }

    async fn routing_states(
        &self,
        route: &str,
        customers: &[String],
    ) -> Result<Vec<RoutingRow>, StoreError> {
        let packed: String = sqlx::query_scalar(ROUTING_STATES_PACKED)
            .bind(route)
            .bind(json_array(customers.iter().map(String::as_str)))
            .fetch_one(&self.0.reader)
            .await
            .map_err(err("read routing states"))?;
        let entries: Vec<RoutingEntry> =
            serde_json::from_str(&packed).map_err(|e| StoreError::Corrupt {
                backend: crate::sqlite::BACKEND,
                what: "routing states",
                message: e.to_string(),
            })?;
        Ok(entries.into_iter().map(RoutingRow::from).collect())
    }
}

/// A routed batch's customers with their placement and whether their hold
/// is empty, as one JSON array of `[customer, state, shard, from_shard,
/// to_shard, held]` entries: one value crosses from SQLite instead of a row
/// per customer, whose decoding cost more than the query itself.
const ROUTING_STATES_PACKED: &str = "SELECT json_group_array(json_array(c.value, p.state, \
         p.shard, p.from_shard, p.to_shard, \
         EXISTS (SELECT 1 FROM holds AS h WHERE h.route = ?1 AND h.customer = c.value))) \
     FROM json_each(?2) AS c \
     LEFT JOIN customer_placements AS p ON p.customer = c.value";

/// One entry of [`ROUTING_STATES_PACKED`]'s array.
#[derive(serde::Deserialize)]
struct RoutingEntry(
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

impl From<RoutingEntry> for RoutingRow {
    fn from(
        RoutingEntry(customer, state, shard, from_shard, to_shard, held): RoutingEntry,
    ) -> Self {
        RoutingRow {
            customer,
            state,
            shard,
            from_shard,
            to_shard,
            held: held != 0,
        }
    }
}
