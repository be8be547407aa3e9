use std::collections::HashSet;

use async_trait::async_trait;
use herald_core::Timestamp;
use sqlx::{QueryBuilder, Sqlite};

use super::{
    missing_reference, AffinityRow, MemberRecord, MemberRow, MemberSql, SubscriptionRow,
    SuppressionRow, MEMBER_COLUMNS, SUPPRESSION_COLUMNS,
};
use crate::error::is_foreign_key_violation;
use crate::{SqliteDb, StoreError};

/// Rows per multi-row statement: well under SQLite's 32,766 bound
/// parameters for the widest row (eleven member columns).
const ROWS_PER_STATEMENT: usize = 1000;

/// Reads go to the reader pool, writes through the single writer.
pub(crate) struct SqliteMemberSql(pub SqliteDb);

fn failed(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::sqlite(e, context)
}

fn failed_or_missing(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if is_foreign_key_violation(&e) {
            missing_reference()
        } else {
            StoreError::sqlite(e, context)
        }
    }
}

#[async_trait]
impl MemberSql for SqliteMemberSql {
    const BACKEND: &'static str = crate::sqlite::BACKEND;

    async fn upsert_members(
        &self,
        records: &[MemberRecord],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .0
            .writer
            .begin()
            .await
            .map_err(failed("upsert members"))?;
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let mut query =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO members ({MEMBER_COLUMNS}) "));
            query.push_values(chunk, |mut row, m| {
                row.push_bind(&m.id)
                    .push_bind(&m.email)
                    .push_bind(&m.email_normalized)
                    .push_bind(&m.name)
                    .push_bind(&m.first_name)
                    .push_bind(&m.locale)
                    .push_bind(&m.time_zone)
                    .push_bind(m.status)
                    .push_bind(&m.customer_id)
                    .push_bind(now.millis())
                    .push_bind(now.millis());
            });
            query.push(
                " ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
                 email_normalized = excluded.email_normalized, name = excluded.name, \
                 first_name = excluded.first_name, locale = excluded.locale, \
                 time_zone = excluded.time_zone, status = excluded.status, \
                 customer_id = excluded.customer_id, updated_at = excluded.updated_at",
            );
            query
                .build()
                .execute(&mut *tx)
                .await
                .map_err(failed("upsert members"))?;
        }
        tx.commit().await.map_err(failed("upsert members"))
    }

    async fn member(&self, id: &str) -> Result<Option<MemberRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {MEMBER_COLUMNS} FROM members WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(failed("read member"))
    }

    async fn members(
        &self,
        email_normalized: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MemberRow>, StoreError> {
        // Two statements rather than `(?1 IS NULL OR email_normalized = ?1)`,
        // which keeps the planner off the email index and scans every member.
        let filter = if email_normalized.is_some() {
            "email_normalized = ?1"
        } else {
            "?1 IS NULL"
        };
        sqlx::query_as(&format!(
            "SELECT {MEMBER_COLUMNS} FROM members \
             WHERE {filter} AND (?2 IS NULL OR id > ?2) \
             ORDER BY id LIMIT ?3"
        ))
        .bind(email_normalized)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("list members"))
    }

    async fn delete_member(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM members WHERE id = ?1")
            .bind(id)
            .execute(&self.0.writer)
            .await
            .map_err(failed("delete member"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn existing_members(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT id FROM members WHERE id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            let rows: Vec<String> = query
                .build_query_scalar()
                .fetch_all(&self.0.reader)
                .await
                .map_err(failed("look up members"))?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn members_by_ids(&self, ids: &[&str]) -> Result<Vec<MemberRow>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {MEMBER_COLUMNS} FROM members WHERE id IN ("
            ));
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            let rows: Vec<MemberRow> = query
                .build_query_as()
                .fetch_all(&self.0.reader)
                .await
                .map_err(failed("read members"))?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn upsert_affinities(
        &self,
        rows: &[(&str, &str, f64)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .0
            .writer
            .begin()
            .await
            .map_err(failed("set affinities"))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO affinities (member_id, brand_id, score, updated_at) ",
            );
            query.push_values(chunk, |mut row, (member_id, brand_id, score)| {
                row.push_bind(*member_id)
                    .push_bind(*brand_id)
                    .push_bind(*score)
                    .push_bind(now.millis());
            });
            query.push(
                " ON CONFLICT (member_id, brand_id) DO UPDATE SET score = excluded.score, \
                 updated_at = excluded.updated_at",
            );
            query
                .build()
                .execute(&mut *tx)
                .await
                .map_err(failed_or_missing("set affinities"))?;
        }
        tx.commit().await.map_err(failed("set affinities"))
    }

    async fn affinities(&self, member_id: &str) -> Result<Vec<AffinityRow>, StoreError> {
        sqlx::query_as(
            "SELECT member_id, brand_id, score, updated_at FROM affinities \
             WHERE member_id = ?1 ORDER BY brand_id",
        )
        .bind(member_id)
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("read affinities"))
    }

    async fn delete_affinity(&self, member_id: &str, brand_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM affinities WHERE member_id = ?1 AND brand_id = ?2")
            .bind(member_id)
            .bind(brand_id)
            .execute(&self.0.writer)
            .await
            .map_err(failed("delete affinity"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn upsert_subscriptions(
        &self,
        rows: &[(&str, &str, bool, &str)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .0
            .writer
            .begin()
            .await
            .map_err(failed("set subscriptions"))?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO subscriptions (member_id, email_type, subscribed, source, updated_at) ",
            );
            query.push_values(
                chunk,
                |mut row, (member_id, email_type, subscribed, source)| {
                    row.push_bind(*member_id)
                        .push_bind(*email_type)
                        .push_bind(*subscribed)
                        .push_bind(*source)
                        .push_bind(now.millis());
                },
            );
            query.push(
                " ON CONFLICT (member_id, email_type) DO UPDATE SET \
                 subscribed = excluded.subscribed, source = excluded.source, \
                 updated_at = excluded.updated_at",
            );
            query
                .build()
                .execute(&mut *tx)
                .await
                .map_err(failed_or_missing("set subscriptions"))?;
        }
        tx.commit().await.map_err(failed("set subscriptions"))
    }

    async fn subscriptions(&self, member_id: &str) -> Result<Vec<SubscriptionRow>, StoreError> {
        sqlx::query_as(
            "SELECT member_id, email_type, subscribed, source, updated_at FROM subscriptions \
             WHERE member_id = ?1 ORDER BY email_type",
        )
        .bind(member_id)
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("read subscriptions"))
    }

    async fn upsert_suppression(
        &self,
        address: &str,
        reason: &str,
        source: &str,
        detail: Option<&str>,
        now: Timestamp,
    ) -> Result<SuppressionRow, StoreError> {
        sqlx::query_as(&format!(
            "INSERT INTO suppressions ({SUPPRESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, \
             source = excluded.source, detail = excluded.detail \
             RETURNING {SUPPRESSION_COLUMNS}"
        ))
        .bind(address)
        .bind(reason)
        .bind(source)
        .bind(detail)
        .bind(now.millis())
        .fetch_one(&self.0.writer)
        .await
        .map_err(failed("suppress address"))
    }

    async fn suppression(&self, address: &str) -> Result<Option<SuppressionRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE address = ?1"
        ))
        .bind(address)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(failed("read suppression"))
    }

    async fn suppressions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SuppressionRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE ?1 IS NULL OR address > ?1 \
             ORDER BY address LIMIT ?2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.0.reader)
        .await
        .map_err(failed("list suppressions"))
    }

    async fn delete_suppression(&self, address: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM suppressions WHERE address = ?1")
            .bind(address)
            .execute(&self.0.writer)
            .await
            .map_err(failed("lift suppression"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn cadence(&self) -> Result<(i64, i64), StoreError> {
        sqlx::query_as("SELECT max_alerts, window_secs FROM cadence_policy WHERE id = 1")
            .fetch_one(&self.0.reader)
            .await
            .map_err(failed("read cadence policy"))
    }

    async fn set_cadence(
        &self,
        max_alerts: i64,
        window_secs: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cadence_policy (id, max_alerts, window_secs, updated_at) \
             VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET \
             max_alerts = excluded.max_alerts, window_secs = excluded.window_secs, \
             updated_at = excluded.updated_at",
        )
        .bind(max_alerts)
        .bind(window_secs)
        .bind(now.millis())
        .execute(&self.0.writer)
        .await
        .map_err(failed("set cadence policy"))?;
        Ok(())
    }
}
