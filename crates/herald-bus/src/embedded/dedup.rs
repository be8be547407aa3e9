//! Dedup records of the embedded bus.
//!
//! A record is one row of a `WITHOUT ROWID` table keyed by (queue, key):
//! one B-tree insert, against three for a rowid table with a primary key
//! and an expiry index, and no foreign-key probe (delete_queue removes a
//! queue's records itself). A send's records go in with one plain
//! multi-row INSERT, since the keys of a batch are nearly always new; only
//! when that insert meets a record already there does the send look up
//! which keys are known and upsert the rest (expired records are
//! overwritten, live ones decide the message's id).
//!
//! Expired records are found without an index on their expiry:
//! [`DedupSweep`] walks the table in key order, a stretch per write, and
//! deletes the expired records of the stretch.

use std::collections::HashMap;
use std::sync::Mutex;

use herald_core::Timestamp;
use sqlx::SqliteConnection;

use super::{corrupt, db_err};
use crate::BusResult;

/// Records per INSERT: four parameters each, well under SQLite's bound.
const CHUNK: usize = 500;

/// Records each write examines at least, so small sends still sweep.
const SWEEP_MIN: usize = 1000;

/// A write adding n records examines this many times n: sweeping faster
/// than records are added keeps the table within about twice its live
/// records.
const SWEEP_FACTOR: usize = 2;

/// One record to write: which queue, its key, the id of the message that
/// took it, and when it expires.
#[derive(Debug, Clone, Copy)]
pub(super) struct NewRecord<'a> {
    pub queue_id: i64,
    pub key: &'a str,
    pub message_id: &'a str,
    pub expires_at: Timestamp,
}

/// Where the sweep of expired records goes on: the first (queue id, key)
/// not yet examined in this round, `None` for the start of the table.
#[derive(Debug, Default)]
pub(super) struct DedupSweep {
    next: Mutex<Option<(i64, String)>>,
}

impl DedupSweep {
    fn next(&self) -> std::sync::MutexGuard<'_, Option<(i64, String)>> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the expired records among the next stretch of the table, for
    /// a write about to add `adding` records.
    pub async fn sweep(
        &self,
        conn: &mut SqliteConnection,
        operation: &'static str,
        adding: usize,
        now: Timestamp,
    ) -> BusResult<()> {
        let stretch = (adding * SWEEP_FACTOR).max(SWEEP_MIN);
        let (from_queue, from_key) = self.next().clone().unwrap_or((i64::MIN, String::new()));
        let end: Option<(i64, String)> = sqlx::query_as(
            "SELECT queue_id, dedup_key FROM bus_dedup \
             WHERE (queue_id, dedup_key) >= (?1, ?2) \
             ORDER BY queue_id, dedup_key LIMIT 1 OFFSET ?3",
        )
        .bind(from_queue)
        .bind(&from_key)
        .bind(i64::try_from(stretch).unwrap_or(i64::MAX))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err(operation))?;
        let delete = match &end {
            Some((end_queue, end_key)) => sqlx::query(
                "DELETE FROM bus_dedup WHERE (queue_id, dedup_key) >= (?1, ?2) \
                 AND (queue_id, dedup_key) < (?4, ?5) AND expires_at <= ?3",
            )
            .bind(from_queue)
            .bind(&from_key)
            .bind(now.0)
            .bind(end_queue)
            .bind(end_key),
            None => sqlx::query(
                "DELETE FROM bus_dedup WHERE (queue_id, dedup_key) >= (?1, ?2) \
                 AND expires_at <= ?3",
            )
            .bind(from_queue)
            .bind(&from_key)
            .bind(now.0),
        };
        delete
            .execute(&mut *conn)
            .await
            .map_err(db_err(operation))?;
        *self.next() = end;
        Ok(())
    }
}

/// Writes `records` (distinct (queue, key) pairs) unless a live record
/// holds the key; returns, for the keys that had one, the id it recorded,
/// by (queue id, key). The caller holds the write transaction.
pub(super) async fn claim(
    conn: &mut SqliteConnection,
    operation: &'static str,
    records: &[NewRecord<'_>],
    now: Timestamp,
) -> BusResult<HashMap<(i64, String), String>> {
    let mut known = HashMap::new();
    for chunk in records.chunks(CHUNK) {
        let sql = insert_sql(chunk.len(), false);
        match bind_records(sqlx::query(&sql), chunk)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => continue,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // The failed statement left nothing behind; the transaction
                // goes on.
            }
            Err(e) => return Err(db_err(operation)(e)),
        }
        let live = live_records(conn, operation, chunk, now).await?;
        let fresh: Vec<NewRecord<'_>> = chunk
            .iter()
            .filter(|r| !live.contains_key(&(r.queue_id, r.key.to_owned())))
            .copied()
            .collect();
        if !fresh.is_empty() {
            // What is left in the way has expired: overwrite it.
            let sql = insert_sql(fresh.len(), true);
            bind_records(sqlx::query(&sql), &fresh)
                .execute(&mut *conn)
                .await
                .map_err(db_err(operation))?;
        }
        known.extend(live);
    }
    Ok(known)
}

/// The live records among `records`' keys: (queue id, key) → message id.
async fn live_records(
    conn: &mut SqliteConnection,
    operation: &'static str,
    records: &[NewRecord<'_>],
    now: Timestamp,
) -> BusResult<HashMap<(i64, String), String>> {
    let keys: Vec<(i64, &str)> = records.iter().map(|r| (r.queue_id, r.key)).collect();
    let keys = serde_json::to_string(&keys).map_err(|e| corrupt(operation, e))?;
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT d.queue_id, d.dedup_key, d.message_id FROM json_each(?1) AS j \
         JOIN bus_dedup AS d ON d.queue_id = j.value ->> 0 AND d.dedup_key = j.value ->> 1 \
         WHERE d.expires_at > ?2",
    )
    .bind(keys)
    .bind(now.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err(operation))?;
    Ok(rows
        .into_iter()
        .map(|(queue_id, key, id)| ((queue_id, key), id))
        .collect())
}

/// A multi-row INSERT of `rows` records, four anonymous parameters each;
/// `overwrite` replaces the records in the way.
fn insert_sql(rows: usize, overwrite: bool) -> String {
    let mut sql = String::with_capacity(120 + rows * 14);
    sql.push_str("INSERT INTO bus_dedup (queue_id, dedup_key, message_id, expires_at) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?)");
    }
    if overwrite {
        sql.push_str(
            " ON CONFLICT (queue_id, dedup_key) DO UPDATE \
             SET message_id = excluded.message_id, expires_at = excluded.expires_at",
        );
    }
    sql
}

fn bind_records<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    records: &[NewRecord<'q>],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for r in records {
        query = query
            .bind(r.queue_id)
            .bind(r.key)
            .bind(r.message_id)
            .bind(r.expires_at.0);
    }
    query
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::{Clock, QueueName, SystemClock};

    use super::*;
    use crate::{Bus, EmbeddedBus, OutgoingMessage, QueueConfig};

    async fn records(bus: &EmbeddedBus) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM bus_dedup")
            .fetch_one(&bus.db().reader)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn later_keyed_sends_sweep_expired_records() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path().join("d.db")).await.unwrap();
        let short = QueueName::parse("short").unwrap();
        let long = QueueName::parse("long").unwrap();
        let brief = QueueConfig {
            dedup_window: Duration::from_millis(50),
            ..QueueConfig::default()
        };
        bus.ensure_queue(&short, brief).await.unwrap();
        bus.ensure_queue(&long, QueueConfig::default())
            .await
            .unwrap();
        let keyed = |n: usize| {
            (0..n)
                .map(|i| OutgoingMessage::new("m").dedup_key(format!("k{i}")))
                .collect::<Vec<_>>()
        };
        bus.send_batch(&short, keyed(1500)).await.unwrap();
        bus.send_batch(&long, keyed(10)).await.unwrap();
        assert_eq!(records(&bus).await, 1510);
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Each keyed send examines a stretch of at least SWEEP_MIN records;
        // two go round the whole table.
        bus.send(&long, OutgoingMessage::new("m").dedup_key("x"))
            .await
            .unwrap();
        bus.send(&long, OutgoingMessage::new("m").dedup_key("y"))
            .await
            .unwrap();
        assert_eq!(records(&bus).await, 12, "only the live records are left");
    }

    #[tokio::test]
    async fn claim_overwrites_expired_records_and_reports_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path().join("d.db")).await.unwrap();
        let now = SystemClock.now();
        let mut conn = bus.db().writer.acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO bus_dedup (queue_id, dedup_key, message_id, expires_at) \
             VALUES (1, 'live', 'old-live', ?1), (1, 'expired', 'old-expired', ?2)",
        )
        .bind(now.0 + 60_000)
        .bind(now.0 - 1)
        .execute(&mut *conn)
        .await
        .unwrap();
        let record = |key, message_id| NewRecord {
            queue_id: 1,
            key,
            message_id,
            expires_at: Timestamp(now.0 + 60_000),
        };
        // More than one chunk, the conflicts in the second.
        let names: Vec<String> = (0..CHUNK + 10).map(|i| format!("new{i}")).collect();
        let mut batch: Vec<NewRecord<'_>> = names.iter().map(|n| record(n, "id-new")).collect();
        batch.push(record("live", "id-live"));
        batch.push(record("expired", "id-expired"));
        let known = claim(&mut conn, "test", &batch, now).await.unwrap();
        assert_eq!(
            known,
            HashMap::from([((1, "live".to_owned()), "old-live".to_owned())])
        );
        let ids: Vec<(String, String)> = sqlx::query_as(
            "SELECT dedup_key, message_id FROM bus_dedup \
             WHERE dedup_key IN ('live', 'expired') ORDER BY dedup_key",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            ids,
            [
                ("expired".to_owned(), "id-expired".to_owned()),
                ("live".to_owned(), "old-live".to_owned())
            ]
        );
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bus_dedup")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(total as usize, CHUNK + 12);
    }

    #[test]
    fn inserts_bind_four_anonymous_parameters_a_row() {
        let plain = insert_sql(3, false);
        assert_eq!(plain.matches("(?, ?, ?, ?)").count(), 3);
        assert!(!plain.contains("ON CONFLICT"));
        assert!(insert_sql(1, true).contains("DO UPDATE"));
    }
}
