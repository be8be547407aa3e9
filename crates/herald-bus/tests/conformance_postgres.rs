//! The bus conformance suite against the PostgreSQL backend, each test in a
//! fresh schema of the database `HERALD_TEST_DATABASE_URL` names, plus what
//! the suite cannot see: several processes sharing one bus. Without that
//! variable every test prints why it skipped and passes, unless
//! `HERALD_REQUIRE_POSTGRES=1`.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_bus::bench::{run_bus_bench_on, BenchBackend, BusBenchOptions};
use herald_bus::{Bus, BusError, OutgoingMessage, PostgresBus, QueueConfig, ReceiveOptions};
use herald_core::QueueName;
use herald_store::PgDb;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection;

const DATABASE_URL_VAR: &str = "HERALD_TEST_DATABASE_URL";
const REQUIRE_VAR: &str = "HERALD_REQUIRE_POSTGRES";

const LONG: Duration = Duration::from_secs(60);

fn database_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_VAR}=1 but {DATABASE_URL_VAR} is not set: the PostgreSQL bus tests cannot run")
        }
        _ => {
            eprintln!("skipped: set {DATABASE_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run the PostgreSQL bus tests");
            None
        }
    }
}

/// A schema of one test's own, dropped when the test ends.
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// Creates the schema and applies the store's migrations to it; `None`
    /// when there is no database to test against.
    async fn create() -> Option<Self> {
        let url = database_url()?;
        let name = format!("herald_bus_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&url)
            .await
            .expect("connect to postgres");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
            .expect("create test schema");
        let _ = admin.close().await;
        let schema = TestSchema { url, name };
        schema.db().await.migrate().await.expect("migrate");
        Some(schema)
    }

    /// A new pool on the schema, as another process would have.
    async fn db(&self) -> PgDb {
        let options = PgConnectOptions::from_str(&self.url)
            .expect("postgres url")
            .options([("search_path", self.name.as_str())]);
        PgDb::connect_with(options)
            .await
            .expect("connect to postgres")
    }

    async fn bus(&self) -> PostgresBus {
        PostgresBus::new(self.db().await)
            .await
            .expect("open the postgres bus")
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop cannot wait on the test's runtime, so the schema goes from a
        // thread and runtime of its own. Best effort: a leftover schema only
        // costs disk space.
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

async fn fresh_bus() -> Option<(Arc<dyn Bus>, TestSchema)> {
    let schema = TestSchema::create().await?;
    let bus: Arc<dyn Bus> = Arc::new(schema.bus().await);
    Some((bus, schema))
}

herald_bus::bus_conformance_suite!(fresh_bus);

fn queue(name: &str) -> QueueName {
    QueueName::parse(name).expect("valid queue name")
}

fn opts(max: usize, wait: Duration) -> ReceiveOptions {
    ReceiveOptions {
        max,
        wait,
        visibility: LONG,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_never_hold_one_message_at_once() {
    const N: usize = 400;
    const CONSUMERS_EACH: usize = 3;
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let buses: Vec<Arc<dyn Bus>> = vec![Arc::new(schema.bus().await), Arc::new(schema.bus().await)];
    let q = queue("shared");
    buses[0]
        .ensure_queue(&q, QueueConfig::default())
        .await
        .unwrap();
    let batch: Vec<_> = (0..N)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let sent: HashSet<_> = buses[1]
        .send_batch(&q, batch)
        .await
        .unwrap()
        .into_iter()
        .collect();

    let held = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for bus in &buses {
        for _ in 0..CONSUMERS_EACH {
            let (bus, q, held) = (Arc::clone(bus), q.clone(), Arc::clone(&held));
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    // Visibility outlasts the test, so any second delivery
                    // of a message would be within its visibility.
                    let got = bus
                        .receive(&q, opts(7, Duration::from_millis(200)))
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    for d in &got {
                        assert_eq!(d.receive_count, 1, "redelivered {}", d.id);
                        assert!(
                            held.lock().unwrap().insert(d.id.clone()),
                            "{} held by two consumers at once",
                            d.id
                        );
                    }
                    tokio::task::yield_now().await;
                    let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
                    for d in &got {
                        held.lock().unwrap().remove(&d.id);
                        mine.push(d.id.clone());
                    }
                    for outcome in bus.ack_batch(&q, &receipts).await.unwrap() {
                        outcome.unwrap();
                    }
                }
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all.len(), N, "every message received exactly once");
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), sent);
    let stats = buses[0].stats(&q).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_when_another_process_sends() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let here = schema.bus().await;
    let there = schema.bus().await;
    let q = queue("wake");
    here.ensure_queue(&q, QueueConfig::default()).await.unwrap();
    let sender = {
        let q = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            there.send(&q, OutgoingMessage::new("ping")).await.unwrap();
        })
    };
    let started = Instant::now();
    let got = here
        .receive(&q, opts(1, Duration::from_secs(30)))
        .await
        .unwrap();
    let waited = started.elapsed();
    sender.await.unwrap();
    assert_eq!(got.len(), 1);
    // The fallback re-check comes only every 5 s: only the notification
    // from the other process can wake the poll this early.
    assert!(
        waited < Duration::from_secs(3),
        "woke only after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sends_with_one_dedup_key_store_one_message() {
    const KEYS: usize = 25;
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let (a, b) = (schema.bus().await, schema.bus().await);
    let q = queue("dedup");
    a.ensure_queue(&q, QueueConfig::default()).await.unwrap();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let (first, second) = tokio::join!(
            a.send(&q, OutgoingMessage::new("from a").dedup_key(&key)),
            b.send_batch(
                &q,
                vec![
                    OutgoingMessage::new("from b").dedup_key(&key),
                    OutgoingMessage::new("b, undeduplicated"),
                ]
            ),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(first, second[0], "key {key} stored twice");
        assert_ne!(second[0], second[1]);
    }
    assert_eq!(
        a.stats(&q).await.unwrap().visible,
        2 * KEYS as u64,
        "one message per key, plus the plain ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_stays_in_order_while_two_processes_send_and_another_acks() {
    const PER_SENDER: usize = 30;
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let senders = [schema.bus().await, schema.bus().await];
    let consumer = schema.bus().await;
    let q = queue("grouped");
    consumer
        .ensure_queue(&q, QueueConfig::default())
        .await
        .unwrap();
    let mut producing = Vec::new();
    for (name, bus) in ["a", "b"].into_iter().zip(senders) {
        let q = q.clone();
        producing.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                bus.send(&q, OutgoingMessage::new(format!("{name}{i}")).group("g"))
                    .await
                    .unwrap();
            }
        }));
    }
    // Each send lands while the consumer acks the group's previous head, the
    // race that would leave a group without a head if a held flag were ever
    // computed from a state still being changed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut order: HashMap<char, Vec<usize>> = HashMap::new();
    let mut received = 0;
    while received < 2 * PER_SENDER {
        assert!(
            Instant::now() < deadline,
            "the group stalled after {received} messages: {order:?}"
        );
        let got = consumer
            .receive(&q, opts(10, Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(got.len() <= 1, "two messages of one group at once");
        for d in got {
            let body = String::from_utf8(d.body.to_vec()).unwrap();
            let (sender, index) = body.split_at(1);
            order
                .entry(sender.chars().next().unwrap())
                .or_default()
                .push(index.parse().unwrap());
            consumer.ack(&q, &d.receipt).await.unwrap();
            received += 1;
        }
    }
    for task in producing {
        task.await.unwrap();
    }
    for (sender, indexes) in &order {
        assert_eq!(
            *indexes,
            (0..PER_SENDER).collect::<Vec<_>>(),
            "order of sender {sender}"
        );
    }
    assert!(consumer.peek(&q, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_keep_one_head_through_dead_letters_redrive_and_purge() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let bus = schema.bus().await;
    let q = queue("moves");
    let config = QueueConfig {
        max_receives: 1,
        ..QueueConfig::default()
    };
    bus.ensure_queue(&q, config).await.unwrap();
    let dlq = q.default_dead_letter().unwrap();
    bus.send_batch(
        &q,
        vec![
            OutgoingMessage::new("a1").group("a"),
            OutgoingMessage::new("a2").group("a"),
            OutgoingMessage::new("b1").group("b"),
            OutgoingMessage::new("free"),
        ],
    )
    .await
    .unwrap();
    let now = opts(10, Duration::ZERO);
    let first = bus.receive(&q, now).await.unwrap();
    assert_eq!(bodies(&first), ["a1", "b1", "free"]);
    for d in &first {
        bus.nack(&q, &d.receipt, Duration::ZERO).await.unwrap();
    }
    // Past max_receives: moved to the dead-letter queue, and a2 heads its group.
    assert!(bus.receive(&q, now).await.unwrap().is_empty());
    assert_eq!(peek_bodies(&bus, &dlq).await, ["a1", "b1", "free"]);
    assert_eq!(peek_bodies(&bus, &q).await, ["a2"]);

    assert_eq!(bus.redrive(&dlq, &q, None).await.unwrap(), 3);
    let next = bus.receive(&q, now).await.unwrap();
    assert_eq!(
        bodies(&next),
        ["a2", "b1", "free"],
        "a1 now waits behind a2"
    );
    for d in &next {
        bus.ack(&q, &d.receipt).await.unwrap();
    }
    let last = bus.receive(&q, now).await.unwrap();
    assert_eq!(bodies(&last), ["a1"]);

    bus.send(&q, OutgoingMessage::new("a3").group("a"))
        .await
        .unwrap();
    assert_eq!(bus.purge(&q).await.unwrap(), 2, "the leased head and a3");
    bus.send(&q, OutgoingMessage::new("a4").group("a"))
        .await
        .unwrap();
    assert_eq!(
        bodies(&bus.receive(&q, now).await.unwrap()),
        ["a4"],
        "the purged group takes new messages"
    );
}

fn bodies(deliveries: &[herald_bus::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

async fn peek_bodies(bus: &dyn Bus, queue: &QueueName) -> Vec<String> {
    bus.peek(queue, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_leaves_the_store_connections_committing_synchronously() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    // One connection for the listener and one for everything else, so the
    // store's next statement runs on the connection that leased.
    let options = PgConnectOptions::from_str(&schema.url)
        .unwrap()
        .options([("search_path", schema.name.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let bus = PostgresBus::new(PgDb { pool: pool.clone() }).await.unwrap();
    let q = queue("durable");
    bus.ensure_queue(&q, QueueConfig::default()).await.unwrap();
    bus.send(&q, OutgoingMessage::new("x")).await.unwrap();
    assert_eq!(
        bus.receive(&q, opts(1, Duration::ZERO))
            .await
            .unwrap()
            .len(),
        1
    );
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "on", "the lease's asynchronous commit leaked");
}

#[tokio::test]
async fn a_schema_without_the_migrations_is_refused_by_name() {
    let Some(url) = database_url() else {
        return;
    };
    let schema = TestSchema {
        url,
        name: format!("herald_bus_test_{}", uuid::Uuid::new_v4().simple()),
    };
    let mut admin = PgConnection::connect(&schema.url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {}", schema.name))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    match PostgresBus::new(schema.db().await).await {
        Err(BusError::Backend {
            backend, message, ..
        }) => {
            assert_eq!(backend, "postgres");
            assert!(message.contains("migrations"), "{message}");
            assert!(message.contains("bus_queues"), "{message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_benchmark_run_counts_every_message_once() {
    let Some(url) = database_url() else {
        return;
    };
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let bench_schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'herald\\_bench\\_%'";
    let before: i64 = sqlx::query_scalar(bench_schemas)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let report = run_bus_bench_on(
        &BenchBackend::Postgres { url: url.clone() },
        BusBenchOptions {
            dir: None,
            messages: 1_050,
            batch: 100,
            consumers: 3,
            body_bytes: 64,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.backend, report.reference),
        ("postgres", "PostgreSQL")
    );
    assert_eq!(report.messages, 1_050);
    for rate in [
        report.herald_send_per_sec,
        report.raw_insert_per_sec,
        report.herald_consume_per_sec,
        report.raw_consume_per_sec,
    ] {
        assert!(rate.is_finite() && rate > 0.0, "{report:?}");
    }
    assert!(
        report.to_string().contains("raw PostgreSQL msg/s"),
        "{report}"
    );
    let after: i64 = sqlx::query_scalar(bench_schemas)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(after <= before, "the run's schema is dropped");
}
