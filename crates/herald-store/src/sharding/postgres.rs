use async_trait::async_trait;
use herald_core::sharding::{CustomerId, ShardingEvent};
use herald_core::Timestamp;
use sqlx::PgPool;

use super::{
    kind_columns, placement_columns, plan, EventRow, PlacementRow, Recorded, RoutingRow,
    ShardingError, ShardingSql, EVENT_COLUMNS, PLACEMENT_COLUMNS,
};
use crate::error::is_unique_violation;
use crate::StoreError;

/// A batch takes a transaction-scoped advisory lock per customer (in
/// sorted order, so two batches never deadlock) before reading the
/// placements it judges against: a customer without a row yet cannot be
/// locked with `FOR UPDATE`.
pub(crate) struct PgShardingSql(pub PgPool);

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::postgres(e, context)
}

#[async_trait]
impl ShardingSql for PgShardingSql {
    async fn record(
        &self,
        events: &[ShardingEvent],
        now: Timestamp,
    ) -> Result<Vec<Recorded>, ShardingError> {
        const CONTEXT: &str = "record sharding events";
        let mut customers: Vec<&str> = events.iter().map(|e| e.customer.as_str()).collect();
        customers.sort_unstable();
        customers.dedup();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let mut tx = self.0.begin().await.map_err(err(CONTEXT))?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('herald.customer:' || c, 0)) \
             FROM unnest($1::text[]) AS c ORDER BY c",
        )
        .bind(&customers)
        .execute(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let existing: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM sharding_events WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(err(CONTEXT))?;
        let placements: Vec<PlacementRow> = sqlx::query_as(&format!(
            "SELECT {PLACEMENT_COLUMNS} FROM customer_placements WHERE customer = ANY($1)"
        ))
        .bind(&customers)
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
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
            .map_err(|e| {
                if is_unique_violation(&e) {
                    // The same id, recorded meanwhile for another customer.
                    ShardingError::IdReused {
                        index: *index,
                        id: record.event.id.clone(),
                        existing: "recorded concurrently by another request".to_owned(),
                    }
                } else {
                    err(CONTEXT)(e).into()
                }
            })?;
            seqs.push(seq);
        }
        for write in &plan.placements {
            let (state, shard, from, to) = placement_columns(&write.placement);
            sqlx::query(
                "INSERT INTO customer_placements (customer, state, shard, from_shard, to_shard, \
                     last_event_id, last_occurred_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (customer) DO UPDATE SET state = EXCLUDED.state, \
                     shard = EXCLUDED.shard, from_shard = EXCLUDED.from_shard, \
                     to_shard = EXCLUDED.to_shard, last_event_id = EXCLUDED.last_event_id, \
                     last_occurred_at = EXCLUDED.last_occurred_at, \
                     updated_at = EXCLUDED.updated_at",
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
        if !plan.shards.is_empty() {
            let shards: Vec<&str> = plan.shards.iter().map(String::as_str).collect();
            sqlx::query(
                "INSERT INTO shards (id, first_seen_at) SELECT s, $2 FROM unnest($1::text[]) AS s \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&shards)
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
            "SELECT {PLACEMENT_COLUMNS} FROM customer_placements WHERE customer = $1"
        ))
        .bind(customer.as_str())
        .fetch_optional(&self.0)
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
             WHERE customer = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(customer.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.0)
        .await
        .map_err(err("read sharding history"))
    }

    async fn shards(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT id FROM shards ORDER BY id")
            .fetch_all(&self.0)
            .await
            .map_err(err("list shards"))
    }

    async fn routing_states(
        &self,
        route: &str,
        customers: &[String],
    ) -> Result<Vec<RoutingRow>, StoreError> {
        sqlx::query_as(
            "SELECT c.customer, p.state, p.shard, p.from_shard, p.to_shard, \
                 EXISTS (SELECT 1 FROM holds AS h WHERE h.route = $1 AND h.customer = c.customer) \
                     AS held \
             FROM unnest($2::text[]) AS c(customer) \
             LEFT JOIN customer_placements AS p ON p.customer = c.customer",
        )
        .bind(route)
        .bind(customers)
        .fetch_all(&self.0)
        .await
        .map_err(err("read routing states"))
    }
}
