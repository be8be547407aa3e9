//! `herald bench bus`: a bus backend against its raw engine doing the same
//! row work, measured in the same run on the same machine.
//!
//! Herald sends N messages with `send_batch`, then K consumers
//! `receive` + `ack_batch` until the queue is empty. The reference inserts N
//! rows into a plain table with one multi-row INSERT per batch, then K
//! consumers select and delete them in batches, one transaction per batch.
//! For the embedded bus the reference is a separate SQLite file opened with
//! the same pragmas and pools; for the PostgreSQL bus it is a table in the
//! same fresh schema, reached through the same kind of pool, whose consumers
//! select with `FOR UPDATE SKIP LOCKED` as the bus does. The reference runs
//! first: whichever runs second shares the disk with the first one's
//! write-back, so the ratio errs against Herald. Every message must come back
//! exactly once, or the run fails instead of printing a flattering figure.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::QueueName;
use herald_store::{PgDb, SqliteDb};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio::task::JoinSet;

use crate::embedded::MAX_RECEIVE;
use crate::{
    Bus, BusError, BusResult, EmbeddedBus, OutgoingMessage, PostgresBus, QueueConfig,
    ReceiveOptions,
};

/// Which bus to measure, each against its own raw engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchBackend {
    /// The embedded bus on a SQLite file, against raw SQLite.
    Embedded,
    /// The PostgreSQL bus, against raw PostgreSQL, both in a schema of their
    /// own in the database `url` names; the schema is dropped after the run.
    Postgres { url: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BusBenchOptions {
    /// Where to create the run's temporary folder; the system's temporary
    /// folder when `None`. The folder and both databases are removed after.
    /// Used by the embedded backend only.
    pub dir: Option<PathBuf>,
    /// Messages to send and consume.
    pub messages: usize,
    /// Messages per send, receive and ack call (and per reference statement).
    pub batch: usize,
    /// Concurrent consumers.
    pub consumers: usize,
    /// Size of every message body.
    pub body_bytes: usize,
}

impl Default for BusBenchOptions {
    fn default() -> Self {
        Self {
            dir: None,
            messages: 100_000,
            batch: 100,
            consumers: 4,
            body_bytes: 128,
        }
    }
}

/// Throughput in messages per second; a ratio is Herald / reference, so 1.0
/// means as fast as the raw engine and 0.5 half as fast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusBenchReport {
    /// The bus measured: `embedded` or `postgres`.
    pub backend: &'static str,
    /// The raw engine it was measured against: `SQLite` or `PostgreSQL`.
    pub reference: &'static str,
    pub messages: usize,
    pub batch: usize,
    pub consumers: usize,
    pub body_bytes: usize,
    pub herald_send_per_sec: f64,
    pub raw_insert_per_sec: f64,
    pub send_ratio: f64,
    pub herald_consume_per_sec: f64,
    pub raw_consume_per_sec: f64,
    pub consume_ratio: f64,
}

impl fmt::Display for BusBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} bus benchmark: {} messages of {} bytes, batches of {}, {} consumers",
            self.backend, self.messages, self.body_bytes, self.batch, self.consumers
        )?;
        writeln!(
            f,
            "{:<16} {:>14} {:>22} {:>11}",
            "phase",
            "herald msg/s",
            format!("raw {} msg/s", self.reference),
            "herald/raw"
        )?;
        writeln!(
            f,
            "{:<16} {:>14.0} {:>22.0} {:>11.2}",
            "send", self.herald_send_per_sec, self.raw_insert_per_sec, self.send_ratio
        )?;
        write!(
            f,
            "{:<16} {:>14.0} {:>22.0} {:>11.2}",
            "receive + ack",
            self.herald_consume_per_sec,
            self.raw_consume_per_sec,
            self.consume_ratio
        )
    }
}

fn invalid(field: &'static str, message: String) -> BusError {
    BusError::InvalidArgument { field, message }
}

fn bench_err(message: String) -> BusError {
    BusError::Backend {
        backend: "bench",
        message: format!("bus benchmark: {message}"),
        source: None,
    }
}

fn sql_err(step: &'static str) -> impl FnOnce(sqlx::Error) -> BusError {
    move |e| bench_err(format!("reference {step}: {e}"))
}

fn pg_err(step: &'static str) -> impl FnOnce(sqlx::Error) -> BusError {
    move |e| bench_err(format!("{step}: {e}"))
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Measures the embedded bus against raw SQLite.
pub async fn run_bus_bench(opts: BusBenchOptions) -> BusResult<BusBenchReport> {
    run_bus_bench_on(&BenchBackend::Embedded, opts).await
}

/// Measures the chosen bus against its raw engine.
pub async fn run_bus_bench_on(
    backend: &BenchBackend,
    opts: BusBenchOptions,
) -> BusResult<BusBenchReport> {
    if opts.messages == 0 {
        return Err(invalid("messages", "must be at least 1".into()));
    }
    if !(1..=MAX_RECEIVE).contains(&opts.batch) {
        return Err(invalid(
            "batch",
            format!("must be between 1 and {MAX_RECEIVE}, got {}", opts.batch),
        ));
    }
    if opts.consumers == 0 {
        return Err(invalid("consumers", "must be at least 1".into()));
    }
    let body = Bytes::from(vec![b'x'; opts.body_bytes]);
    let (times, backend, reference) = match backend {
        BenchBackend::Embedded => (embedded_bench(&opts, &body).await?, "embedded", "SQLite"),
        BenchBackend::Postgres { url } => (
            postgres_bench(url, &opts, &body).await?,
            "postgres",
            "PostgreSQL",
        ),
    };

    let n = opts.messages;
    let herald_send_per_sec = rate(n, times.herald_send);
    let raw_insert_per_sec = rate(n, times.raw_insert);
    let herald_consume_per_sec = rate(n, times.herald_consume);
    let raw_consume_per_sec = rate(n, times.raw_consume);
    Ok(BusBenchReport {
        backend,
        reference,
        messages: n,
        batch: opts.batch,
        consumers: opts.consumers,
        body_bytes: opts.body_bytes,
        herald_send_per_sec,
        raw_insert_per_sec,
        send_ratio: herald_send_per_sec / raw_insert_per_sec,
        herald_consume_per_sec,
        raw_consume_per_sec,
        consume_ratio: herald_consume_per_sec / raw_consume_per_sec,
    })
}

/// The four measured phases of one run.
struct Times {
    raw_insert: Duration,
    raw_consume: Duration,
    herald_send: Duration,
    herald_consume: Duration,
}

async fn embedded_bench(opts: &BusBenchOptions, body: &Bytes) -> BusResult<Times> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("herald-bench-");
    let dir = match &opts.dir {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .map_err(|e| bench_err(format!("cannot create a temporary folder: {e}")))?;

    let raw = SqliteDb::open(dir.path().join("raw.db"))
        .await
        .map_err(|e| bench_err(e.to_string()))?;
    let (raw_insert, raw_consume) = raw_run(&raw, opts, body).await?;
    raw.close().await;

    let bus = Arc::new(EmbeddedBus::open(dir.path().join("herald.db")).await?);
    let (herald_send, herald_consume) = herald_run(bus.clone(), opts, body).await?;
    bus.db().close().await;
    Ok(Times {
        raw_insert,
        raw_consume,
        herald_send,
        herald_consume,
    })
}

/// Runs both sides in a fresh schema of the database `url` names, and drops
/// the schema whether the run succeeded or not.
async fn postgres_bench(url: &str, opts: &BusBenchOptions, body: &Bytes) -> BusResult<Times> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| invalid("url", format!("{}: {e}", herald_store::mask_password(url))))?;
    let schema = format!("herald_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&options)
        .await
        .map_err(pg_err("connect"))?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .map_err(pg_err("create schema"))?;
    let times = postgres_run(
        options.options([("search_path", schema.as_str())]),
        opts,
        body,
    )
    .await;
    let dropped = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .map_err(pg_err("drop schema"));
    // The run's own error says more than a failure to clean up after it.
    let times = times?;
    dropped?;
    // Saying goodbye is a courtesy; the figures are already measured.
    let _ = admin.close().await;
    Ok(times)
}

async fn postgres_run(
    options: PgConnectOptions,
    opts: &BusBenchOptions,
    body: &Bytes,
) -> BusResult<Times> {
    let db = PgDb::connect_with(options)
        .await
        .map_err(|e| bench_err(e.to_string()))?;
    db.migrate().await.map_err(|e| bench_err(e.to_string()))?;
    let (raw_insert, raw_consume) = raw_pg_run(&db, opts, body).await?;
    let bus: Arc<dyn Bus> = Arc::new(PostgresBus::new(db.clone()).await?);
    let herald = herald_run(bus, opts, body).await;
    db.close().await;
    let (herald_send, herald_consume) = herald?;
    Ok(Times {
        raw_insert,
        raw_consume,
        herald_send,
        herald_consume,
    })
}

/// Herald's send and consume times.
async fn herald_run(
    bus: Arc<dyn Bus>,
    opts: &BusBenchOptions,
    body: &Bytes,
) -> BusResult<(Duration, Duration)> {
    let queue = QueueName::parse("bench")?;
    bus.ensure_queue(&queue, QueueConfig::default()).await?;

    let started = Instant::now();
    let mut sent = 0;
    while sent < opts.messages {
        let count = opts.batch.min(opts.messages - sent);
        let batch = vec![OutgoingMessage::new(body.clone()); count];
        bus.send_batch(&queue, batch).await?;
        sent += count;
    }
    let send = started.elapsed();

    let started = Instant::now();
    let mut consumers = JoinSet::new();
    for _ in 0..opts.consumers {
        let bus = Arc::clone(&bus);
        let queue = queue.clone();
        let max = opts.batch;
        consumers.spawn(async move { herald_consumer(&*bus, &queue, max).await });
    }
    let mut seen = HashSet::with_capacity(opts.messages);
    let mut received = 0;
    while let Some(joined) = consumers.join_next().await {
        let ids = joined.map_err(|e| bench_err(format!("a consumer failed: {e}")))??;
        received += ids.len();
        seen.extend(ids);
    }
    let consume = started.elapsed();
    if received != opts.messages || seen.len() != opts.messages {
        return Err(bench_err(format!(
            "sent {} messages but received {received} ({} distinct)",
            opts.messages,
            seen.len()
        )));
    }
    Ok((send, consume))
}

/// Receives and acks until the queue is empty; returns the ids it got.
async fn herald_consumer(bus: &dyn Bus, queue: &QueueName, max: usize) -> BusResult<Vec<String>> {
    // Every message is sent before consumers start and the visibility
    // outlasts the run, so an empty receive means the queue is drained.
    let options = ReceiveOptions {
        max,
        wait: Duration::ZERO,
        visibility: Duration::from_secs(600),
    };
    let mut ids = Vec::new();
    loop {
        let got = bus.receive(queue, options).await?;
        if got.is_empty() {
            return Ok(ids);
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
        for delivery in got {
            if delivery.receive_count != 1 {
                return Err(bench_err(format!(
                    "message {} was delivered {} times",
                    delivery.id, delivery.receive_count
                )));
            }
            ids.push(delivery.id.0);
        }
        for outcome in bus.ack_batch(queue, &receipts).await? {
            outcome?;
        }
    }
}

/// The reference's insert and consume times.
async fn raw_run(
    db: &SqliteDb,
    opts: &BusBenchOptions,
    body: &Bytes,
) -> BusResult<(Duration, Duration)> {
    sqlx::query("CREATE TABLE raw_queue (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .execute(&db.writer)
        .await
        .map_err(sql_err("create table"))?;
    let full_batch = insert_sql(opts.batch);

    let started = Instant::now();
    let mut inserted = 0;
    while inserted < opts.messages {
        let count = opts.batch.min(opts.messages - inserted);
        let partial;
        let sql = if count == opts.batch {
            &full_batch
        } else {
            partial = insert_sql(count);
            &partial
        };
        let mut tx = db
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql_err("insert"))?;
        sqlx::query(sql)
            .bind(&body[..])
            .execute(&mut *tx)
            .await
            .map_err(sql_err("insert"))?;
        tx.commit().await.map_err(sql_err("insert"))?;
        inserted += count;
    }
    let insert = started.elapsed();

    let started = Instant::now();
    let mut consumers = JoinSet::new();
    for _ in 0..opts.consumers {
        let db = db.clone();
        let max = opts.batch;
        consumers.spawn(async move { raw_consumer(&db, max).await });
    }
    let mut consumed = 0;
    while let Some(joined) = consumers.join_next().await {
        consumed +=
            joined.map_err(|e| bench_err(format!("a reference consumer failed: {e}")))??;
    }
    let consume = started.elapsed();
    if consumed != opts.messages {
        return Err(bench_err(format!(
            "reference inserted {} rows but consumed {consumed}",
            opts.messages
        )));
    }
    Ok((insert, consume))
}

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO raw_queue (body) VALUES (?1)");
    for _ in 1..rows {
        sql.push_str(", (?1)");
    }
    sql
}

/// Selects and deletes the oldest rows in batches until none are left;
/// returns how many it consumed.
async fn raw_consumer(db: &SqliteDb, max: usize) -> BusResult<usize> {
    let mut consumed = 0;
    loop {
        let mut tx = db
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql_err("consume"))?;
        let rows = sqlx::query("SELECT id, body FROM raw_queue ORDER BY id LIMIT ?1")
            .bind(max as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(sql_err("consume"))?;
        let Some(last) = rows.last() else {
            return Ok(consumed);
        };
        let last: i64 = last.try_get("id").map_err(sql_err("consume"))?;
        sqlx::query("DELETE FROM raw_queue WHERE id <= ?1")
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("consume"))?;
        tx.commit().await.map_err(sql_err("consume"))?;
        consumed += rows.len();
    }
}

/// The PostgreSQL reference's insert and consume times.
async fn raw_pg_run(
    db: &PgDb,
    opts: &BusBenchOptions,
    body: &Bytes,
) -> BusResult<(Duration, Duration)> {
    sqlx::query(
        "CREATE TABLE raw_queue \
         (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body BYTEA NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .map_err(sql_err("create table"))?;
    let full_batch = pg_insert_sql(opts.batch);

    let started = Instant::now();
    let mut inserted = 0;
    while inserted < opts.messages {
        let count = opts.batch.min(opts.messages - inserted);
        let partial;
        let sql = if count == opts.batch {
            &full_batch
        } else {
            partial = pg_insert_sql(count);
            &partial
        };
        sqlx::query(sql)
            .bind(&body[..])
            .execute(&db.pool)
            .await
            .map_err(sql_err("insert"))?;
        inserted += count;
    }
    let insert = started.elapsed();

    let started = Instant::now();
    let mut consumers = JoinSet::new();
    for _ in 0..opts.consumers {
        let db = db.clone();
        let max = opts.batch;
        consumers.spawn(async move { raw_pg_consumer(&db, max).await });
    }
    let mut consumed = 0;
    while let Some(joined) = consumers.join_next().await {
        consumed +=
            joined.map_err(|e| bench_err(format!("a reference consumer failed: {e}")))??;
    }
    let consume = started.elapsed();
    if consumed != opts.messages {
        return Err(bench_err(format!(
            "reference inserted {} rows but consumed {consumed}",
            opts.messages
        )));
    }
    Ok((insert, consume))
}

fn pg_insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO raw_queue (body) VALUES ($1)");
    for _ in 1..rows {
        sql.push_str(", ($1)");
    }
    sql
}

/// Selects the oldest rows no other consumer holds and deletes them, one
/// transaction per batch, until none are left; returns how many it consumed.
async fn raw_pg_consumer(db: &PgDb, max: usize) -> BusResult<usize> {
    let mut consumed = 0;
    loop {
        let mut tx = db.pool.begin().await.map_err(sql_err("consume"))?;
        let rows = sqlx::query(
            "SELECT id, body FROM raw_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(max as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql_err("consume"))?;
        if rows.is_empty() {
            return Ok(consumed);
        }
        let ids = rows
            .iter()
            .map(|row| row.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err("consume"))?;
        sqlx::query("DELETE FROM raw_queue WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("consume"))?;
        tx.commit().await.map_err(sql_err("consume"))?;
        consumed += rows.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_run_counts_every_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let report = run_bus_bench(BusBenchOptions {
            dir: Some(dir.path().to_path_buf()),
            messages: 1_050,
            batch: 100,
            consumers: 3,
            body_bytes: 64,
        })
        .await
        .unwrap();
        assert_eq!(report.messages, 1_050);
        assert_eq!((report.backend, report.reference), ("embedded", "SQLite"));
        for rate in [
            report.herald_send_per_sec,
            report.raw_insert_per_sec,
            report.herald_consume_per_sec,
            report.raw_consume_per_sec,
        ] {
            assert!(rate.is_finite() && rate > 0.0, "{report:?}");
        }
        let table = report.to_string();
        assert!(table.contains("receive + ack"), "{table}");
        assert!(table.contains("herald/raw"), "{table}");
        assert!(table.contains("raw SQLite msg/s"), "{table}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the run's folder is removed"
        );
    }

    #[tokio::test]
    async fn rejects_nonsense_options_by_name() {
        for (opts, field) in [
            (
                BusBenchOptions {
                    messages: 0,
                    ..BusBenchOptions::default()
                },
                "messages",
            ),
            (
                BusBenchOptions {
                    batch: 0,
                    ..BusBenchOptions::default()
                },
                "batch",
            ),
            (
                BusBenchOptions {
                    batch: 1001,
                    ..BusBenchOptions::default()
                },
                "batch",
            ),
            (
                BusBenchOptions {
                    consumers: 0,
                    ..BusBenchOptions::default()
                },
                "consumers",
            ),
        ] {
            match run_bus_bench(opts).await {
                Err(BusError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn rejects_a_malformed_database_url_without_leaking_its_password() {
        let backend = BenchBackend::Postgres {
            url: "postgres://bench:s3cret@127.0.0.1:notaport/db".into(),
        };
        match run_bus_bench_on(&backend, BusBenchOptions::default()).await {
            Err(BusError::InvalidArgument { field, message }) => {
                assert_eq!(field, "url");
                assert!(!message.contains("s3cret"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
