//! The embedded backend: queues and topics in the store's SQLite file.
//!
//! Every write goes through the store's single writer connection, so the
//! writers of this process queue for it instead of spinning in SQLite's busy
//! handler (bus writes take turns at it, see `writer.rs`); multi-statement
//! writes use `BEGIN IMMEDIATE` so writers in other processes on the same
//! file wait on the busy timeout instead of failing when they upgrade a read
//! lock. The hot paths (send, receive, ack) are one statement each.
//!
//! Messages live in one table ordered by `seq`. Grouped messages carry a
//! `held` flag that the schema's triggers keep true for every message of a
//! group but the oldest, so receiving never has to look past blocked groups.
//! A receipt is `<seq>.<random token>`: the token changes on every delivery
//! and on a nack, so an old receipt never matches the new copy. A lease
//! touches no index (see the migration), which keeps receiving cheap.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::time::duration_millis;
use herald_core::{Clock, QueueName, SystemClock, Timestamp, TopicName};
use herald_store::SqliteDb;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Encode, Row, Sqlite, SqliteConnection, Transaction, Type};
use tokio::sync::Notify;
use tokio::time::Instant;

mod dedup;
mod sql;
mod tx;
mod writer;

pub use self::tx::EmbeddedTx;

use self::dedup::{DedupSweep, NewRecord};
use self::sql::{
    ack_all_sql, ack_sql, insert_sql, send_sql, Packed, SendShape, DELETE_SEQS, LEASED_SEQS,
    MOVE_MESSAGES, NEXT_VISIBLE, QUEUES_BY_NAME, QUEUE_BY_NAME, RECEIVE, TOPIC_SUBSCRIPTIONS,
};
use self::writer::{Writer, WriterConn};
use crate::wire::{attributes_json, new_message_id, parse_receipt, receipt, Lease};
use crate::{
    AckOutcome, Attributes, Bus, BusError, BusResult, Committed, DeadLetterInfo, Delivery,
    FilterPolicy, MessageId, OutgoingMessage, PeekedMessage, QueueConfig, QueueInfo, QueueStats,
    Receipt, ReceiveOptions, Subscription, WriteBatch,
};

/// The name errors carry: the engine that failed.
const BACKEND: &str = "sqlite";

/// Most messages one `receive` or `peek` returns.
pub const MAX_RECEIVE: usize = 1000;

/// Rows per multi-row INSERT: well under SQLite's 32766 bound parameters.
const INSERT_CHUNK: usize = 500;

/// Receipts per ack statement.
const ACK_CHUNK: usize = 500;

/// A long poll re-checks at least this often, to see messages that another
/// process wrote to the same file (its sends cannot wake this process).
const RECHECK: Duration = Duration::from_secs(1);

/// Queues and topics in a SQLite file, shared with the store.
pub struct EmbeddedBus {
    db: SqliteDb,
    writer: Writer,
    clock: SystemClock,
    sweep: DedupSweep,
    /// One wake-up per queue name for long polls waiting in this process.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

/// A queue's row: its id in the message table and its settings.
struct QueueRow {
    id: i64,
    name: QueueName,
    config: QueueConfig,
}

impl QueueRow {
    fn dead_letter_queue(&self) -> BusResult<Option<QueueName>> {
        dead_letter_queue(&self.name, &self.config)
    }
}

/// The dead-letter queue in force: the configured one, else `<queue>.dlq`
/// when the queue dead-letters at all.
fn dead_letter_queue(name: &QueueName, config: &QueueConfig) -> BusResult<Option<QueueName>> {
    match (&config.dead_letter_queue, config.max_receives) {
        (Some(dlq), _) => Ok(Some(dlq.clone())),
        (None, 0) => Ok(None),
        (None, _) => Ok(Some(name.default_dead_letter()?)),
    }
}

fn db_err(operation: &'static str) -> impl FnOnce(sqlx::Error) -> BusError {
    move |e| BusError::Backend {
        backend: BACKEND,
        message: format!("{operation}: {e}"),
        source: None,
    }
}

fn corrupt(operation: &'static str, what: impl std::fmt::Display) -> BusError {
    BusError::Backend {
        backend: BACKEND,
        message: format!("{operation}: stored {what} cannot be read back"),
        source: None,
    }
}

fn millis(d: Duration) -> i64 {
    duration_millis(d)
}

fn parse_attributes(operation: &'static str, raw: Option<&str>) -> BusResult<Attributes> {
    match raw {
        None => Ok(Attributes::new()),
        Some(raw) => {
            serde_json::from_str(raw).map_err(|e| corrupt(operation, format!("attributes ({e})")))
        }
    }
}

fn queue_config(operation: &'static str, row: &SqliteRow) -> BusResult<QueueConfig> {
    let get_i64 = |col: &str| row.try_get::<i64, _>(col).map_err(db_err(operation));
    let dead_letter_queue = row
        .try_get::<Option<String>, _>("dead_letter_queue")
        .map_err(db_err(operation))?
        .map(|name| QueueName::parse(name).map_err(|e| corrupt(operation, e)))
        .transpose()?;
    Ok(QueueConfig {
        max_receives: u32::try_from(get_i64("max_receives")?)
            .map_err(|_| corrupt(operation, "max_receives"))?,
        dead_letter_queue,
        dedup_window: Duration::from_millis(get_i64("dedup_window_ms")?.max(0) as u64),
        max_body_bytes: usize::try_from(get_i64("max_body_bytes")?)
            .map_err(|_| corrupt(operation, "max_body_bytes"))?,
    })
}

async fn find_queue(
    conn: &mut SqliteConnection,
    operation: &'static str,
    name: &QueueName,
) -> BusResult<Option<QueueRow>> {
    let row = sqlx::query(QUEUE_BY_NAME)
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    row.map(|row| {
        Ok(QueueRow {
            id: row.try_get("id").map_err(db_err(operation))?,
            name: name.clone(),
            config: queue_config(operation, &row)?,
        })
    })
    .transpose()
}

async fn load_queue(
    conn: &mut SqliteConnection,
    operation: &'static str,
    name: &QueueName,
) -> BusResult<QueueRow> {
    find_queue(conn, operation, name)
        .await?
        .ok_or_else(|| BusError::QueueNotFound(name.clone()))
}

/// The rows of `names`, in their order, read with one statement.
async fn load_queues(
    conn: &mut SqliteConnection,
    operation: &'static str,
    names: &[&QueueName],
) -> BusResult<Vec<QueueRow>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let list = serde_json::to_string(&list).map_err(|e| corrupt(operation, e))?;
    let rows = sqlx::query(QUEUES_BY_NAME)
        .bind(list)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    let mut found: HashMap<String, SqliteRow> = HashMap::with_capacity(rows.len());
    for row in rows {
        found.insert(row.try_get("name").map_err(db_err(operation))?, row);
    }
    names
        .iter()
        .map(|&name| {
            let row = found
                .get(name.as_str())
                .ok_or_else(|| BusError::QueueNotFound(name.clone()))?;
            Ok(QueueRow {
                id: row.try_get("id").map_err(db_err(operation))?,
                name: name.clone(),
                config: queue_config(operation, row)?,
            })
        })
        .collect()
}

async fn queue_exists(
    conn: &mut SqliteConnection,
    operation: &'static str,
    name: &QueueName,
) -> BusResult<bool> {
    Ok(sqlx::query("SELECT 1 FROM bus_queues WHERE name = ?1")
        .bind(name.as_str())
        .fetch_optional(conn)
        .await
        .map_err(db_err(operation))?
        .is_some())
}

async fn check_topic(
    conn: &mut SqliteConnection,
    operation: &'static str,
    topic: &TopicName,
) -> BusResult<()> {
    sqlx::query("SELECT 1 FROM bus_topics WHERE name = ?1")
        .bind(topic.as_str())
        .fetch_optional(conn)
        .await
        .map_err(db_err(operation))?
        .map(|_| ())
        .ok_or_else(|| BusError::TopicNotFound(topic.clone()))
}

/// Creates a dead-letter queue unless it exists; returns its id.
async fn ensure_dead_letter_queue(
    conn: &mut SqliteConnection,
    operation: &'static str,
    dlq: &QueueName,
    source: &QueueConfig,
    now: Timestamp,
) -> BusResult<i64> {
    sqlx::query(
        "INSERT INTO bus_queues \
         (name, max_receives, dead_letter_queue, dedup_window_ms, max_body_bytes, created_at) \
         VALUES (?1, 0, NULL, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
    )
    .bind(dlq.as_str())
    .bind(millis(source.dedup_window))
    .bind(i64::try_from(source.max_body_bytes).unwrap_or(i64::MAX))
    .bind(now.0)
    .execute(&mut *conn)
    .await
    .map_err(db_err(operation))?;
    sqlx::query_scalar("SELECT id FROM bus_queues WHERE name = ?1")
        .bind(dlq.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(operation))
}

/// Messages bound for one queue of a write.
struct Target<'a> {
    queue: &'a QueueRow,
    messages: Vec<&'a OutgoingMessage>,
}

/// Stores each target's messages (dedup keys honoured) with one multi-row
/// statement per chunk, whatever their queues; returns one id per message,
/// per target, in order. The caller owns the transaction.
async fn insert_messages(
    conn: &mut SqliteConnection,
    operation: &'static str,
    targets: &[Target<'_>],
    sweep: &DedupSweep,
    now: Timestamp,
) -> BusResult<Vec<Vec<MessageId>>> {
    for target in targets {
        let limit = target.queue.config.max_body_bytes;
        if let Some(big) = target.messages.iter().find(|m| m.body.len() > limit) {
            return Err(BusError::BodyTooLarge {
                queue: target.queue.name.clone(),
                size: big.body.len(),
                limit,
            });
        }
    }

    let mut ids: Vec<Vec<MessageId>> = targets
        .iter()
        .map(|t| t.messages.iter().map(|_| new_message_id()).collect())
        .collect();
    // (target, message) of every message to store, in order.
    let mut fresh: Vec<(usize, usize)> = Vec::new();
    // Same key twice in one target: the later message takes the first id.
    let mut repeats: Vec<(usize, usize, usize)> = Vec::new();
    // The first message of each key, whose record is claimed.
    let mut claims: Vec<(usize, usize)> = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, m) in target.messages.iter().enumerate() {
            match m.dedup_key.as_deref() {
                None => fresh.push((t, i)),
                Some(key) => match first.get(key) {
                    Some(&earlier) => repeats.push((t, i, earlier)),
                    None => {
                        first.insert(key, i);
                        if !target.queue.config.dedup_window.is_zero() {
                            claims.push((t, i));
                        }
                        fresh.push((t, i));
                    }
                },
            }
        }
    }

    if !claims.is_empty() {
        sweep.sweep(conn, operation, claims.len(), now).await?;
        let records: Vec<NewRecord<'_>> = claims
            .iter()
            .map(|&(t, i)| NewRecord {
                queue_id: targets[t].queue.id,
                key: targets[t].messages[i]
                    .dedup_key
                    .as_deref()
                    .unwrap_or_default(),
                message_id: ids[t][i].0.as_str(),
                expires_at: now.plus(targets[t].queue.config.dedup_window),
            })
            .collect();
        let known = dedup::claim(conn, operation, &records, now).await?;
        if !known.is_empty() {
            let mut taken: HashMap<(usize, usize), MessageId> = HashMap::new();
            for &(t, i) in &claims {
                let key = targets[t].messages[i].dedup_key.clone().unwrap_or_default();
                if let Some(id) = known.get(&(targets[t].queue.id, key)) {
                    taken.insert((t, i), MessageId(id.clone()));
                }
            }
            fresh.retain(|at| !taken.contains_key(at));
            for ((t, i), id) in taken {
                ids[t][i] = id;
            }
        }
    }
    for (t, i, earlier) in repeats {
        ids[t][i] = ids[t][earlier].clone();
    }

    // Each statement's values are copied into it while the statement before
    // it runs on the connection's own thread.
    let chunks: Vec<&[(usize, usize)]> = fresh.chunks(INSERT_CHUNK).collect();
    let Some(&first) = chunks.first() else {
        return Ok(ids);
    };
    let values = |chunk: &[(usize, usize)]| -> BusResult<SqliteArguments<'static>> {
        let mut args = SqliteArguments::default();
        args.reserve(chunk.len() * 7, 0);
        for &(t, i) in chunk {
            let m = targets[t].messages[i];
            let ready_at = m.delay.map_or(now, |d| now.plus(d));
            add(&mut args, targets[t].queue.id)?;
            add(&mut args, now.0)?;
            add(&mut args, ids[t][i].0.clone())?;
            add(&mut args, m.body.to_vec())?;
            add(&mut args, attributes_json(&m.attributes)?)?;
            add(&mut args, m.group.clone())?;
            add(&mut args, ready_at.0)?;
        }
        Ok(args)
    };
    let mut next = values(first)?;
    for (k, chunk) in chunks.iter().enumerate() {
        let sql = insert_sql(chunk.len());
        let current = std::mem::take(&mut next);
        let (done, built) =
            tokio::join!(sqlx::query_with(&sql, current).execute(&mut *conn), async {
                chunks.get(k + 1).map(|c| values(c)).transpose()
            },);
        done.map_err(db_err(operation))?;
        next = built?.unwrap_or_default();
    }
    Ok(ids)
}

/// Adds one value to a statement's arguments.
fn add<T: Encode<'static, Sqlite> + Type<Sqlite> + 'static>(
    args: &mut SqliteArguments<'static>,
    value: T,
) -> BusResult<()> {
    args.add(value).map_err(|e| BusError::InvalidArgument {
        field: "message",
        message: e.to_string(),
    })
}

/// Moves the messages `seqs_json` names to the queue `target_id`, in their
/// order, and deletes the originals. A dead-letter move keeps the delivery
/// history (`keep_history`); a redrive starts it afresh.
async fn move_messages(
    tx: &mut Transaction<'_, Sqlite>,
    operation: &'static str,
    target_id: i64,
    now: Timestamp,
    dead_letter: Option<String>,
    seqs_json: &str,
    keep_history: bool,
) -> BusResult<()> {
    sqlx::query(MOVE_MESSAGES)
        .bind(target_id)
        .bind(now.0)
        .bind(dead_letter)
        .bind(seqs_json)
        .bind(keep_history)
        .execute(&mut **tx)
        .await
        .map_err(db_err(operation))?;
    sqlx::query(DELETE_SEQS)
        .bind(seqs_json)
        .execute(&mut **tx)
        .await
        .map_err(db_err(operation))?;
    Ok(())
}

impl EmbeddedBus {
    /// A bus on an open, migrated store database.
    pub fn new(db: SqliteDb) -> Self {
        Self {
            writer: Writer::new(db.writer.clone()),
            db,
            clock: SystemClock,
            sweep: DedupSweep::default(),
            wakers: Mutex::new(HashMap::new()),
        }
    }

    /// Opens (creating if needed) and migrates the SQLite file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> BusResult<Self> {
        let store_err = |e: herald_store::StoreError| BusError::Backend {
            backend: BACKEND,
            message: e.to_string(),
            source: None,
        };
        let db = SqliteDb::open(path).await.map_err(store_err)?;
        db.migrate().await.map_err(store_err)?;
        Ok(Self::new(db))
    }

    /// The database this bus lives in. Never call the bus while holding a
    /// transaction on `db().writer`: the bus writes through that same single
    /// connection and would wait for it forever.
    pub fn db(&self) -> &SqliteDb {
        &self.db
    }

    /// The store's writer connection, for one bus write.
    async fn writer(&self, operation: &'static str) -> BusResult<WriterConn<'_>> {
        self.writer.acquire().await.map_err(db_err(operation))
    }

    fn waker(&self, queue: &QueueName) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        wakers.entry(queue.as_str().to_owned()).or_default().clone()
    }

    /// Wakes the long polls of this process waiting on `queue`.
    fn wake(&self, queue: &str) {
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = wakers.get(queue) {
            waker.notify_waiters();
        }
    }

    /// One receive attempt without waiting. Each lease is one autocommit
    /// statement; messages it finds past `max_receives` are then moved to
    /// the dead-letter queue. Were the process to die between the two, those
    /// messages would come back when their visibility lapses and be moved
    /// then.
    async fn receive_now(
        &self,
        queue: &QueueName,
        max: usize,
        visibility: Duration,
    ) -> BusResult<Vec<Delivery>> {
        const OP: &str = "receive";
        let now = self.clock.now();
        let until = now.plus(visibility);
        let mut out: Vec<(i64, Delivery)> = Vec::new();
        loop {
            let want = max - out.len();
            let rows = sqlx::query(RECEIVE)
                .bind(queue.as_str())
                .bind(now.0)
                .bind(want as i64)
                .bind(until.0)
                .fetch_all(&mut *self.writer(OP).await?)
                .await
                .map_err(db_err(OP))?;
            let fetched = rows.len();
            let mut over = Vec::new();
            for row in rows {
                let (lease, max_receives, delivery) = decode_delivery(&row)?;
                if max_receives > 0 && i64::from(delivery.receive_count) > max_receives {
                    over.push(lease);
                } else {
                    out.push((lease.seq, delivery));
                }
            }
            if !over.is_empty() {
                self.dead_letter(queue, &over, now).await?;
            }
            if over.is_empty() || fetched < want {
                break;
            }
        }
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// Moves leased messages past `max_receives` to the queue's dead-letter
    /// queue, in one transaction.
    async fn dead_letter(
        &self,
        queue: &QueueName,
        leases: &[Lease],
        now: Timestamp,
    ) -> BusResult<()> {
        const OP: &str = "receive (dead-letter move)";
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        let Some(dlq) = q.dead_letter_queue()? else {
            // max_receives was set to zero since the lease: nothing to move.
            return Ok(());
        };
        let pairs: Vec<(i64, i64)> = leases.iter().map(|l| (l.seq, l.token)).collect();
        let pairs = serde_json::to_string(&pairs).map_err(|e| corrupt(OP, e))?;
        let seqs: Vec<i64> = sqlx::query_scalar(LEASED_SEQS)
            .bind(pairs)
            .bind(q.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if seqs.is_empty() {
            return Ok(());
        }
        let dlq_id = ensure_dead_letter_queue(&mut tx, OP, &dlq, &q.config, now).await?;
        let info = DeadLetterInfo {
            source_queue: queue.to_string(),
            reason: format!("exceeded max_receives ({})", q.config.max_receives),
            moved_at: now,
        };
        let info = serde_json::to_string(&info).map_err(|e| corrupt(OP, e))?;
        let seqs_json = serde_json::to_string(&seqs).map_err(|e| corrupt(OP, e))?;
        move_messages(&mut tx, OP, dlq_id, now, Some(info), &seqs_json, true).await?;
        tx.commit().await.map_err(db_err(OP))?;
        tracing::info!(
            queue = %queue,
            dead_letter_queue = %dlq,
            count = seqs.len(),
            "moved messages past max_receives to the dead-letter queue"
        );
        self.wake(dlq.as_str());
        // Another message of a group may have become its head.
        self.wake(queue.as_str());
        Ok(())
    }

    /// When the queue's next message becomes receivable, if one is waiting
    /// for its delay or visibility; QueueNotFound if there is no such queue.
    async fn next_visible_at(&self, queue: &QueueName) -> BusResult<Option<Timestamp>> {
        let (id, ready, lapse): (Option<i64>, Option<i64>, Option<i64>) =
            sqlx::query_as(NEXT_VISIBLE)
                .bind(queue.as_str())
                .bind(self.clock.now().0)
                .fetch_one(&self.db.reader)
                .await
                .map_err(db_err("receive"))?;
        match id {
            None => Err(BusError::QueueNotFound(queue.clone())),
            Some(_) => Ok(ready.into_iter().chain(lapse).min().map(Timestamp)),
        }
    }

    /// Runs a one-message update by receipt (`?1` queue, `?2` seq, `?3`
    /// token, `?4` a time, `?5` now); a miss is a stale receipt, or an unknown
    /// queue.
    async fn by_receipt(
        &self,
        operation: &'static str,
        sql: &'static str,
        queue: &QueueName,
        receipt: &Receipt,
        at: Timestamp,
    ) -> BusResult<()> {
        let lease = parse_receipt("embedded", receipt)?;
        let done = sqlx::query(sql)
            .bind(queue.as_str())
            .bind(lease.seq)
            .bind(lease.token)
            .bind(at.0)
            .bind(self.clock.now().0)
            .execute(&mut *self.writer(operation).await?)
            .await
            .map_err(db_err(operation))?
            .rows_affected();
        if done == 1 {
            return Ok(());
        }
        self.stale_or_missing(operation, queue, receipt).await
    }

    /// The error for a receipt that matched nothing.
    async fn stale_or_missing<T>(
        &self,
        operation: &'static str,
        queue: &QueueName,
        receipt: &Receipt,
    ) -> BusResult<T> {
        let mut conn = self.db.reader.acquire().await.map_err(db_err(operation))?;
        if queue_exists(&mut conn, operation, queue).await? {
            Err(BusError::StaleReceipt(receipt.clone()))
        } else {
            Err(BusError::QueueNotFound(queue.clone()))
        }
    }

    /// Sends up to one statement's worth of messages without dedup keys:
    /// one autocommit statement that inserts all or nothing.
    async fn send_fast(
        &self,
        queue: &QueueName,
        messages: &[OutgoingMessage],
    ) -> BusResult<Vec<MessageId>> {
        const OP: &str = "send";
        let now = self.clock.now();
        let ids: Vec<MessageId> = messages.iter().map(|_| new_message_id()).collect();
        let largest = messages.iter().map(|m| m.body.len()).max().unwrap_or(0);
        let shape = SendShape {
            delays: messages.iter().any(|m| m.delay.is_some()),
            attributes: messages.iter().any(|m| !m.attributes.is_empty()),
            groups: messages.iter().any(|m| m.group.is_some()),
        };
        let sql = send_sql(messages.len(), shape);
        let mut query = sqlx::query(&sql).bind(now.0);
        if !shape.delays {
            query = query.bind(now.0);
        }
        query = query.bind(now.0).bind(now.0);
        for (m, id) in messages.iter().zip(&ids) {
            query = query.bind(id.0.as_str()).bind(&m.body[..]);
            if shape.delays {
                query = query.bind(m.delay.map_or(now, |d| now.plus(d)).0);
            }
            if shape.attributes {
                query = query.bind(attributes_json(&m.attributes)?);
            }
            if shape.groups {
                query = query.bind(m.group.as_deref());
            }
        }
        let inserted = query
            .bind(queue.as_str())
            .bind(i64::try_from(largest).unwrap_or(i64::MAX))
            .execute(&mut *self.writer(OP).await?)
            .await
            .map_err(db_err(OP))?
            .rows_affected();
        if inserted == messages.len() as u64 {
            return Ok(ids);
        }
        // Nothing was stored: say why.
        let mut conn = self.db.reader.acquire().await.map_err(db_err(OP))?;
        let q = load_queue(&mut conn, OP, queue).await?;
        Err(BusError::BodyTooLarge {
            queue: queue.clone(),
            size: largest,
            limit: q.config.max_body_bytes,
        })
    }
}

/// Decodes a row of [`RECEIVE`]'s RETURNING clause; also returns the
/// queue's max_receives.
fn decode_delivery(row: &SqliteRow) -> BusResult<(Lease, i64, Delivery)> {
    const OP: &str = "receive";
    let text: &str = row.try_get(0).map_err(db_err(OP))?;
    let body: &[u8] = row.try_get(1).map_err(db_err(OP))?;
    let p = Packed::parse(text).ok_or_else(|| corrupt(OP, format!("message row {text:?}")))?;
    let lease = Lease {
        seq: p.seq,
        token: p.token,
        grouped: p.group.is_some(),
    };
    let delivery = Delivery {
        id: MessageId(p.message_id.to_owned()),
        receipt: receipt(p.seq, p.token, lease.grouped),
        body: Bytes::copy_from_slice(body),
        attributes: parse_attributes(OP, p.attributes)?,
        group: p.group.map(str::to_owned),
        receive_count: u32::try_from(p.receive_count).unwrap_or(u32::MAX),
        first_received_at: Timestamp(p.first_received_at),
        sent_at: Timestamp(p.sent_at),
    };
    Ok((lease, p.max_receives, delivery))
}

fn decode_peeked(row: &SqliteRow) -> BusResult<PeekedMessage> {
    const OP: &str = "peek";
    let get = |e| db_err(OP)(e);
    let dead_letter = row
        .try_get::<Option<String>, _>("dead_letter")
        .map_err(get)?
        .map(|raw| {
            serde_json::from_str(&raw).map_err(|e| corrupt(OP, format!("dead-letter info ({e})")))
        })
        .transpose()?;
    let receive_count: i64 = row.try_get("receive_count").map_err(get)?;
    Ok(PeekedMessage {
        id: MessageId(row.try_get("message_id").map_err(get)?),
        body: Bytes::from(row.try_get::<Vec<u8>, _>("body").map_err(get)?),
        attributes: parse_attributes(OP, row.try_get("attributes").map_err(get)?)?,
        group: row.try_get("group_key").map_err(get)?,
        receive_count: u32::try_from(receive_count).unwrap_or(u32::MAX),
        sent_at: Timestamp(row.try_get("sent_at").map_err(get)?),
        visible_at: Timestamp(row.try_get("visible_at").map_err(get)?),
        dead_letter,
    })
}

/// The subscribed queues with the messages each filter lets through (by
/// index), in subscription order; queues that match nothing are left out.
async fn route_to_subscribers(
    conn: &mut SqliteConnection,
    operation: &'static str,
    subscriptions: Vec<(String, String)>,
    messages: &[OutgoingMessage],
) -> BusResult<Vec<(QueueRow, Vec<usize>)>> {
    let mut routed = Vec::new();
    for (queue, filter) in subscriptions {
        let filter: FilterPolicy = serde_json::from_str(&filter)
            .map_err(|e| corrupt(operation, format!("filter ({e})")))?;
        let matching: Vec<usize> = (0..messages.len())
            .filter(|&i| filter.matches(&messages[i].attributes))
            .collect();
        if matching.is_empty() {
            continue;
        }
        let queue = QueueName::parse(queue).map_err(|e| corrupt(operation, e))?;
        routed.push((load_queue(conn, operation, &queue).await?, matching));
    }
    Ok(routed)
}

/// Stores a copy of each message for every subscription of `topic` whose
/// filter lets it through, in the caller's transaction; returns the copies'
/// ids message by message and the queues that got messages (to wake once
/// the caller commits).
async fn publish_in(
    conn: &mut SqliteConnection,
    topic: &TopicName,
    messages: &[OutgoingMessage],
    sweep: &DedupSweep,
    now: Timestamp,
) -> BusResult<(Vec<MessageId>, Vec<QueueName>)> {
    const OP: &str = "publish";
    check_topic(conn, OP, topic).await?;
    let subs: Vec<(String, String)> = sqlx::query_as(TOPIC_SUBSCRIPTIONS)
        .bind(topic.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))?;
    let routed = route_to_subscribers(conn, OP, subs, messages).await?;
    let targets: Vec<Target<'_>> = routed
        .iter()
        .map(|(q, matching)| Target {
            queue: q,
            messages: matching.iter().map(|&i| &messages[i]).collect(),
        })
        .collect();
    let ids = insert_messages(conn, OP, &targets, sweep, now).await?;
    let queues = routed.iter().map(|(q, _)| q.name.clone()).collect();
    Ok((copies_by_message(messages.len(), &routed, ids), queues))
}

/// The ids of a publish's copies, message by message.
fn copies_by_message(
    messages: usize,
    routed: &[(QueueRow, Vec<usize>)],
    ids: Vec<Vec<MessageId>>,
) -> Vec<MessageId> {
    let mut copies: Vec<Vec<MessageId>> = vec![Vec::new(); messages];
    for ((_, matching), ids) in routed.iter().zip(ids) {
        for (&i, id) in matching.iter().zip(ids) {
            copies[i].push(id);
        }
    }
    copies.into_iter().flatten().collect()
}

/// Acks every one of `leased` in the caller's transaction, or fails with
/// the first stale receipt (the caller then rolls back) or QueueNotFound.
async fn ack_all_or_fail(
    tx: &mut SqliteConnection,
    queue: &QueueName,
    leased: &[(Lease, Receipt)],
) -> BusResult<()> {
    const OP: &str = "commit (ack)";
    for chunk in leased.chunks(ACK_CHUNK) {
        let sql = ack_all_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for (lease, _) in chunk {
            query = query.bind(lease.seq).bind(lease.token);
        }
        let acked = query
            .bind(queue.as_str())
            .bind(chunk.len() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?
            .rows_affected();
        if acked == chunk.len() as u64 {
            continue;
        }
        let q = load_queue(tx, OP, queue).await?;
        let pairs: Vec<(i64, i64)> = chunk.iter().map(|(l, _)| (l.seq, l.token)).collect();
        let pairs = serde_json::to_string(&pairs).map_err(|e| corrupt(OP, e))?;
        let current: HashSet<i64> = sqlx::query_scalar(LEASED_SEQS)
            .bind(pairs)
            .bind(q.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?
            .into_iter()
            .collect();
        let stale = chunk
            .iter()
            .find(|(l, _)| !current.contains(&l.seq))
            .map_or_else(|| chunk[0].1.clone(), |(_, r)| r.clone());
        return Err(BusError::StaleReceipt(stale));
    }
    Ok(())
}

async fn begin<'c>(
    conn: &'c mut SqliteConnection,
    operation: &'static str,
) -> BusResult<Transaction<'c, Sqlite>> {
    sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE")
        .await
        .map_err(db_err(operation))
}

fn check_max(max: usize) -> BusResult<()> {
    if (1..=MAX_RECEIVE).contains(&max) {
        Ok(())
    } else {
        Err(BusError::InvalidArgument {
            field: "max",
            message: format!("must be between 1 and {MAX_RECEIVE}, got {max}"),
        })
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> BusResult<()> {
        sqlx::query("SELECT 1 FROM bus_queues LIMIT 1")
            .fetch_optional(&self.db.reader)
            .await
            .map_err(db_err("ping"))?;
        Ok(())
    }

    async fn ensure_queue(&self, name: &QueueName, config: QueueConfig) -> BusResult<()> {
        const OP: &str = "ensure_queue";
        if config.dead_letter_queue.as_ref() == Some(name) {
            return Err(BusError::InvalidArgument {
                field: "dead_letter_queue",
                message: format!("queue {name} cannot be its own dead-letter queue"),
            });
        }
        if config.max_body_bytes == 0 {
            return Err(BusError::InvalidArgument {
                field: "max_body_bytes",
                message: "must be at least 1".into(),
            });
        }
        let dlq = dead_letter_queue(name, &config)?;
        let now = self.clock.now();
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        sqlx::query(
            "INSERT INTO bus_queues \
             (name, max_receives, dead_letter_queue, dedup_window_ms, max_body_bytes, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (name) DO UPDATE SET max_receives = excluded.max_receives, \
                 dead_letter_queue = excluded.dead_letter_queue, \
                 dedup_window_ms = excluded.dedup_window_ms, \
                 max_body_bytes = excluded.max_body_bytes",
        )
        .bind(name.as_str())
        .bind(i64::from(config.max_receives))
        .bind(config.dead_letter_queue.as_ref().map(QueueName::as_str))
        .bind(millis(config.dedup_window))
        .bind(i64::try_from(config.max_body_bytes).unwrap_or(i64::MAX))
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        if let Some(dlq) = dlq {
            ensure_dead_letter_queue(&mut tx, OP, &dlq, &config, now).await?;
        }
        tx.commit().await.map_err(db_err(OP))
    }

    async fn delete_queue(&self, name: &QueueName) -> BusResult<()> {
        const OP: &str = "delete_queue";
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        let q = load_queue(&mut tx, OP, name).await?;
        sqlx::query("DELETE FROM bus_messages WHERE queue_id = ?1")
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        // Dedup records have no foreign key to cascade (see dedup.rs).
        sqlx::query("DELETE FROM bus_dedup WHERE queue_id = ?1")
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        sqlx::query("DELETE FROM bus_queues WHERE id = ?1")
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn list_queues(&self) -> BusResult<Vec<QueueInfo>> {
        const OP: &str = "list_queues";
        let rows = sqlx::query(
            "SELECT name, max_receives, dead_letter_queue, dedup_window_ms, max_body_bytes \
             FROM bus_queues ORDER BY name",
        )
        .fetch_all(&self.db.reader)
        .await
        .map_err(db_err(OP))?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name").map_err(db_err(OP))?;
                Ok(QueueInfo {
                    name: QueueName::parse(name).map_err(|e| corrupt(OP, e))?,
                    config: queue_config(OP, row)?,
                })
            })
            .collect()
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> BusResult<Vec<MessageId>> {
        const OP: &str = "send";
        if messages.is_empty() {
            let mut conn = self.db.reader.acquire().await.map_err(db_err(OP))?;
            load_queue(&mut conn, OP, queue).await?;
            return Ok(Vec::new());
        }
        let ids =
            if messages.len() <= INSERT_CHUNK && messages.iter().all(|m| m.dedup_key.is_none()) {
                self.send_fast(queue, &messages).await?
            } else {
                let now = self.clock.now();
                let mut conn = self.writer(OP).await?;
                let mut tx = begin(&mut conn, OP).await?;
                let q = load_queue(&mut tx, OP, queue).await?;
                let target = Target {
                    queue: &q,
                    messages: messages.iter().collect(),
                };
                let ids = insert_messages(&mut tx, OP, &[target], &self.sweep, now).await?;
                tx.commit().await.map_err(db_err(OP))?;
                ids.into_iter().flatten().collect()
            };
        self.wake(queue.as_str());
        Ok(ids)
    }

    async fn commit(&self, batch: WriteBatch) -> BusResult<Committed> {
        const OP: &str = "commit";
        let (sends, acks) = batch.into_parts();
        // Every receipt is read before anything is written.
        let mut leases: Vec<(QueueName, Vec<(Lease, Receipt)>)> = Vec::with_capacity(acks.len());
        for (queue, receipts) in acks {
            let mut unique = HashSet::with_capacity(receipts.len());
            let mut parsed = Vec::with_capacity(receipts.len());
            for r in receipts {
                let lease = parse_receipt("embedded", &r)?;
                if unique.insert((lease.seq, lease.token)) {
                    parsed.push((lease, r));
                }
            }
            leases.push((queue, parsed));
        }
        let now = self.clock.now();
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        let names: Vec<&QueueName> = sends.iter().map(|(q, _)| q).collect();
        let rows = load_queues(&mut tx, OP, &names).await?;
        let targets: Vec<Target<'_>> = rows
            .iter()
            .zip(&sends)
            .map(|(queue, (_, messages))| Target {
                queue,
                messages: messages.iter().collect(),
            })
            .collect();
        let ids = insert_messages(&mut tx, OP, &targets, &self.sweep, now).await?;
        for (queue, leased) in &leases {
            ack_all_or_fail(&mut tx, queue, leased).await?;
        }
        tx.commit().await.map_err(db_err(OP))?;
        for (queue, messages) in &sends {
            if !messages.is_empty() {
                self.wake(queue.as_str());
            }
        }
        for (queue, leased) in &leases {
            if leased.iter().any(|(l, _)| l.grouped) {
                // The next message of an acked group just became receivable.
                self.wake(queue.as_str());
            }
        }
        Ok(sends.into_iter().map(|(q, _)| q).zip(ids).collect())
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> BusResult<Vec<Delivery>> {
        check_max(options.max)?;
        let started = Instant::now();
        let waker = self.waker(queue);
        loop {
            // Registered before looking, so a send that lands between the
            // look and the sleep still wakes this poll.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self
                .receive_now(queue, options.max, options.visibility)
                .await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let next = self.next_visible_at(queue).await?;
            let remaining = options.wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Ok(got);
            }
            let mut nap = remaining.min(RECHECK);
            if let Some(at) = next {
                let until = at.since(self.clock.now()) + Duration::from_millis(1);
                nap = nap.min(until);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn ack(&self, queue: &QueueName, receipt: &Receipt) -> BusResult<()> {
        const OP: &str = "ack";
        let mut outcomes = self.ack_batch(queue, std::slice::from_ref(receipt)).await?;
        outcomes
            .pop()
            .unwrap_or_else(|| Err(corrupt(OP, "ack outcome")))
    }

    async fn ack_batch(
        &self,
        queue: &QueueName,
        receipts: &[Receipt],
    ) -> BusResult<Vec<AckOutcome>> {
        const OP: &str = "ack";
        let parsed: Vec<BusResult<Lease>> = receipts
            .iter()
            .map(|r| parse_receipt("embedded", r))
            .collect();
        let mut unique = HashSet::with_capacity(receipts.len());
        let pairs: Vec<(i64, i64)> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|l| (l.seq, l.token))
            .filter(|pair| unique.insert(*pair))
            .collect();
        let mut deleted: HashSet<(i64, i64)> = HashSet::with_capacity(pairs.len());
        for chunk in pairs.chunks(ACK_CHUNK) {
            // Optimistic: every receipt is current, and nothing comes back.
            let sql = ack_all_sql(chunk.len());
            let mut query = sqlx::query(&sql);
            for &(seq, token) in chunk {
                query = query.bind(seq).bind(token);
            }
            let all = query
                .bind(queue.as_str())
                .bind(chunk.len() as i64)
                .execute(&mut *self.writer(OP).await?)
                .await
                .map_err(db_err(OP))?
                .rows_affected();
            if all == chunk.len() as u64 {
                deleted.extend(chunk.iter().copied());
                continue;
            }
            // Some receipt is stale: ack the current ones and learn which.
            let sql = ack_sql(chunk.len());
            let mut query = sqlx::query(&sql);
            for &(seq, token) in chunk {
                query = query.bind(seq).bind(token);
            }
            let rows = query
                .bind(queue.as_str())
                .fetch_all(&mut *self.writer(OP).await?)
                .await
                .map_err(db_err(OP))?;
            for row in rows {
                let seq: i64 = row.try_get("seq").map_err(db_err(OP))?;
                let token: i64 = row.try_get("receipt").map_err(db_err(OP))?;
                deleted.insert((seq, token));
            }
        }
        let freed_group = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .any(|l| l.grouped && deleted.contains(&(l.seq, l.token)));
        if freed_group {
            // The next message of an acked group just became receivable.
            self.wake(queue.as_str());
        }
        if deleted.len() < pairs.len() {
            let mut conn = self.db.reader.acquire().await.map_err(db_err(OP))?;
            if !queue_exists(&mut conn, OP, queue).await? {
                return Err(BusError::QueueNotFound(queue.clone()));
            }
        }
        Ok(parsed
            .into_iter()
            .zip(receipts)
            .map(|(p, r)| match p {
                Ok(l) if deleted.remove(&(l.seq, l.token)) => Ok(()),
                Ok(_) => Err(BusError::StaleReceipt(r.clone())),
                Err(e) => Err(e),
            })
            .collect())
    }

    async fn nack(&self, queue: &QueueName, receipt: &Receipt, delay: Duration) -> BusResult<()> {
        let ready_at = self.clock.now().plus(delay);
        self.by_receipt(
            "nack",
            "UPDATE bus_messages SET ready_at = ?4, lease_until = ?5, receipt = random() \
             WHERE seq = ?2 AND receipt = ?3 \
               AND queue_id = (SELECT id FROM bus_queues WHERE name = ?1)",
            queue,
            receipt,
            ready_at,
        )
        .await?;
        self.wake(queue.as_str());
        Ok(())
    }

    async fn extend(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        visibility: Duration,
    ) -> BusResult<()> {
        let lease_until = self.clock.now().plus(visibility);
        self.by_receipt(
            "extend",
            "UPDATE bus_messages SET lease_until = ?4 \
             WHERE seq = ?2 AND receipt = ?3 \
               AND queue_id = (SELECT id FROM bus_queues WHERE name = ?1)",
            queue,
            receipt,
            lease_until,
        )
        .await
    }

    async fn redrive(
        &self,
        dead_letter: &QueueName,
        to: &QueueName,
        limit: Option<u64>,
    ) -> BusResult<u64> {
        const OP: &str = "redrive";
        let now = self.clock.now();
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        let from = load_queue(&mut tx, OP, dead_letter).await?;
        let target = load_queue(&mut tx, OP, to).await?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM bus_messages WHERE queue_id = ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(from.id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        if seqs.is_empty() {
            return Ok(0);
        }
        let seqs_json = serde_json::to_string(&seqs).map_err(|e| corrupt(OP, e))?;
        move_messages(&mut tx, OP, target.id, now, None, &seqs_json, false).await?;
        tx.commit().await.map_err(db_err(OP))?;
        self.wake(to.as_str());
        Ok(seqs.len() as u64)
    }

    async fn purge(&self, queue: &QueueName) -> BusResult<u64> {
        const OP: &str = "purge";
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        let purged = sqlx::query("DELETE FROM bus_messages WHERE queue_id = ?1")
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?
            .rows_affected();
        tx.commit().await.map_err(db_err(OP))?;
        Ok(purged)
    }

    async fn peek(&self, queue: &QueueName, max: usize) -> BusResult<Vec<PeekedMessage>> {
        const OP: &str = "peek";
        check_max(max)?;
        let mut conn = self.db.reader.acquire().await.map_err(db_err(OP))?;
        let q = load_queue(&mut conn, OP, queue).await?;
        let rows = sqlx::query(
            "SELECT message_id, body, attributes, group_key, receive_count, sent_at, \
                 MAX(ready_at, lease_until) AS visible_at, dead_letter \
             FROM bus_messages WHERE queue_id = ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(q.id)
        .bind(max as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(OP))?;
        rows.iter().map(decode_peeked).collect()
    }

    async fn stats(&self, queue: &QueueName) -> BusResult<QueueStats> {
        const OP: &str = "stats";
        let now = self.clock.now();
        let mut tx = self.db.reader.begin().await.map_err(db_err(OP))?;
        let q = load_queue(&mut tx, OP, queue).await?;
        let (visible, in_flight, delayed, oldest): (i64, i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT COALESCE(SUM(ready_at <= ?2 AND lease_until <= ?2), 0), \
                 COALESCE(SUM(lease_until > ?2), 0), \
                 COALESCE(SUM(ready_at > ?2 AND lease_until <= ?2), 0), \
                 MIN(sent_at) \
             FROM bus_messages WHERE queue_id = ?1",
        )
        .bind(q.id)
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        let dead_lettered: i64 = match q.dead_letter_queue()? {
            None => 0,
            Some(dlq) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM bus_messages \
                 WHERE queue_id = (SELECT id FROM bus_queues WHERE name = ?1)",
            )
            .bind(dlq.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err(OP))?,
        };
        tx.commit().await.map_err(db_err(OP))?;
        let count = |n: i64| n.max(0) as u64;
        Ok(QueueStats {
            visible: count(visible),
            in_flight: count(in_flight),
            delayed: count(delayed),
            dead_lettered: count(dead_lettered),
            oldest_age: oldest.map(|sent| now.since(Timestamp(sent))),
        })
    }

    async fn ensure_topic(&self, topic: &TopicName) -> BusResult<()> {
        sqlx::query(
            "INSERT INTO bus_topics (name, created_at) VALUES (?1, ?2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(topic.as_str())
        .bind(self.clock.now().0)
        .execute(&mut *self.writer("ensure_topic").await?)
        .await
        .map_err(db_err("ensure_topic"))?;
        Ok(())
    }

    async fn subscribe(&self, subscription: Subscription) -> BusResult<()> {
        const OP: &str = "subscribe";
        let filter =
            serde_json::to_string(&subscription.filter).map_err(|e| BusError::InvalidArgument {
                field: "filter",
                message: e.to_string(),
            })?;
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        check_topic(&mut tx, OP, &subscription.topic).await?;
        let q = load_queue(&mut tx, OP, &subscription.queue).await?;
        sqlx::query(
            "INSERT INTO bus_subscriptions (topic, queue_id, filter) VALUES (?1, ?2, ?3) \
             ON CONFLICT (topic, queue_id) DO UPDATE SET filter = excluded.filter",
        )
        .bind(subscription.topic.as_str())
        .bind(q.id)
        .bind(filter)
        .execute(&mut *tx)
        .await
        .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn unsubscribe(&self, topic: &TopicName, queue: &QueueName) -> BusResult<()> {
        const OP: &str = "unsubscribe";
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        check_topic(&mut tx, OP, topic).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        sqlx::query("DELETE FROM bus_subscriptions WHERE topic = ?1 AND queue_id = ?2")
            .bind(topic.as_str())
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn subscriptions(&self, topic: &TopicName) -> BusResult<Vec<Subscription>> {
        const OP: &str = "subscriptions";
        let mut conn = self.db.reader.acquire().await.map_err(db_err(OP))?;
        check_topic(&mut conn, OP, topic).await?;
        let rows: Vec<(String, String)> = sqlx::query_as(TOPIC_SUBSCRIPTIONS)
            .bind(topic.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        rows.into_iter()
            .map(|(queue, filter)| {
                Ok(Subscription {
                    topic: topic.clone(),
                    queue: QueueName::parse(queue).map_err(|e| corrupt(OP, e))?,
                    filter: serde_json::from_str(&filter)
                        .map_err(|e| corrupt(OP, format!("filter ({e})")))?,
                })
            })
            .collect()
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<OutgoingMessage>,
    ) -> BusResult<Vec<MessageId>> {
        const OP: &str = "publish";
        let now = self.clock.now();
        let mut conn = self.writer(OP).await?;
        let mut tx = begin(&mut conn, OP).await?;
        let (copies, queues) = publish_in(&mut tx, topic, &messages, &self.sweep, now).await?;
        tx.commit().await.map_err(db_err(OP))?;
        for queue in &queues {
            self.wake(queue.as_str());
        }
        Ok(copies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_reject_forgeries() {
        for (seq, token) in [(1, 0), (i64::MAX, -1), (42, i64::MIN), (7, 123_456_789)] {
            for grouped in [false, true] {
                let lease = parse_receipt("embedded", &receipt(seq, token, grouped)).unwrap();
                assert_eq!(
                    lease,
                    Lease {
                        seq,
                        token,
                        grouped
                    }
                );
            }
        }
        for bad in [
            "",
            "12",
            "x.1",
            "1.zz",
            "1.2.3",
            "1.2.g.g",
            "1.123456789abcdef01",
        ] {
            let err = parse_receipt("embedded", &Receipt(bad.into())).unwrap_err();
            assert!(
                matches!(
                    err,
                    BusError::InvalidArgument {
                        field: "receipt",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_poll_sees_a_send_from_another_process() {
        // Two buses on one file stand for two processes: a send through one
        // cannot notify the other, whose poll must find it on its own.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let here = EmbeddedBus::open(&path).await.unwrap();
        let there = EmbeddedBus::open(&path).await.unwrap();
        let q = QueueName::parse("shared").unwrap();
        here.ensure_queue(&q, QueueConfig::default()).await.unwrap();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            there.send(&q, OutgoingMessage::new("hello")).await.unwrap();
        });
        let started = std::time::Instant::now();
        let got = here
            .receive(
                &QueueName::parse("shared").unwrap(),
                ReceiveOptions {
                    max: 1,
                    wait: Duration::from_secs(10),
                    visibility: Duration::from_secs(30),
                },
            )
            .await
            .unwrap();
        sender.await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn many_leased_messages_do_not_hide_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path().join("h.db")).await.unwrap();
        let q = QueueName::parse("q").unwrap();
        bus.ensure_queue(&q, QueueConfig::default()).await.unwrap();
        let batch = |n| vec![OutgoingMessage::new("m"); n];
        bus.send_batch(&q, batch(450)).await.unwrap();
        let lease = ReceiveOptions {
            max: 1000,
            wait: Duration::ZERO,
            visibility: Duration::from_secs(60),
        };
        assert_eq!(bus.receive(&q, lease).await.unwrap().len(), 450);
        bus.send_batch(&q, batch(5)).await.unwrap();
        let rest = bus.receive(&q, lease).await.unwrap();
        assert_eq!(rest.len(), 5, "found behind the leased ones");
        let stats = bus.stats(&q).await.unwrap();
        assert_eq!((stats.visible, stats.in_flight), (0, 455));
    }

    async fn plan(bus: &EmbeddedBus, sql: &str) -> Vec<String> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&bus.db.writer)
                .await
                .unwrap();
        rows.into_iter().map(|row| row.3).collect()
    }

    #[tokio::test]
    async fn hot_statements_use_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path().join("h.db")).await.unwrap();
        let receive = plan(&bus, RECEIVE).await;
        assert!(
            receive
                .iter()
                .any(|step| step.contains("bus_messages_ready")),
            "{receive:?}"
        );
        assert!(
            !receive.iter().any(|step| step.contains("TEMP B-TREE")),
            "{receive:?}"
        );
        for ack in [ack_sql(3), ack_all_sql(3)] {
            let steps = plan(&bus, &ack).await;
            assert!(
                !steps
                    .iter()
                    .any(|step| step.starts_with("SCAN bus_messages")
                        || step.starts_with("SCAN m")
                        || step.contains("bus_messages_ready")),
                "ack must look messages up by seq: {steps:?}"
            );
        }
    }
}
