//! `herald bench routing`: the routing worker taking events from the
//! `email-events` topic's route queue to shard queues, on the embedded store
//! and bus, against raw SQLite doing the same row work in the same run.
//!
//! Setup (not measured): `customers` customers assigned round-robin to
//! `shards` shards, `migrating_percent` of them migrating, and `events`
//! email events published to the topic, spread evenly over the customers.
//! Herald's figure: events per second for one route worker to drain its
//! queue (deliver to the shard queues, park the migrating customers'
//! events). The reference, run first on its own SQLite file with the same
//! pragmas: per batch, in one transaction, read the oldest rows of a source
//! table, look up their customers' shards, insert them into a shard queue
//! table and delete them from the source.
//!
//! Then the release: 1,000 events parked for one migrating customer, the
//! releaser running with its default sweep interval, and the time from
//! recording `migration_succeeded` (as the API does, waking the releaser)
//! until the last of those events is visible in the new shard's queue.
//!
//! Every event must land once (delivered or parked) or the run fails.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald_bus::{Bus, EmbeddedBus, OutgoingMessage};
use herald_core::sharding::{
    CustomerId, ShardId, ShardingEvent, ShardingEventId, ShardingEventKind,
};
use herald_core::{SystemClock, Timestamp, TopicName};
use herald_router::routing::{
    default_route, ensure_topology, Releaser, RouteWorker, RoutingSettings,
};
use herald_router::sharding::{record, ReleaseSignal};
use herald_store::{SqliteDb, Store};
use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{flush_to_disk, per_second, sqlite_files, RunDir};

#[derive(Debug, Clone)]
pub struct RoutingBenchOptions {
    pub dir: Option<PathBuf>,
    pub events: u64,
    pub customers: u64,
    pub shards: u64,
    pub migrating_percent: f64,
    /// Events per worker batch (and per reference transaction).
    pub batch: usize,
    /// Events parked for the release measurement.
    pub held: u64,
}

impl Default for RoutingBenchOptions {
    fn default() -> Self {
        Self {
            dir: None,
            events: 100_000,
            customers: 10_000,
            shards: 4,
            migrating_percent: 1.0,
            batch: 500,
            held: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutingBenchReport {
    pub events: u64,
    pub customers: u64,
    pub shards: u64,
    pub migrating: u64,
    pub batch: usize,
    pub herald_events_per_sec: f64,
    pub raw_events_per_sec: f64,
    pub ratio: f64,
    /// Of the events, parked for migrating customers.
    pub parked: u64,
    pub held: u64,
    /// From recording `migration_succeeded` to the last held event visible.
    pub release_ms: f64,
}

impl fmt::Display for RoutingBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "routing benchmark: {} events, {} customers over {} shards, {} migrating, batches of {}",
            self.events, self.customers, self.shards, self.migrating, self.batch
        )?;
        writeln!(
            f,
            "{:<24} {:>14} {:>18} {:>11}",
            "phase", "herald ev/s", "raw SQLite ev/s", "herald/raw"
        )?;
        writeln!(
            f,
            "{:<24} {:>14.0} {:>18.0} {:>11.2}",
            "topic → shard queues", self.herald_events_per_sec, self.raw_events_per_sec, self.ratio
        )?;
        writeln!(f, "events parked for migrating customers: {}", self.parked)?;
        write!(
            f,
            "release: {} held events visible in the new shard's queue {:.1} ms after migration_succeeded",
            self.held, self.release_ms
        )
    }
}

pub async fn run_routing_bench(options: RoutingBenchOptions) -> anyhow::Result<RoutingBenchReport> {
    if options.shards == 0 || options.customers == 0 || !(1..=1000).contains(&options.batch) {
        bail!("shards and customers must be at least 1, batch 1 to 1000");
    }
    let run = RunDir::create(options.dir.as_deref())?;
    let migrating = ((options.customers as f64) * options.migrating_percent / 100.0).round() as u64;

    let raw_db = run.path().join("reference.db");
    let raw_per_sec = reference(&raw_db, &options, migrating).await?;
    flush_to_disk(&sqlite_files(&raw_db))?;

    let db = SqliteDb::open(run.path().join("herald.db")).await?;
    let store = Store::from_sqlite(db.clone(), Arc::new(SystemClock));
    store.migrate().await?;
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(db));
    let route = default_route();
    ensure_topology(bus.as_ref(), std::slice::from_ref(&route)).await?;
    let signal = ReleaseSignal::new();

    eprintln!(
        "setting up: {} customers, {migrating} migrating, {} events published",
        options.customers, options.events
    );
    let mut placements = Vec::new();
    for c in 0..options.customers {
        placements.push(event(
            &format!("a{c}"),
            &customer(c),
            ShardingEventKind::Assigned {
                shard: shard(c % options.shards),
            },
        ));
        if c < migrating {
            placements.push(event(
                &format!("m{c}"),
                &customer(c),
                ShardingEventKind::MigrationStarted {
                    from: shard(c % options.shards),
                    to: shard((c + 1) % options.shards),
                },
            ));
        }
    }
    for chunk in placements.chunks(herald_store::sharding::MAX_BATCH) {
        store.sharding().record(chunk).await?;
    }
    let topic = TopicName::parse("email-events")?;
    let mut n = 0;
    while n < options.events {
        let batch: Vec<OutgoingMessage> = (n..(n + 500).min(options.events))
            .map(|i| email_event(i, i % options.customers))
            .collect();
        n += batch.len() as u64;
        bus.publish_batch(&topic, batch).await?;
    }

    let settings = RoutingSettings {
        batch_size: options.batch,
        ..RoutingSettings::default()
    };
    let worker = RouteWorker::new(route.clone(), store.clone(), bus.clone(), settings.clone())?;
    eprintln!("routing {} events with Herald", options.events);
    let started = Instant::now();
    let report = worker.drain().await?;
    let elapsed = started.elapsed();
    if report.delivered + report.held != options.events {
        bail!(
            "routed {} and parked {} of {} events",
            report.delivered,
            report.held,
            options.events
        );
    }
    let mut queued = 0;
    for s in 0..options.shards {
        let queue = route.queue_for(&shard(s))?;
        queued += bus.stats(&queue).await?.visible;
    }
    if queued != report.delivered {
        bail!(
            "{} events were delivered but the shard queues hold {queued}",
            report.delivered
        );
    }
    let herald_per_sec = per_second(options.events, elapsed);

    // The release: one more customer, migrating to a shard of its own.
    let mover = CustomerId::parse("release-customer")?;
    let target = ShardId::parse("release-target")?;
    store
        .sharding()
        .record(&[
            event(
                "r1",
                &mover,
                ShardingEventKind::Assigned { shard: shard(0) },
            ),
            event(
                "r2",
                &mover,
                ShardingEventKind::MigrationStarted {
                    from: shard(0),
                    to: target.clone(),
                },
            ),
        ])
        .await?;
    let mut n = 0;
    while n < options.held {
        let batch: Vec<OutgoingMessage> = (n..(n + 500).min(options.held))
            .map(|i| email_event_for(options.events + i, mover.as_str()))
            .collect();
        n += batch.len() as u64;
        bus.publish_batch(&topic, batch).await?;
    }
    let parked = worker.drain().await?.held;
    if parked != options.held {
        bail!("parked {parked} of {} events", options.held);
    }
    let releaser = Releaser::new(
        vec![route.clone()],
        store.clone(),
        bus.clone(),
        signal.clone(),
        settings,
        Arc::new(SystemClock),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(releaser.run(stop.clone()));
    let target_queue = route.queue_for(&target)?;
    let started = Instant::now();
    record(
        &store,
        &signal,
        &[event(
            "r3",
            &mover,
            ShardingEventKind::MigrationSucceeded {
                shard: target.clone(),
            },
        )],
    )
    .await?;
    let release = loop {
        let visible = match bus.stats(&target_queue).await {
            Ok(stats) => stats.visible,
            Err(herald_bus::BusError::QueueNotFound(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        if visible >= options.held {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {visible} of {} held events released after 60s",
                options.held
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.cancel();
    running.await.context("the releaser task failed")??;
    store.close().await;

    Ok(RoutingBenchReport {
        events: options.events,
        customers: options.customers,
        shards: options.shards,
        migrating,
        batch: options.batch,
        herald_events_per_sec: herald_per_sec,
        raw_events_per_sec: raw_per_sec,
        ratio: herald_per_sec / raw_per_sec.max(1e-9),
        parked: report.held,
        held: options.held,
        release_ms: release.as_secs_f64() * 1000.0,
    })
}

fn customer(c: u64) -> CustomerId {
    CustomerId::parse(format!("c-{c}")).expect("a valid customer id")
}

fn shard(s: u64) -> ShardId {
    ShardId::parse(format!("s{s}")).expect("a valid shard id")
}

fn event(id: &str, customer: &CustomerId, kind: ShardingEventKind) -> ShardingEvent {
    ShardingEvent {
        id: ShardingEventId::parse(id).expect("a valid event id"),
        customer: customer.clone(),
        kind,
        occurred_at: Timestamp(1_764_072_000_000),
    }
}

fn event_body(i: u64, customer: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "provider": "sendgrid",
        "provider_event_id": format!("pe-{i}"),
        "type": "delivered",
        "address": format!("member-{i}@example.com"),
        "occurred_at": 1_764_072_000_000u64 + i,
        "message_id": format!("<a1.m{i}@herald.localhost>"),
        "custom_args": {"customer_id": customer, "alert_id": "a1", "member_id": format!("m{i}")},
        "raw": {"event": "delivered", "sg_event_id": format!("pe-{i}"), "response": "250 OK"}
    }))
    .expect("JSON")
}

fn email_event_for(i: u64, customer: &str) -> OutgoingMessage {
    OutgoingMessage::new(event_body(i, customer))
        .attribute("provider", "sendgrid")
        .attribute("type", "delivered")
        .attribute("alert_id", "a1")
        .dedup_key(format!("sendgrid:pe-{i}"))
}

fn email_event(i: u64, c: u64) -> OutgoingMessage {
    email_event_for(i, customer(c).as_str())
}

/// Raw SQLite doing the router's row work: read a batch of source rows in
/// order, look up their customers' shards, insert them into the shard queue
/// table, delete them from the source; one transaction per batch.
async fn reference(
    path: &std::path::Path,
    options: &RoutingBenchOptions,
    migrating: u64,
) -> anyhow::Result<f64> {
    let db = SqliteDb::open(path).await?;
    let pool = &db.writer;
    for statement in [
        "CREATE TABLE source (seq INTEGER PRIMARY KEY, customer TEXT NOT NULL, body BLOB NOT NULL)",
        "CREATE TABLE placements (customer TEXT PRIMARY KEY, shard TEXT, migrating INTEGER NOT NULL)",
        "CREATE TABLE shard_queue (seq INTEGER PRIMARY KEY, queue TEXT NOT NULL, body BLOB NOT NULL)",
        "CREATE TABLE held (seq INTEGER PRIMARY KEY, customer TEXT NOT NULL, body BLOB NOT NULL)",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    let mut tx = pool.begin().await?;
    for c in 0..options.customers {
        sqlx::query("INSERT INTO placements (customer, shard, migrating) VALUES (?1, ?2, ?3)")
            .bind(customer(c).as_str())
            .bind(shard(c % options.shards).as_str())
            .bind(c < migrating)
            .execute(&mut *tx)
            .await?;
    }
    for i in 0..options.events {
        sqlx::query("INSERT INTO source (customer, body) VALUES (?1, ?2)")
            .bind(customer(i % options.customers).as_str())
            .bind(event_body(i, customer(i % options.customers).as_str()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    flush_to_disk(&sqlite_files(path))?;

    eprintln!("routing {} events with raw SQLite", options.events);
    let started = Instant::now();
    let mut moved = 0u64;
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "SELECT s.seq, s.body, s.customer, p.shard, p.migrating FROM \
                 (SELECT seq, customer, body FROM source ORDER BY seq LIMIT ?1) AS s \
             LEFT JOIN placements AS p ON p.customer = s.customer ORDER BY s.seq",
        )
        .bind(options.batch as i64)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let mut last = 0i64;
        let mut held = Vec::new();
        let mut delivered = Vec::new();
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let body: Vec<u8> = row.try_get("body")?;
            let migrating: bool = row.try_get("migrating")?;
            if migrating {
                held.push((row.try_get::<String, _>("customer")?, body));
            } else {
                let shard: String = row.try_get("shard")?;
                delivered.push((format!("shard-{shard}.email-events"), body));
            }
            last = seq;
        }
        // Multi-row inserts, as the bus itself writes a batch: one
        // statement per table and batch, not a round trip per row.
        for (table, column, values) in [
            ("held", "customer", held),
            ("shard_queue", "queue", delivered),
        ] {
            if values.is_empty() {
                continue;
            }
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "INSERT INTO {table} ({column}, body) "
            ));
            insert.push_values(values, |mut row, (key, body)| {
                row.push_bind(key).push_bind(body);
            });
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM source WHERE seq <= ?1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        moved += rows.len() as u64;
    }
    let elapsed = started.elapsed();
    if moved != options.events {
        bail!("the reference moved {moved} of {} events", options.events);
    }
    db.close().await;
    Ok(per_second(options.events, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_routes_every_event_and_releases_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let report = run_routing_bench(RoutingBenchOptions {
            dir: Some(dir.path().to_path_buf()),
            events: 2_000,
            customers: 200,
            shards: 4,
            migrating_percent: 5.0,
            batch: 100,
            held: 300,
        })
        .await
        .unwrap();
        assert_eq!(report.migrating, 10);
        assert_eq!(report.parked, 100, "5% of customers, evenly loaded");
        assert!(report.herald_events_per_sec > 0.0 && report.raw_events_per_sec > 0.0);
        assert!(report.to_string().contains("herald/raw"));
    }
}
