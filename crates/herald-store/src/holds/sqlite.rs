use async_trait::async_trait;
use herald_core::Timestamp;

use super::{
    attributes_json, customers_sql, CustomerRow, HeldRow, HoldSql, NewHeldEvent, SummaryRow,
    HELD_COLUMNS, SUMMARY_SQL,
};
use crate::{SqliteDb, StoreError};

/// Reads go to the reader pool; writes through the single writer, a batch
/// of appends in one transaction so it keeps its order.
pub(crate) struct SqliteHoldSql(pub SqliteDb);

fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::sqlite(e, context)
}

#[async_trait]
impl HoldSql for SqliteHoldSql {
    async fn park(
        &self,
        route: &str,
        events: &[NewHeldEvent],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        const CONTEXT: &str = "park held events";
        let mut tx = self
            .0
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(CONTEXT))?;
        let mut added = 0;
        for event in events {
            added += sqlx::query(
                "INSERT INTO holds (route, customer, message_id, body, attributes, held_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (route, message_id) DO NOTHING",
            )
            .bind(route)
            .bind(event.customer.as_str())
            .bind(&event.message_id)
            .bind(&event.body)
            .bind(attributes_json(&event.attributes))
            .bind(now.millis())
            .execute(&mut *tx)
            .await
            .map_err(err(CONTEXT))?
            .rows_affected();
        }
        tx.commit().await.map_err(err(CONTEXT))?;
        Ok(added)
    }

    async fn oldest(
        &self,
        route: &str,
        customer: &str,
        limit: u32,
    ) -> Result<Vec<HeldRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {HELD_COLUMNS} FROM holds WHERE route = ?1 AND customer = ?2 \
             ORDER BY seq LIMIT ?3"
        ))
        .bind(route)
        .bind(customer)
        .bind(i64::from(limit))
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read held events"))
    }

    async fn remove(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        let list = serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned());
        Ok(
            sqlx::query("DELETE FROM holds WHERE seq IN (SELECT value FROM json_each(?1))")
                .bind(list)
                .execute(&self.0.writer)
                .await
                .map_err(err("remove held events"))?
                .rows_affected(),
        )
    }

    async fn customers(
        &self,
        stable_only: bool,
        limit: u32,
    ) -> Result<Vec<CustomerRow>, StoreError> {
        sqlx::query_as(&customers_sql(stable_only, "?1"))
            .bind(i64::from(limit))
            .fetch_all(&self.0.reader)
            .await
            .map_err(err("list holds"))
    }

    async fn summary(&self) -> Result<Vec<SummaryRow>, StoreError> {
        sqlx::query_as(SUMMARY_SQL)
            .fetch_all(&self.0.reader)
            .await
            .map_err(err("summarise holds"))
    }

    async fn held_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<HeldRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {HELD_COLUMNS} FROM holds WHERE held_at < ?1 ORDER BY held_at, seq LIMIT ?2"
        ))
        .bind(cutoff.millis())
        .bind(i64::from(limit))
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read expired holds"))
    }
}
