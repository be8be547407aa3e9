//! SQLite statements for email events. Inserts are multi-row statements of
//! up to [`INSERT_CHUNK`] events, so a batch costs a few statements, not one
//! per event.
//!
//! They are `INSERT OR IGNORE`, not `ON CONFLICT DO NOTHING`: with the
//! latter the NOT NULL checks may still abort a statement halfway, so
//! SQLite keeps a statement journal, copying every page the statement
//! changes that an earlier statement of the transaction had already changed
//! (with a group commit, most pages of the address index) before changing
//! it. `OR IGNORE` cannot abort, so no journal is kept. Nothing else is
//! ignored by it: the unique key is the table's only constraint besides
//! NOT NULL, and every NOT NULL column is bound from a non-optional value.
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
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Encode, Sqlite, SqliteConnection, Type};

use super::{EmailEventSql, EventColumns, EventRow, EventRows, COLUMNS};
use crate::{SqliteDb, StoreError};

const BACKEND: &str = crate::sqlite::BACKEND;

/// Events per INSERT: 12 parameters each, well under SQLite's 32766.
const INSERT_CHUNK: usize = 500;

const INSERT_HEAD: &str =
    "INSERT OR IGNORE INTO email_events (provider, provider_event_id, event_type, \
     address, occurred_at, message_id, alert_id, bounce, tags, custom_args, raw, received_at) \
     VALUES ";
const ROW: &str = "(?,?,?,?,?,?,?,?,?,?,?,?)";

fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(INSERT_HEAD.len() + rows * (ROW.len() + 1));
    sql.push_str(INSERT_HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
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
    Ok(insert_batches(conn, &[rows], received_at)
        .await?
        .pop()
        .unwrap_or_default())
}

/// As [`insert_rows`] for several batches in a row (a group commit);
/// returns each batch's new indexes, batch by batch.
///
/// A statement's values are copied into it while the statement before it
/// runs on the connection's own thread, so the caller's thread does not
/// leave that thread idle while it builds the next one. A batch's rows get
/// the `seq`s that follow the largest one before it (SQLite gives a new row
/// the largest rowid plus one), so the table's last `seq` is read once per
/// call, not once per batch.
pub async fn insert_batches(
    conn: &mut SqliteConnection,
    batches: &[&EventRows],
    received_at: Timestamp,
) -> Result<Vec<Vec<usize>>, StoreError> {
    let statements: Vec<(usize, &[EventColumns])> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, rows)| rows.rows.chunks(INSERT_CHUNK).map(move |chunk| (b, chunk)))
        .collect();
    let Some(&(_, first)) = statements.first() else {
        return Ok(vec![Vec::new(); batches.len()]);
    };
    let received_at = received_at.millis();
    let mut last_before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM email_events")
        .fetch_one(&mut *conn)
        .await
        .map_err(err("store email events"))?;
    let full_chunk = insert_sql(INSERT_CHUNK);
    let mut news = Vec::with_capacity(batches.len());
    let mut inserted = 0;
    let mut next = arguments(first, received_at)?;
    for (k, &(b, chunk)) in statements.iter().enumerate() {
        let partial;
        let sql = if chunk.len() == INSERT_CHUNK {
            &full_chunk
        } else {
            partial = insert_sql(chunk.len());
            &partial
        };
        let following = statements.get(k + 1);
        let current = std::mem::take(&mut next);
        let (done, built) =
            tokio::join!(sqlx::query_with(sql, current).execute(&mut *conn), async {
                following
                    .map(|&(_, c)| arguments(c, received_at))
                    .transpose()
            },);
        inserted += done.map_err(err("store email events"))?.rows_affected();
        next = built?.unwrap_or_default();
        if following.is_some_and(|&(next_batch, _)| next_batch == b) {
            continue;
        }
        // Batches without rows have no statement.
        news.resize(b, Vec::new());
        let rows = batches[b];
        news.push(if inserted == rows.len() as u64 {
            (0..rows.len()).collect()
        } else if inserted == 0 {
            Vec::new()
        } else {
            let keys: Vec<(String, String)> = sqlx::query_as(
                "SELECT provider, provider_event_id FROM email_events WHERE seq > ?1",
            )
            .bind(last_before)
            .fetch_all(&mut *conn)
            .await
            .map_err(err("store email events"))?;
            rows.first_indexes(keys)
        });
        last_before += inserted as i64;
        inserted = 0;
    }
    news.resize(batches.len(), Vec::new());
    Ok(news)
}

/// The values of one INSERT, owned, so that sqlx need not copy them again
/// on the caller's thread before sending them to the connection's.
fn arguments(
    chunk: &[EventColumns],
    received_at: i64,
) -> Result<SqliteArguments<'static>, StoreError> {
    fn add<T: Encode<'static, Sqlite> + Type<Sqlite> + 'static>(
        args: &mut SqliteArguments<'static>,
        value: T,
    ) -> Result<(), StoreError> {
        args.add(value).map_err(|e| StoreError::InvalidInput {
            field: "email event",
            message: e.to_string(),
        })
    }
    let mut args = SqliteArguments::default();
    args.reserve(chunk.len() * 12, 0);
    for c in chunk {
        add(&mut args, c.provider.clone())?;
        add(&mut args, c.provider_event_id.clone())?;
        add(&mut args, c.event_type.clone())?;
        add(&mut args, c.address.clone())?;
        add(&mut args, c.occurred_at)?;
        add(&mut args, c.message_id.clone())?;
        add(&mut args, c.alert_id.clone())?;
        add(&mut args, c.bounce)?;
        add(&mut args, c.tags.clone())?;
        add(&mut args, c.custom_args.clone())?;
        add(&mut args, c.raw.clone())?;
        add(&mut args, received_at)?;
    }
    Ok(args)
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
