use async_trait::async_trait;
use herald_core::Timestamp;
use sqlx::PgPool;

use super::{
    attributes_json, customers_sql, CustomerRow, HeldRow, HoldSql, NewHeldEvent, SummaryRow,
    HELD_COLUMNS, SUMMARY_SQL,
};
use crate::StoreError;

/// A batch of appends is one multi-row INSERT, so it keeps its order and
/// lands whole.
pub(crate) struct PgHoldSql(pub PgPool);

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::postgres(e, context)
}

#[async_trait]
impl HoldSql for PgHoldSql {
    async fn park(
        &self,
        route: &str,
        events: &[NewHeldEvent],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let customers: Vec<&str> = events.iter().map(|e| e.customer.as_str()).collect();
        let message_ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
        let bodies: Vec<&[u8]> = events.iter().map(|e| e.body.as_slice()).collect();
        let attributes: Vec<String> = events
            .iter()
            .map(|e| attributes_json(&e.attributes))
            .collect();
        Ok(sqlx::query(
            "INSERT INTO holds (route, customer, message_id, body, attributes, held_at) \
             SELECT $1, e.customer, e.message_id, e.body, e.attributes, $6 \
             FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[]) \
                 WITH ORDINALITY AS e(customer, message_id, body, attributes, position) \
             ORDER BY e.position \
             ON CONFLICT (route, message_id) DO NOTHING",
        )
        .bind(route)
        .bind(&customers)
        .bind(&message_ids)
        .bind(&bodies)
        .bind(&attributes)
        .bind(now.millis())
        .execute(&self.0)
        .await
        .map_err(err("park held events"))?
        .rows_affected())
    }

    async fn oldest(
        &self,
        route: &str,
        customer: &str,
        limit: u32,
    ) -> Result<Vec<HeldRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {HELD_COLUMNS} FROM holds WHERE route = $1 AND customer = $2 \
             ORDER BY seq LIMIT $3"
        ))
        .bind(route)
        .bind(customer)
        .bind(i64::from(limit))
        .fetch_all(&self.0)
        .await
        .map_err(err("read held events"))
    }

    async fn remove(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM holds WHERE seq = ANY($1)")
            .bind(seqs)
            .execute(&self.0)
            .await
            .map_err(err("remove held events"))?
            .rows_affected())
    }

    async fn customers(
        &self,
        stable_only: bool,
        limit: u32,
    ) -> Result<Vec<CustomerRow>, StoreError> {
        sqlx::query_as(&customers_sql(stable_only, "$1"))
            .bind(i64::from(limit))
            .fetch_all(&self.0)
            .await
            .map_err(err("list holds"))
    }

    async fn summary(&self) -> Result<Vec<SummaryRow>, StoreError> {
        sqlx::query_as(SUMMARY_SQL)
            .fetch_all(&self.0)
            .await
            .map_err(err("summarise holds"))
    }

    async fn held_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<HeldRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {HELD_COLUMNS} FROM holds WHERE held_at < $1 ORDER BY held_at, seq LIMIT $2"
        ))
        .bind(cutoff.millis())
        .bind(i64::from(limit))
        .fetch_all(&self.0)
        .await
        .map_err(err("read expired holds"))
    }
}
