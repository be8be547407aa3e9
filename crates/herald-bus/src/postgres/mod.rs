//! The PostgreSQL backend: queues and topics in the store's PostgreSQL
//! database, so a distributed Herald needs PostgreSQL alone. Any number of
//! processes may share the bus; they coordinate only through the database.
//!
//! The design follows the embedded backend (same table shapes, same receipt
//! format, same hot paths of one statement each) and differs where many
//! writers at once demand it:
//!
//! - Receive claims rows with `FOR UPDATE SKIP LOCKED`, so concurrent
//!   receivers skip each other's rows instead of queueing behind them.
//! - Groups keep the embedded backend's `held` flag (only a group's oldest
//!   message is receivable), maintained by triggers. Every transaction that
//!   adds a message to a group or removes one holds that group's advisory
//!   lock until it commits, so a flag is never computed from a state another
//!   transaction is still changing; transactions that touch several groups
//!   lock them all first, in one global order (see the migration).
//! - Locks are always taken in the order group locks, then dedup records,
//!   then message rows, so no two bus transactions wait on each other in a
//!   cycle.
//! - Long polls sleep until a NOTIFY on the bus channel names their queue
//!   (sent in the same transaction as the write, so it arrives only once the
//!   write is visible), until the next delayed or leased message is due, or
//!   at most [`RECHECK`] in case a notification was lost.
//! - Times come from the database's clock, so hosts with skewed clocks agree.
//! - A lease commits without waiting for its WAL flush (see `bus_receive` in
//!   the migration): losing one to a database crash only means one more
//!   delivery.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::time::duration_millis;
use herald_core::{QueueName, Timestamp, TopicName};
use herald_store::PgDb;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod listener;
mod sql;
mod tx;

pub use self::tx::PostgresTx;

use self::listener::Wakers;
use self::sql::{
    ACK, CLAIM_DEDUP_KEYS, COPY_MESSAGES, DEDUP_RECORDS, DELETE_LOCKED_MESSAGES, DELETE_SEQS,
    EXTEND, INSERT_DEAD_LETTER_QUEUE, INSERT_MESSAGES, LIST_QUEUES, LOCK_GROUPS,
    LOCK_GROUPS_OF_COMMIT, LOCK_GROUPS_OF_MOVE, LOCK_GROUPS_OF_QUEUE, LOCK_GROUPS_OF_SEQS,
    LOCK_LEASED, LOCK_SEQS, NACK, NEXT_VISIBLE, NOTIFY_QUEUES, OLDEST_SEQS, PEEK, PRUNE_DEDUP,
    QUEUE_BY_NAME, QUEUE_ID, RECEIVE, SEND, STATS, TOPIC_SUBSCRIPTIONS, UPSERT_QUEUE,
};
use crate::embedded::MAX_RECEIVE;
use crate::wire::{attributes_json, new_message_id, parse_receipt, receipt, Lease};
use crate::{
    AckOutcome, Attributes, Bus, BusError, BusResult, Committed, DeadLetterInfo, Delivery,
    FilterPolicy, MessageId, OutgoingMessage, PeekedMessage, QueueConfig, QueueInfo, QueueStats,
    Receipt, ReceiveOptions, Subscription, WriteBatch,
};

/// The name errors carry: the engine that failed.
const BACKEND: &str = "postgres";

/// A long poll re-checks at least this often, in case a notification was
/// lost while the listening connection was down.
const RECHECK: Duration = Duration::from_secs(5);

/// Expired dedup records removed per send with dedup keys, so clean-up cost
/// stays bounded.
const DEDUP_PRUNE: i64 = 1000;

/// The longest delay or visibility, in ms: millions of years, and small
/// enough that adding it to the clock cannot overflow a BIGINT.
const MAX_SPAN_MS: i64 = i64::MAX / 4;

/// Queues and topics in a PostgreSQL database, shared with the store.
pub struct PostgresBus {
    db: PgDb,
    wakers: Arc<Wakers>,
    /// Turns notifications into wake-ups; stopped when the bus is dropped.
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for PostgresBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBus").finish_non_exhaustive()
    }
}

impl Drop for PostgresBus {
    fn drop(&mut self) {
        self.listener.abort();
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
        source: Some(Box::new(e)),
    }
}

fn corrupt(operation: &'static str, what: impl std::fmt::Display) -> BusError {
    BusError::Backend {
        backend: BACKEND,
        message: format!("{operation}: stored {what} cannot be read back"),
        source: None,
    }
}

/// A delay or visibility in ms, as the SQL adds it to the clock.
fn span_ms(d: Duration) -> i64 {
    duration_millis(d).min(MAX_SPAN_MS)
}

fn parse_attributes(operation: &'static str, raw: Option<&str>) -> BusResult<Attributes> {
    match raw {
        None => Ok(Attributes::new()),
        Some(raw) => {
            serde_json::from_str(raw).map_err(|e| corrupt(operation, format!("attributes ({e})")))
        }
    }
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

fn queue_config(operation: &'static str, row: &PgRow) -> BusResult<QueueConfig> {
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
    operation: &'static str,
    name: &QueueName,
) -> BusResult<QueueRow> {
    find_queue(conn, operation, name)
        .await?
        .ok_or_else(|| BusError::QueueNotFound(name.clone()))
}

async fn check_topic(
    conn: &mut PgConnection,
    operation: &'static str,
    topic: &TopicName,
) -> BusResult<()> {
    sqlx::query("SELECT 1 FROM bus_topics WHERE name = $1")
        .bind(topic.as_str())
        .fetch_optional(conn)
        .await
        .map_err(db_err(operation))?
        .map(|_| ())
        .ok_or_else(|| BusError::TopicNotFound(topic.clone()))
}

/// Creates a dead-letter queue unless it exists; returns its id.
async fn ensure_dead_letter_queue(
    conn: &mut PgConnection,
    operation: &'static str,
    dlq: &QueueName,
    source: &QueueConfig,
) -> BusResult<i64> {
    sqlx::query(INSERT_DEAD_LETTER_QUEUE)
        .bind(dlq.as_str())
        .bind(span_ms(source.dedup_window))
        .bind(i64::try_from(source.max_body_bytes).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    sqlx::query_scalar(QUEUE_ID)
        .bind(dlq.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(operation))
}

fn check_body_sizes(queue: &QueueRow, messages: &[&OutgoingMessage]) -> BusResult<()> {
    let limit = queue.config.max_body_bytes;
    match messages.iter().find(|m| m.body.len() > limit) {
        Some(big) => Err(BusError::BodyTooLarge {
            queue: queue.name.clone(),
            size: big.body.len(),
            limit,
        }),
        None => Ok(()),
    }
}

/// Takes the locks of the (queue id, group key) pairs, in the global order.
async fn lock_groups(
    conn: &mut PgConnection,
    operation: &'static str,
    pairs: &[(i64, &str)],
) -> BusResult<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let (queue_ids, groups): (Vec<i64>, Vec<&str>) = pairs.iter().copied().unzip();
    sqlx::query(LOCK_GROUPS)
        .bind(queue_ids)
        .bind(groups)
        .execute(conn)
        .await
        .map_err(db_err(operation))?;
    Ok(())
}

/// The (queue id, group key) pairs that inserting `messages` into `queue`
/// touches.
fn group_pairs<'m>(queue: &QueueRow, messages: &[&'m OutgoingMessage]) -> Vec<(i64, &'m str)> {
    messages
        .iter()
        .filter_map(|m| m.group.as_deref())
        .map(|group| (queue.id, group))
        .collect()
}

/// Stores `messages` in `queue` (dedup keys honoured); returns one id per
/// message, in order. The caller owns the transaction, has checked the body
/// sizes and holds the locks of the messages' groups.
async fn insert_messages(
    conn: &mut PgConnection,
    operation: &'static str,
    queue: &QueueRow,
    messages: &[&OutgoingMessage],
) -> BusResult<Vec<MessageId>> {
    let mut ids: Vec<MessageId> = messages.iter().map(|_| new_message_id()).collect();
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(key) = m.dedup_key.as_deref() {
            first_with_key.entry(key).or_insert(i);
        }
    }
    let recorded = if first_with_key.is_empty() || queue.config.dedup_window.is_zero() {
        HashMap::new()
    } else {
        claim_dedup_keys(conn, operation, queue, &first_with_key, &ids).await?
    };
    let mut fresh = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(key) = m.dedup_key.as_deref() else {
            fresh.push(i);
            continue;
        };
        if let Some(id) = recorded.get(key) {
            ids[i] = MessageId(id.clone());
        } else if first_with_key[key] != i {
            ids[i] = ids[first_with_key[key]].clone();
        } else {
            fresh.push(i);
        }
    }
    if fresh.is_empty() {
        return Ok(ids);
    }
    let mut bodies = Vec::with_capacity(fresh.len());
    let mut attributes = Vec::with_capacity(fresh.len());
    let mut groups = Vec::with_capacity(fresh.len());
    let mut delays = Vec::with_capacity(fresh.len());
    for &i in &fresh {
        let m = messages[i];
        bodies.push(&m.body[..]);
        attributes.push(attributes_json(&m.attributes)?);
        groups.push(m.group.as_deref());
        delays.push(m.delay.map_or(0, span_ms));
    }
    let fresh_ids: Vec<&str> = fresh.iter().map(|&i| ids[i].0.as_str()).collect();
    sqlx::query(INSERT_MESSAGES)
        .bind(queue.id)
        .bind(fresh_ids)
        .bind(bodies)
        .bind(attributes)
        .bind(groups)
        .bind(delays)
        .execute(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    Ok(ids)
}

/// Records the batch's dedup keys (`first_with_key`: key → index of its first
/// message, whose id in `ids` the record takes); returns, for the keys that
/// already had a live record, the id recorded first.
async fn claim_dedup_keys(
    conn: &mut PgConnection,
    operation: &'static str,
    queue: &QueueRow,
    first_with_key: &HashMap<&str, usize>,
    ids: &[MessageId],
) -> BusResult<HashMap<String, String>> {
    let keys: Vec<&str> = first_with_key.keys().copied().collect();
    let candidates: Vec<&str> = keys
        .iter()
        .map(|key| ids[first_with_key[key]].0.as_str())
        .collect();
    let claimed: HashSet<String> = sqlx::query_scalar::<_, String>(CLAIM_DEDUP_KEYS)
        .bind(queue.id)
        .bind(&keys)
        .bind(candidates)
        .bind(span_ms(queue.config.dedup_window))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(operation))?
        .into_iter()
        .collect();
    let taken: Vec<&str> = keys
        .into_iter()
        .filter(|key| !claimed.contains(*key))
        .collect();
    if taken.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(DEDUP_RECORDS)
        .bind(queue.id)
        .bind(taken)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    Ok(rows.into_iter().collect())
}

/// Announces new receivable messages in `queues` when the transaction
/// commits.
async fn notify(
    conn: &mut PgConnection,
    operation: &'static str,
    queues: &[&str],
) -> BusResult<()> {
    sqlx::query(NOTIFY_QUEUES)
        .bind(queues)
        .execute(conn)
        .await
        .map_err(db_err(operation))?;
    Ok(())
}

/// Moves the messages `seqs` (locked by the caller, as are their groups) to
/// the back of the queue `target_id`, in their order. A dead-letter move
/// keeps the delivery history (`keep_history`); a redrive starts it afresh.
async fn move_messages(
    conn: &mut PgConnection,
    operation: &'static str,
    target_id: i64,
    dead_letter: Option<String>,
    seqs: &[i64],
    keep_history: bool,
) -> BusResult<()> {
    sqlx::query(COPY_MESSAGES)
        .bind(target_id)
        .bind(dead_letter)
        .bind(seqs)
        .bind(keep_history)
        .execute(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    sqlx::query(DELETE_SEQS)
        .bind(seqs)
        .execute(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    Ok(())
}

/// Deletes every message of a queue, taking the locks of its groups first;
/// returns how many. A message of a group that appears after the locks were
/// taken was sent concurrently with the purge and stays.
async fn delete_messages(
    conn: &mut PgConnection,
    operation: &'static str,
    queue_id: i64,
) -> BusResult<u64> {
    let (_, groups): (Option<i32>, Option<Vec<String>>) = sqlx::query_as(LOCK_GROUPS_OF_QUEUE)
        .bind(queue_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(operation))?;
    Ok(sqlx::query(DELETE_LOCKED_MESSAGES)
        .bind(queue_id)
        .bind(groups.unwrap_or_default())
        .execute(&mut *conn)
        .await
        .map_err(db_err(operation))?
        .rows_affected())
}

/// Decodes a row of [`RECEIVE`]; also returns the queue's max_receives.
fn decode_delivery(row: &PgRow) -> BusResult<(Lease, i64, Delivery)> {
    const OP: &str = "receive";
    let get = |e| db_err(OP)(e);
    let seq: i64 = row.try_get(0).map_err(get)?;
    let token: i64 = row.try_get(1).map_err(get)?;
    let receive_count: i64 = row.try_get(2).map_err(get)?;
    let group: Option<String> = row.try_get(7).map_err(get)?;
    let lease = Lease {
        seq,
        token,
        grouped: group.is_some(),
    };
    let max_receives: Option<i64> = row.try_get(5).map_err(get)?;
    let delivery = Delivery {
        id: MessageId(row.try_get(6).map_err(get)?),
        receipt: receipt(seq, token, lease.grouped),
        body: Bytes::from(row.try_get::<Vec<u8>, _>(9).map_err(get)?),
        attributes: parse_attributes(OP, row.try_get(8).map_err(get)?)?,
        group,
        receive_count: u32::try_from(receive_count).unwrap_or(u32::MAX),
        first_received_at: Timestamp(row.try_get(3).map_err(get)?),
        sent_at: Timestamp(row.try_get(4).map_err(get)?),
    };
    Ok((lease, max_receives.unwrap_or(0), delivery))
}

fn decode_peeked(row: &PgRow) -> BusResult<PeekedMessage> {
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

impl PostgresBus {
    /// A bus on the store's database, whose migrations must have run. Starts
    /// listening for the notifications that wake long polls, on one of the
    /// pool's connections, so it must be called within a Tokio runtime.
    pub async fn new(db: PgDb) -> BusResult<Self> {
        const OP: &str = "open";
        sqlx::query("SELECT 1 FROM bus_queues LIMIT 1")
            .fetch_optional(&db.pool)
            .await
            .map_err(|e| BusError::Backend {
                backend: BACKEND,
                message: format!("{OP}: {e} (have the store's migrations run?)"),
                source: Some(Box::new(e)),
            })?;
        let wakers = Arc::new(Wakers::default());
        let listener = listener::start(&db.pool, Arc::clone(&wakers))
            .await
            .map_err(db_err(OP))?;
        Ok(Self {
            db,
            wakers,
            listener,
        })
    }

    /// The database this bus lives in.
    pub fn db(&self) -> &PgDb {
        &self.db
    }

    async fn begin(
        &self,
        operation: &'static str,
    ) -> BusResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.db.pool.begin().await.map_err(db_err(operation))
    }

    async fn queue_exists(&self, operation: &'static str, name: &QueueName) -> BusResult<bool> {
        Ok(sqlx::query(QUEUE_ID)
            .bind(name.as_str())
            .fetch_optional(&self.db.pool)
            .await
            .map_err(db_err(operation))?
            .is_some())
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
        let mut out: Vec<(i64, Delivery)> = Vec::new();
        loop {
            let want = max - out.len();
            let rows = sqlx::query(RECEIVE)
                .bind(queue.as_str())
                .bind(want as i64)
                .bind(span_ms(visibility))
                .fetch_all(&self.db.pool)
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
                self.dead_letter(queue, &over).await?;
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
    async fn dead_letter(&self, queue: &QueueName, leases: &[Lease]) -> BusResult<()> {
        const OP: &str = "receive (dead-letter move)";
        let mut tx = self.begin(OP).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        let Some(dlq) = q.dead_letter_queue()? else {
            // max_receives was set to zero since the lease: nothing to move.
            return Ok(());
        };
        let dlq_id = ensure_dead_letter_queue(&mut tx, OP, &dlq, &q.config).await?;
        let (leased, tokens): (Vec<i64>, Vec<i64>) =
            leases.iter().map(|l| (l.seq, l.token)).unzip();
        sqlx::query(LOCK_GROUPS_OF_MOVE)
            .bind(&leased)
            .bind(dlq_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        let seqs: Vec<i64> = sqlx::query_scalar(LOCK_LEASED)
            .bind(&leased)
            .bind(tokens)
            .bind(q.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if seqs.is_empty() {
            return Ok(());
        }
        let moved_at: i64 = sqlx::query_scalar("SELECT bus_now_ms()")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        let info = DeadLetterInfo {
            source_queue: queue.to_string(),
            reason: format!("exceeded max_receives ({})", q.config.max_receives),
            moved_at: Timestamp(moved_at),
        };
        let info = serde_json::to_string(&info).map_err(|e| corrupt(OP, e))?;
        move_messages(&mut tx, OP, dlq_id, Some(info), &seqs, true).await?;
        // Another message of a group may have become its head.
        notify(&mut tx, OP, &[dlq.as_str(), queue.as_str()]).await?;
        tx.commit().await.map_err(db_err(OP))?;
        tracing::info!(
            queue = %queue,
            dead_letter_queue = %dlq,
            count = seqs.len(),
            "moved messages past max_receives to the dead-letter queue"
        );
        Ok(())
    }

    /// How long until the queue's next message becomes receivable, if one
    /// is waiting for its delay or visibility; QueueNotFound if there is no
    /// such queue.
    async fn next_visible_in(&self, queue: &QueueName) -> BusResult<Option<Duration>> {
        let (id, wait_ms): (Option<i64>, Option<i64>) = sqlx::query_as(NEXT_VISIBLE)
            .bind(queue.as_str())
            .fetch_one(&self.db.pool)
            .await
            .map_err(db_err("receive"))?;
        match id {
            None => Err(BusError::QueueNotFound(queue.clone())),
            Some(_) => Ok(wait_ms.map(|ms| Duration::from_millis(ms.max(0) as u64))),
        }
    }

    /// Runs a one-message update by receipt ([`NACK`] or [`EXTEND`]: `$1`
    /// queue, `$2` seq, `$3` token, `$4` a span in ms); a miss is a stale
    /// receipt, or an unknown queue.
    async fn by_receipt(
        &self,
        operation: &'static str,
        sql: &'static str,
        queue: &QueueName,
        receipt: &Receipt,
        span: Duration,
    ) -> BusResult<()> {
        let lease = parse_receipt(BACKEND, receipt)?;
        let row = sqlx::query(sql)
            .bind(queue.as_str())
            .bind(lease.seq)
            .bind(lease.token)
            .bind(span_ms(span))
            .fetch_one(&self.db.pool)
            .await
            .map_err(db_err(operation))?;
        let queue_id: Option<i64> = row.try_get(0).map_err(db_err(operation))?;
        let changed: i64 = row.try_get(1).map_err(db_err(operation))?;
        match (queue_id, changed) {
            (_, 1) => Ok(()),
            (None, _) => Err(BusError::QueueNotFound(queue.clone())),
            (Some(_), _) => Err(BusError::StaleReceipt(receipt.clone())),
        }
    }

    /// Sends messages without dedup keys or groups in one autocommit
    /// statement that inserts all or nothing.
    async fn send_fast(
        &self,
        queue: &QueueName,
        messages: &[OutgoingMessage],
    ) -> BusResult<Vec<MessageId>> {
        const OP: &str = "send";
        let ids: Vec<MessageId> = messages.iter().map(|_| new_message_id()).collect();
        let largest = messages.iter().map(|m| m.body.len()).max().unwrap_or(0);
        let attributes = messages
            .iter()
            .map(|m| attributes_json(&m.attributes))
            .collect::<BusResult<Vec<_>>>()?;
        let row = sqlx::query(SEND)
            .bind(queue.as_str())
            .bind(i64::try_from(largest).unwrap_or(i64::MAX))
            .bind(ids.iter().map(|id| id.0.as_str()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| &m.body[..]).collect::<Vec<_>>())
            .bind(attributes)
            .bind(
                messages
                    .iter()
                    .map(|m| m.delay.map_or(0, span_ms))
                    .collect::<Vec<_>>(),
            )
            .fetch_one(&self.db.pool)
            .await
            .map_err(db_err(OP))?;
        let limit: Option<i64> = row.try_get(0).map_err(db_err(OP))?;
        let inserted: i64 = row.try_get(1).map_err(db_err(OP))?;
        match limit {
            None => Err(BusError::QueueNotFound(queue.clone())),
            Some(_) if inserted == messages.len() as i64 => Ok(ids),
            Some(limit) => Err(BusError::BodyTooLarge {
                queue: queue.clone(),
                size: largest,
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            }),
        }
    }

    /// Deletes a bounded number of expired dedup records. Run outside the
    /// write's transaction: the records it deletes stay locked only for the
    /// moment of the delete.
    async fn prune_expired_dedup(&self, operation: &'static str) -> BusResult<()> {
        sqlx::query(PRUNE_DEDUP)
            .bind(DEDUP_PRUNE)
            .execute(&self.db.pool)
            .await
            .map_err(db_err(operation))?;
        Ok(())
    }

    /// Sends messages with dedup keys or groups in one transaction.
    async fn send_locked(
        &self,
        queue: &QueueName,
        messages: &[OutgoingMessage],
    ) -> BusResult<Vec<MessageId>> {
        const OP: &str = "send";
        if messages.iter().any(|m| m.dedup_key.is_some()) {
            self.prune_expired_dedup(OP).await?;
        }
        let mut tx = self.begin(OP).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        let refs: Vec<&OutgoingMessage> = messages.iter().collect();
        check_body_sizes(&q, &refs)?;
        lock_groups(&mut tx, OP, &group_pairs(&q, &refs)).await?;
        let ids = insert_messages(&mut tx, OP, &q, &refs).await?;
        notify(&mut tx, OP, &[queue.as_str()]).await?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(ids)
    }
}

#[async_trait]
impl Bus for PostgresBus {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> BusResult<()> {
        sqlx::query("SELECT 1 FROM bus_queues LIMIT 1")
            .fetch_optional(&self.db.pool)
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
        let mut tx = self.begin(OP).await?;
        sqlx::query(UPSERT_QUEUE)
            .bind(name.as_str())
            .bind(i64::from(config.max_receives))
            .bind(config.dead_letter_queue.as_ref().map(QueueName::as_str))
            .bind(span_ms(config.dedup_window))
            .bind(i64::try_from(config.max_body_bytes).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if let Some(dlq) = dlq {
            ensure_dead_letter_queue(&mut tx, OP, &dlq, &config).await?;
        }
        tx.commit().await.map_err(db_err(OP))
    }

    async fn delete_queue(&self, name: &QueueName) -> BusResult<()> {
        const OP: &str = "delete_queue";
        let mut tx = self.begin(OP).await?;
        let q = load_queue(&mut tx, OP, name).await?;
        delete_messages(&mut tx, OP, q.id).await?;
        // Dedup records and subscriptions go with the row.
        sqlx::query("DELETE FROM bus_queues WHERE id = $1")
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn list_queues(&self) -> BusResult<Vec<QueueInfo>> {
        const OP: &str = "list_queues";
        let rows = sqlx::query(LIST_QUEUES)
            .fetch_all(&self.db.pool)
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
        if messages.is_empty() {
            return if self.queue_exists("send", queue).await? {
                Ok(Vec::new())
            } else {
                Err(BusError::QueueNotFound(queue.clone()))
            };
        }
        if messages
            .iter()
            .all(|m| m.dedup_key.is_none() && m.group.is_none())
        {
            self.send_fast(queue, &messages).await
        } else {
            self.send_locked(queue, &messages).await
        }
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
                let lease = parse_receipt(BACKEND, &r)?;
                if unique.insert((lease.seq, lease.token)) {
                    parsed.push((lease, r));
                }
            }
            leases.push((queue, parsed));
        }
        if sends
            .iter()
            .any(|(_, messages)| messages.iter().any(|m| m.dedup_key.is_some()))
        {
            self.prune_expired_dedup(OP).await?;
        }
        let mut tx = self.begin(OP).await?;
        let mut targets: Vec<(QueueRow, Vec<&OutgoingMessage>)> = Vec::with_capacity(sends.len());
        for (queue, messages) in &sends {
            let q = load_queue(&mut tx, OP, queue).await?;
            let refs: Vec<&OutgoingMessage> = messages.iter().collect();
            check_body_sizes(&q, &refs)?;
            targets.push((q, refs));
        }
        // Every group lock up front, in the one global order: the groups
        // sent to and the groups of the acked messages.
        let (queue_ids, groups): (Vec<i64>, Vec<&str>) = targets
            .iter()
            .flat_map(|(q, refs)| group_pairs(q, refs))
            .unzip();
        let grouped: Vec<i64> = leases
            .iter()
            .flat_map(|(_, leased)| leased.iter())
            .filter(|(l, _)| l.grouped)
            .map(|(l, _)| l.seq)
            .collect();
        if !queue_ids.is_empty() || !grouped.is_empty() {
            sqlx::query(LOCK_GROUPS_OF_COMMIT)
                .bind(queue_ids)
                .bind(groups)
                .bind(&grouped)
                .execute(&mut *tx)
                .await
                .map_err(db_err(OP))?;
        }
        let mut ids = Vec::with_capacity(targets.len());
        for (q, refs) in &targets {
            ids.push(insert_messages(&mut tx, OP, q, refs).await?);
        }
        let mut woken: Vec<&str> = sends
            .iter()
            .filter(|(_, messages)| !messages.is_empty())
            .map(|(q, _)| q.as_str())
            .collect();
        for (queue, leased) in &leases {
            if leased.is_empty() {
                continue;
            }
            let (seqs, tokens): (Vec<i64>, Vec<i64>) =
                leased.iter().map(|(l, _)| (l.seq, l.token)).unzip();
            let deleted: HashSet<(i64, i64)> = sqlx::query_as::<_, (i64, i64)>(ACK)
                .bind(queue.as_str())
                .bind(&seqs)
                .bind(tokens)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err(OP))?
                .into_iter()
                .collect();
            if deleted.len() < leased.len() {
                drop(tx);
                if !self.queue_exists(OP, queue).await? {
                    return Err(BusError::QueueNotFound(queue.clone()));
                }
                let stale = leased
                    .iter()
                    .find(|(l, _)| !deleted.contains(&(l.seq, l.token)))
                    .map_or_else(|| leased[0].1.clone(), |(_, r)| r.clone());
                return Err(BusError::StaleReceipt(stale));
            }
            if leased.iter().any(|(l, _)| l.grouped) {
                // The next message of an acked group just became receivable.
                woken.push(queue.as_str());
            }
        }
        if !woken.is_empty() {
            notify(&mut tx, OP, &woken).await?;
        }
        tx.commit().await.map_err(db_err(OP))?;
        Ok(sends.into_iter().map(|(q, _)| q).zip(ids).collect())
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> BusResult<Vec<Delivery>> {
        check_max(options.max)?;
        let started = Instant::now();
        let waker = self.wakers.waker(queue.as_str());
        loop {
            // Registered before looking, so a notification that lands
            // between the look and the sleep still wakes this poll.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self
                .receive_now(queue, options.max, options.visibility)
                .await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let next = self.next_visible_in(queue).await?;
            let remaining = options.wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Ok(got);
            }
            let mut nap = remaining.min(RECHECK);
            if let Some(due) = next {
                nap = nap.min(due + Duration::from_millis(1));
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
        let parsed: Vec<BusResult<Lease>> =
            receipts.iter().map(|r| parse_receipt(BACKEND, r)).collect();
        let mut unique = HashSet::with_capacity(receipts.len());
        let leases: Vec<Lease> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .copied()
            .filter(|l| unique.insert((l.seq, l.token)))
            .collect();
        let mut deleted: HashSet<(i64, i64)> = HashSet::with_capacity(leases.len());
        if !leases.is_empty() {
            let (seqs, tokens): (Vec<i64>, Vec<i64>) =
                leases.iter().map(|l| (l.seq, l.token)).unzip();
            let ack = sqlx::query_as::<_, (i64, i64)>(ACK)
                .bind(queue.as_str())
                .bind(&seqs)
                .bind(tokens);
            let grouped: Vec<i64> = leases.iter().filter(|l| l.grouped).map(|l| l.seq).collect();
            let rows: Vec<(i64, i64)> = if grouped.is_empty() {
                ack.fetch_all(&self.db.pool).await.map_err(db_err(OP))?
            } else {
                let mut tx = self.begin(OP).await?;
                sqlx::query(LOCK_GROUPS_OF_SEQS)
                    .bind(&grouped)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(OP))?;
                let rows: Vec<(i64, i64)> = ack.fetch_all(&mut *tx).await.map_err(db_err(OP))?;
                if rows.iter().any(|(seq, _)| grouped.contains(seq)) {
                    // The next message of an acked group just became receivable.
                    notify(&mut tx, OP, &[queue.as_str()]).await?;
                }
                tx.commit().await.map_err(db_err(OP))?;
                rows
            };
            deleted.extend(rows);
        }
        if deleted.len() < leases.len() && !self.queue_exists(OP, queue).await? {
            return Err(BusError::QueueNotFound(queue.clone()));
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
        self.by_receipt("nack", NACK, queue, receipt, delay).await
    }

    async fn extend(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        visibility: Duration,
    ) -> BusResult<()> {
        self.by_receipt("extend", EXTEND, queue, receipt, visibility)
            .await
    }

    async fn redrive(
        &self,
        dead_letter: &QueueName,
        to: &QueueName,
        limit: Option<u64>,
    ) -> BusResult<u64> {
        const OP: &str = "redrive";
        let mut tx = self.begin(OP).await?;
        let from = load_queue(&mut tx, OP, dead_letter).await?;
        let target = load_queue(&mut tx, OP, to).await?;
        let limit = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let oldest: Vec<i64> = sqlx::query_scalar(OLDEST_SEQS)
            .bind(from.id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if oldest.is_empty() {
            return Ok(0);
        }
        sqlx::query(LOCK_GROUPS_OF_MOVE)
            .bind(&oldest)
            .bind(target.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        // Those another redrive or an ack took meanwhile are gone.
        let seqs: Vec<i64> = sqlx::query_scalar(LOCK_SEQS)
            .bind(&oldest)
            .bind(from.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        if seqs.is_empty() {
            return Ok(0);
        }
        move_messages(&mut tx, OP, target.id, None, &seqs, false).await?;
        notify(&mut tx, OP, &[to.as_str()]).await?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(seqs.len() as u64)
    }

    async fn purge(&self, queue: &QueueName) -> BusResult<u64> {
        const OP: &str = "purge";
        let mut tx = self.begin(OP).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        let purged = delete_messages(&mut tx, OP, q.id).await?;
        tx.commit().await.map_err(db_err(OP))?;
        Ok(purged)
    }

    async fn peek(&self, queue: &QueueName, max: usize) -> BusResult<Vec<PeekedMessage>> {
        const OP: &str = "peek";
        check_max(max)?;
        let mut conn = self.db.pool.acquire().await.map_err(db_err(OP))?;
        let q = load_queue(&mut conn, OP, queue).await?;
        let rows = sqlx::query(PEEK)
            .bind(q.id)
            .bind(max as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        rows.iter().map(decode_peeked).collect()
    }

    async fn stats(&self, queue: &QueueName) -> BusResult<QueueStats> {
        const OP: &str = "stats";
        let mut conn = self.db.pool.acquire().await.map_err(db_err(OP))?;
        let q = load_queue(&mut conn, OP, queue).await?;
        let dlq = q.dead_letter_queue()?;
        let (visible, in_flight, delayed, oldest_ms, dead_lettered): (
            i64,
            i64,
            i64,
            Option<i64>,
            i64,
        ) = sqlx::query_as(STATS)
            .bind(q.id)
            .bind(dlq.as_ref().map(QueueName::as_str))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        let count = |n: i64| n.max(0) as u64;
        Ok(QueueStats {
            visible: count(visible),
            in_flight: count(in_flight),
            delayed: count(delayed),
            dead_lettered: count(dead_lettered),
            oldest_age: oldest_ms.map(|ms| Duration::from_millis(count(ms))),
        })
    }

    async fn ensure_topic(&self, topic: &TopicName) -> BusResult<()> {
        sqlx::query(
            "INSERT INTO bus_topics (name, created_at) VALUES ($1, bus_now_ms()) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(topic.as_str())
        .execute(&self.db.pool)
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
        let mut tx = self.begin(OP).await?;
        check_topic(&mut tx, OP, &subscription.topic).await?;
        let q = load_queue(&mut tx, OP, &subscription.queue).await?;
        sqlx::query(
            "INSERT INTO bus_subscriptions (topic, queue_id, filter) VALUES ($1, $2, $3::JSONB) \
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
        let mut tx = self.begin(OP).await?;
        check_topic(&mut tx, OP, topic).await?;
        let q = load_queue(&mut tx, OP, queue).await?;
        sqlx::query("DELETE FROM bus_subscriptions WHERE topic = $1 AND queue_id = $2")
            .bind(topic.as_str())
            .bind(q.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        tx.commit().await.map_err(db_err(OP))
    }

    async fn subscriptions(&self, topic: &TopicName) -> BusResult<Vec<Subscription>> {
        const OP: &str = "subscriptions";
        let mut conn = self.db.pool.acquire().await.map_err(db_err(OP))?;
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
        let mut tx = self.begin(OP).await?;
        check_topic(&mut tx, OP, topic).await?;
        let subs: Vec<(String, String)> = sqlx::query_as(TOPIC_SUBSCRIPTIONS)
            .bind(topic.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(OP))?;
        // Every target and its matching messages first, so that all the
        // groups can be locked before anything is written.
        let mut targets: Vec<(QueueRow, Vec<usize>)> = Vec::new();
        for (queue, filter) in subs {
            let filter: FilterPolicy =
                serde_json::from_str(&filter).map_err(|e| corrupt(OP, format!("filter ({e})")))?;
            let matching: Vec<usize> = (0..messages.len())
                .filter(|&i| filter.matches(&messages[i].attributes))
                .collect();
            if matching.is_empty() {
                continue;
            }
            let queue = QueueName::parse(queue).map_err(|e| corrupt(OP, e))?;
            let q = load_queue(&mut tx, OP, &queue).await?;
            let refs: Vec<&OutgoingMessage> = matching.iter().map(|&i| &messages[i]).collect();
            check_body_sizes(&q, &refs)?;
            targets.push((q, matching));
        }
        let pairs: Vec<(i64, &str)> = targets
            .iter()
            .flat_map(|(q, matching)| {
                matching
                    .iter()
                    .filter_map(|&i| messages[i].group.as_deref())
                    .map(|group| (q.id, group))
            })
            .collect();
        lock_groups(&mut tx, OP, &pairs).await?;
        // Copies per message, so the ids come back message by message.
        let mut copies: Vec<Vec<MessageId>> = vec![Vec::new(); messages.len()];
        for (q, matching) in &targets {
            let refs: Vec<&OutgoingMessage> = matching.iter().map(|&i| &messages[i]).collect();
            let ids = insert_messages(&mut tx, OP, q, &refs).await?;
            for (&i, id) in matching.iter().zip(ids) {
                copies[i].push(id);
            }
        }
        if !targets.is_empty() {
            let names: Vec<&str> = targets.iter().map(|(q, _)| q.name.as_str()).collect();
            notify(&mut tx, OP, &names).await?;
        }
        tx.commit().await.map_err(db_err(OP))?;
        Ok(copies.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_reject_forgeries() {
        for (seq, token) in [(1, 0), (i64::MAX, -1), (42, i64::MIN), (7, 123_456_789)] {
            for grouped in [false, true] {
                let lease = parse_receipt(BACKEND, &receipt(seq, token, grouped)).unwrap();
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
            let err = parse_receipt(BACKEND, &Receipt(bad.into())).unwrap_err();
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

    #[test]
    fn spans_saturate_below_overflow() {
        assert_eq!(span_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(span_ms(Duration::MAX), MAX_SPAN_MS);
        assert!(MAX_SPAN_MS.checked_add(i64::MAX / 2).is_some());
    }
}
