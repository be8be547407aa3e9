//! SQLite statements for email events. Inserts are multi-row statements of
//! up to [`INSERT_CHUNK`] events with `ON CONFLICT DO NOTHING`, so a batch
//! costs a few statements, not one per event.
//!
//! Which events were new is told by the count of rows inserted: when every
//! row went in (a batch seen for the first time, the common case) no key is
//! read back at all; otherwise the keys of the rows added after the table's
//! last `seq` as it was before the insert are read. SQLite gives a new row
//! the largest rowid plus one, and the caller holds the write transaction,
//! so those are exactly this insert's rows. Returning the keys of every
//! inserted row instead (`RETURNING`) cost a third of the insert.

use async_trait::async_trait;
use herald_core::email_event::EmailEvent;
use herald_core::Timestamp;
use sqlx::SqliteConnection;

use super::{EmailEventSql, EventRow, EventRows, COLUMNS};
use crate::{SqliteDb, StoreError};

const BACKEND: &str = crate::sqlite::BACKEND;

/// Events per INSERT: 12 parameters each, well under SQLite's 32766.
const INSERT_CHUNK: usize = 500;

const INSERT_HEAD: &str = "INSERT INTO email_events (provider, provider_event_id, event_type, \
     address, occurred_at, message_id, alert_id, bounce, tags, custom_args, raw, received_at) \
     VALUES ";
const ROW: &str = "(?,?,?,?,?,?,?,?,?,?,?,?)";
const INSERT_TAIL: &str = " ON CONFLICT (provider, provider_event_id) DO NOTHING";

fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(INSERT_HEAD.len() + rows * (ROW.len() + 1) + 100);
    sql.push_str(INSERT_HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
    sql.push_str(INSERT_TAIL);
    sql
}

fn err(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::sqlite(e, context)
}

/// Stores the events not stored before, on a connection the caller holds
/// (inside its transaction, so that what it publishes commits with the
/// events); returns the indexes of the events it stored, first occurrences
/// only.
pub async fn insert_new(
    conn: &mut SqliteConnection,
    events: &[EmailEvent],
    received_at: Timestamp,
) -> Result<Vec<usize>, StoreError> {
    insert_rows(conn, &EventRows::of(events)?, received_at).await
}

/// As [`insert_new`], for events flattened beforehand. The connection must
/// be inside a transaction: the rows this call inserted are told apart by
/// `seq`, which needs no other writer to commit between its statements.
pub async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &EventRows,
    received_at: Timestamp,
) -> Result<Vec<usize>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let last_before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM email_events")
        .fetch_one(&mut *conn)
        .await
        .map_err(err("store email events"))?;
    let mut inserted = 0;
    let full_chunk = insert_sql(INSERT_CHUNK);
    for chunk in rows.rows.chunks(INSERT_CHUNK) {
        let partial;
        let sql = if chunk.len() == INSERT_CHUNK {
            &full_chunk
        } else {
            partial = insert_sql(chunk.len());
            &partial
        };
        let mut query = sqlx::query(sql);
        for c in chunk {
            query = query
                .bind(c.provider.as_str())
                .bind(c.provider_event_id.as_str())
                .bind(c.event_type.as_str())
                .bind(c.address.as_str())
                .bind(c.occurred_at)
                .bind(c.message_id.as_deref())
                .bind(c.alert_id.as_deref())
                .bind(c.bounce)
                .bind(c.tags.as_str())
                .bind(c.custom_args.as_str())
                .bind(c.raw.as_str())
                .bind(received_at.millis());
        }
        inserted += query
            .execute(&mut *conn)
            .await
            .map_err(err("store email events"))?
            .rows_affected();
    }
    if inserted == rows.len() as u64 {
        return Ok((0..rows.len()).collect());
    }
    if inserted == 0 {
        return Ok(Vec::new());
    }
    let keys: Vec<(String, String)> =
        sqlx::query_as("SELECT provider, provider_event_id FROM email_events WHERE seq > ?1")
            .bind(last_before)
            .fetch_all(&mut *conn)
            .await
            .map_err(err("store email events"))?;
    Ok(rows.first_indexes(keys))
}

pub(crate) struct SqliteEmailEventSql(pub SqliteDb);

#[async_trait]
impl EmailEventSql for SqliteEmailEventSql {
    const BACKEND: &'static str = BACKEND;

    async fn insert(
        &self,
        events: &[EmailEvent],
        received_at: Timestamp,
    ) -> Result<Vec<usize>, StoreError> {
        let mut conn = self
            .0
            .writer
            .acquire()
            .await
            .map_err(err("store email events"))?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
            .await
            .map_err(err("store email events"))?;
        let new = insert_new(&mut tx, events, received_at).await?;
        tx.commit().await.map_err(err("store email events"))?;
        Ok(new)
    }

    async fn by_key(&self, provider: &str, id: &str) -> Result<Option<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE provider = ?1 AND provider_event_id = ?2"
        ))
        .bind(provider)
        .bind(id)
        .fetch_optional(&self.0.reader)
        .await
        .map_err(err("read email event"))
    }

    async fn by_address(&self, address: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE address = ?1 \
             ORDER BY occurred_at DESC, seq DESC LIMIT ?2"
        ))
        .bind(address)
        .bind(limit)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read email events of an address"))
    }

    async fn by_alert(&self, alert_id: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE alert_id = ?1 \
             ORDER BY occurred_at DESC, seq DESC LIMIT ?2"
        ))
        .bind(alert_id)
        .bind(limit)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read email events of a brand alert"))
    }

    async fn latest(
        &self,
        event_type: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM email_events WHERE ?1 IS NULL OR event_type = ?1 \
             ORDER BY seq DESC LIMIT ?2"
        ))
        .bind(event_type)
        .bind(limit)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("read the latest email events"))
    }

    async fn count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM email_events")
            .fetch_one(&self.0.reader)
            .await
            .map_err(err("count email events"))
    }

    async fn counts_by_type(
        &self,
        alert_id: Option<&str>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT event_type, COUNT(*) FROM email_events \
             WHERE ?1 IS NULL OR alert_id = ?1 GROUP BY event_type",
        )
        .bind(alert_id)
        .fetch_all(&self.0.reader)
        .await
        .map_err(err("count email events by type"))
    }

    async fn delete_received_before(
        &self,
        before: Timestamp,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM email_events WHERE seq IN \
             (SELECT seq FROM email_events WHERE received_at < ?1 ORDER BY seq LIMIT ?2)",
        )
        .bind(before.millis())
        .bind(limit)
        .execute(&self.0.writer)
        .await
        .map_err(err("prune email events"))?
        .rows_affected())
    }
}
