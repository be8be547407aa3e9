//! Sharding events through the API and the queue, and the routing worker
//! with its holds, on SQLite + the embedded bus and on PostgreSQL + the
//! PostgreSQL bus (`HERALD_TEST_DATABASE_URL`; skipped without it unless
//! `HERALD_REQUIRE_POSTGRES=1`).
//!
//! Workers are driven with `step`/`drain` and the releaser with `sweep`,
//! so no test waits on a timer, except the two that check that a woken
//! releaser and a delayed re-check happen on their own (bounded polls).

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_alerts::{Composer, MailerSettings, Transports};
use herald_bus::{Bus, EmbeddedBus, OutgoingMessage, PostgresBus};
use herald_core::api_key::{ApiKeyName, Scope, Scopes};
use herald_core::routing::Route;
use herald_core::{ManualClock, QueueName, SystemClock, Timestamp, TopicName};
use herald_router::routing::{
    default_route, ensure_topology, route_dead_letter, route_queue, Releaser, RouteWorker,
    RoutingSettings,
};
use herald_router::sharding::{ReleaseSignal, ShardingConsumer, SHARDING_EVENTS_QUEUE};
use herald_server::{AppState, HttpLimits};
use herald_store::{PgDb, SqliteDb, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const LIMITS: HttpLimits = HttpLimits {
    max_body_bytes: 256 * 1024,
    request_timeout: Duration::from_secs(30),
};

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One test's world: store, bus, the HTTP app, and how to reach the same
/// database again as a restarted process would.
struct World {
    store: Store,
    bus: Arc<dyn Bus>,
    clock: Arc<ManualClock>,
    signal: ReleaseSignal,
    address: String,
    client: reqwest::Client,
    admin_key: String,
    read_key: String,
    target: Target,
    shutdown: CancellationToken,
}

enum Target {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

fn postgres_url() -> Option<String> {
    match std::env::var("HERALD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("HERALD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set")
        }
        _ => {
            eprintln!("skipped: set HERALD_TEST_DATABASE_URL to run the PostgreSQL cases");
            None
        }
    }
}

fn schema_options(url: &str, schema: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(url)
        .expect("postgres url")
        .options([("search_path", schema)])
}

impl World {
    async fn open(backend: Backend) -> Option<World> {
        let clock = Arc::new(ManualClock::at(Timestamp(1_764_072_000_000)));
        let target = match backend {
            Backend::Sqlite => Target::Sqlite(tempfile::tempdir().expect("temp dir")),
            Backend::Postgres => {
                let url = postgres_url()?;
                let schema = format!("herald_test_{}", uuid_like());
                let mut admin = PgConnection::connect(&url).await.expect("connect");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut admin)
                    .await
                    .expect("create schema");
                let _ = admin.close().await;
                Target::Postgres { url, schema }
            }
        };
        let (store, bus) = connect(&target, clock.clone()).await;
        store.migrate().await.expect("migrate");
        let data = tempfile::tempdir().expect("temp dir");
        let settings = MailerSettings::default();
        let transports = Transports::build(
            &Default::default(),
            &settings.default_transport,
            data.path(),
        )
        .expect("transports");
        let composer = Composer::new(
            store.clone(),
            Arc::new(transports),
            &settings,
            &[7u8; 32],
            Arc::new(SystemClock),
        )
        .expect("composer");
        let signal = ReleaseSignal::new();
        let state = AppState::new(store.clone(), bus.clone(), Arc::new(composer))
            .with_release_signal(signal.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(herald_server::serve(
            listener,
            herald_server::router(state, LIMITS),
            shutdown.clone(),
        ));
        let key = |scope: Scope, name: &str| {
            let store = store.clone();
            let name = ApiKeyName::parse(name).unwrap();
            async move {
                let (_, token) = store
                    .api_keys()
                    .create(&name, &Scopes::new([scope]).unwrap())
                    .await
                    .expect("key");
                token.expose().to_owned()
            }
        };
        Some(World {
            admin_key: key(Scope::Admin, "admin").await,
            read_key: key(Scope::ReadOnly, "reader").await,
            store,
            bus,
            clock,
            signal,
            address,
            client: reqwest::Client::new(),
            target,
            shutdown,
        })
    }

    /// The same database through new connections, as after a restart.
    async fn reconnect(&self) -> (Store, Arc<dyn Bus>) {
        connect(&self.target, self.clock.clone()).await
    }

    async fn cleanup(self) {
        self.shutdown.cancel();
        self.store.close().await;
        if let Target::Postgres { url, schema } = &self.target {
            if let Ok(mut admin) = PgConnection::connect(url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        }
    }

    async fn post(&self, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn event(&self, body: Value) -> (StatusCode, Value) {
        self.post(&self.admin_key, "/api/sharding-events", &body)
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(&self.read_key)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn placement(&self, customer: &str) -> Value {
        let (status, body) = self
            .get(&format!("/api/customers/{customer}/placement"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["placement"].clone()
    }

    async fn setup_routes(&self, routes: &[Route]) {
        ensure_topology(self.bus.as_ref(), routes)
            .await
            .expect("topology");
    }

    fn worker(&self, route: &Route) -> RouteWorker {
        RouteWorker::new(
            route.clone(),
            self.store.clone(),
            self.bus.clone(),
            RoutingSettings::default(),
        )
        .unwrap()
    }

    fn releaser(&self, routes: &[Route]) -> Releaser {
        Releaser::new(
            routes.to_vec(),
            self.store.clone(),
            self.bus.clone(),
            self.signal.clone(),
            RoutingSettings::default(),
            self.clock.clone(),
        )
    }

    /// Publishes one email event of `customer` (or without a customer id).
    async fn publish(&self, customer: Option<&str>, n: u32) {
        let mut body = json!({
            "provider": "sendgrid", "provider_event_id": format!("pe-{n}"),
            "type": "open", "n": n, "custom_args": {}
        });
        if let Some(customer) = customer {
            body["custom_args"]["customer_id"] = json!(customer);
        }
        let message = OutgoingMessage::new(serde_json::to_vec(&body).unwrap())
            .attribute("type", "open")
            .dedup_key(format!("sendgrid:pe-{n}"));
        self.bus
            .publish(&TopicName::parse("email-events").unwrap(), message)
            .await
            .expect("publish");
    }

    /// The `n` of every event in a queue, oldest first.
    async fn numbers(&self, queue: &str) -> Vec<u64> {
        let queue = QueueName::parse(queue).unwrap();
        match self.bus.peek(&queue, 1000).await {
            Ok(messages) => messages
                .iter()
                .map(|m| {
                    serde_json::from_slice::<Value>(&m.body).unwrap()["n"]
                        .as_u64()
                        .unwrap()
                })
                .collect(),
            Err(herald_bus::BusError::QueueNotFound(_)) => vec![],
            Err(e) => panic!("peek {queue}: {e}"),
        }
    }
}

async fn connect(target: &Target, clock: Arc<ManualClock>) -> (Store, Arc<dyn Bus>) {
    match target {
        Target::Sqlite(dir) => {
            let db = SqliteDb::open(dir.path().join("herald.db"))
                .await
                .expect("open sqlite");
            let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(db.clone()));
            (Store::from_sqlite(db, clock), bus)
        }
        Target::Postgres { url, schema } => {
            let db = PgDb::connect_with(schema_options(url, schema))
                .await
                .expect("connect");
            let store = Store::from_postgres(db.clone(), clock);
            store.migrate().await.expect("migrate");
            let bus: Arc<dyn Bus> = Arc::new(PostgresBus::new(db).await.expect("postgres bus"));
            (store, bus)
        }
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}{:x}", std::process::id())
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status}: not JSON ({e})"))
    };
    (status, body)
}

async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Arc<World>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(world) = World::open(backend).await else {
        return;
    };
    let world = Arc::new(world);
    let outcome = tokio::spawn(case(world.clone())).await;
    if let Ok(world) = Arc::try_unwrap(world) {
        world.cleanup().await;
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task ended without finishing: {e}"),
        }
    }
}

macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Backend::Sqlite, super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::Backend::Postgres, super::$case).await;
                }
            )+
        }
    };
}

both_backends!(
    api_walks_every_legal_transition,
    api_refuses_illegal_transitions_naming_the_state,
    api_duplicates_late_events_and_batches,
    api_refuses_bad_input_and_keys,
    parked_events_are_released_in_order_to_the_new_shard,
    events_for_a_stable_customer_queue_behind_a_draining_hold,
    migration_failed_releases_to_the_old_shard,
    a_woken_releaser_releases_without_a_sweep_timer,
    delay_mode_rechecks_until_the_migration_ends,
    broadcast_sends_to_every_known_shard,
    unknown_customers_follow_each_policy,
    holds_survive_a_restart,
    old_holds_expire_to_the_route_dead_letter_queue,
    sharding_events_queue_follows_the_same_rules,
);

fn at(minute: u32) -> String {
    format!("2026-11-25T12:{minute:02}:00Z")
}

fn assigned(id: &str, customer: &str, shard: &str, minute: u32) -> Value {
    json!({"id": id, "customer": customer, "kind": "assigned", "shard": shard, "occurred_at": at(minute)})
}

fn started(id: &str, customer: &str, from: &str, to: &str, minute: u32) -> Value {
    json!({"id": id, "customer": customer, "kind": "migration_started", "from": from, "to": to, "occurred_at": at(minute)})
}

fn succeeded(id: &str, customer: &str, shard: &str, minute: u32) -> Value {
    json!({"id": id, "customer": customer, "kind": "migration_succeeded", "shard": shard, "occurred_at": at(minute)})
}

fn failed(id: &str, customer: &str, minute: u32) -> Value {
    json!({"id": id, "customer": customer, "kind": "migration_failed", "occurred_at": at(minute)})
}

async fn api_walks_every_legal_transition(w: Arc<World>) {
    assert_eq!(w.placement("c1").await, json!({"state": "unknown"}));
    let steps = [
        (
            assigned("e1", "c1", "a", 1),
            json!({"state": "stable", "shard": "a"}),
            Value::Null,
        ),
        (
            assigned("e2", "c1", "b", 2),
            json!({"state": "stable", "shard": "b"}),
            Value::Null,
        ),
        (
            started("e3", "c1", "b", "c", 3),
            json!({"state": "migrating", "from": "b", "to": "c"}),
            Value::Null,
        ),
        (
            succeeded("e4", "c1", "c", 4),
            json!({"state": "stable", "shard": "c"}),
            json!("c"),
        ),
        (
            started("e5", "c1", "c", "a", 5),
            json!({"state": "migrating", "from": "c", "to": "a"}),
            Value::Null,
        ),
        (
            failed("e6", "c1", 6),
            json!({"state": "stable", "shard": "c"}),
            json!("c"),
        ),
    ];
    for (event, placement, release_to) in steps {
        let (status, body) = w.event(event.clone()).await;
        assert_eq!(status, StatusCode::OK, "{event}: {body}");
        assert_eq!(body["placement"], placement, "{body}");
        assert_eq!(body["release_to"], release_to, "{body}");
        assert_eq!(body["outcome"], "applied");
        assert_eq!(body["duplicate"], false);
        assert_eq!(w.placement("c1").await, placement);
    }
    let (status, history) = w.get("/api/customers/c1/sharding-history?limit=4").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["items"].as_array().unwrap().len(), 4);
    assert_eq!(history["items"][2]["kind"], "migration_started");
    let cursor = history["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = w
        .get(&format!(
            "/api/customers/c1/sharding-history?limit=4&after={cursor}"
        ))
        .await;
    let ids: Vec<_> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["e5", "e6"]);
    let (_, placement) = w.get("/api/customers/c1/placement").await;
    assert_eq!(placement["last_event_id"], "e6");
    assert_eq!(placement["last_occurred_at"], "2026-11-25T12:06:00.000Z");
}

async fn api_refuses_illegal_transitions_naming_the_state(w: Arc<World>) {
    let cases = [
        (failed("x1", "c1", 1), "unknown"),
        (succeeded("x2", "c1", "a", 1), "unknown"),
        (started("x3", "c1", "a", "b", 1), "unknown"),
    ];
    for (event, state) in cases {
        let (status, body) = w.event(event.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{event}: {body}");
        assert_eq!(body["error"]["code"], "illegal_transition");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("while the customer is {state}")),
            "{message}"
        );
    }
    assert_eq!(
        w.event(assigned("y1", "c1", "a", 1)).await.0,
        StatusCode::OK
    );
    let (status, body) = w.event(started("y2", "c1", "z", "b", 2)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the customer is stable(a), so a migration must start from shard a"),
        "{body}"
    );
    assert_eq!(w.event(failed("y3", "c1", 3)).await.0, StatusCode::CONFLICT);
    assert_eq!(
        w.event(started("y4", "c1", "a", "b", 4)).await.0,
        StatusCode::OK
    );
    let (status, body) = w.event(succeeded("y5", "c1", "c", 5)).await;
    assert_eq!(status, StatusCode::CONFLICT, "an unknown target shard");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("migrating(a→b)"),
        "{body}"
    );
    assert_eq!(
        w.event(assigned("y6", "c1", "c", 6)).await.0,
        StatusCode::CONFLICT
    );
    let (_, history) = w.get("/api/customers/c1/sharding-history").await;
    assert_eq!(
        history["items"].as_array().unwrap().len(),
        2,
        "refused events are recorded nowhere: {history}"
    );
}

async fn api_duplicates_late_events_and_batches(w: Arc<World>) {
    let (_, first) = w.event(assigned("d1", "c1", "a", 10)).await;
    let (status, again) = w.event(assigned("d1", "c1", "a", 10)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["recorded_at"], first["recorded_at"]);
    let (status, body) = w.event(assigned("d1", "c1", "b", 10)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "id_reused");
    assert_eq!(body["error"]["field"], "id");

    // Out of order: an older event arriving late changes nothing.
    let (status, late) = w.event(assigned("d0", "c1", "z", 5)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(late["outcome"], "superseded");
    assert_eq!(
        w.placement("c1").await,
        json!({"state": "stable", "shard": "a"})
    );

    // A batch is all or nothing and names the refused index.
    let (status, body) = w
        .event(json!([
            assigned("b1", "c2", "a", 1),
            started("b2", "c2", "a", "b", 2),
            succeeded("b3", "c2", "c", 3),
        ]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["field"], "[2]");
    assert_eq!(w.placement("c2").await, json!({"state": "unknown"}));
    let (status, body) = w
        .event(json!([
            assigned("b1", "c2", "a", 1),
            started("b2", "c2", "a", "b", 2),
            succeeded("b3", "c2", "b", 3),
            assigned("d1", "c1", "a", 10),
        ]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answers = body.as_array().unwrap();
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[2]["release_to"], "b");
    assert_eq!(answers[3]["duplicate"], true);
    assert_eq!(
        w.placement("c2").await,
        json!({"state": "stable", "shard": "b"})
    );
}

async fn api_refuses_bad_input_and_keys(w: Arc<World>) {
    let cases = [
        (
            json!({"id": "e", "customer": "c", "kind": "assigned", "occurred_at": at(1)}),
            "shard",
        ),
        (
            json!({"id": "e", "customer": "c", "kind": "assigned", "shard": "a b", "occurred_at": at(1)}),
            "shard",
        ),
        (
            json!({"id": "e", "customer": "c", "kind": "assigned", "shard": "a", "occurred_at": "noon"}),
            "occurred_at",
        ),
        (
            json!({"id": "e", "customer": "c", "kind": "teleported", "occurred_at": at(1)}),
            "kind",
        ),
        (
            json!({"customer": "c", "kind": "migration_failed", "occurred_at": at(1)}),
            "id",
        ),
        (
            json!({"id": "e", "customer": "c", "kind": "migration_failed", "occurred_at": at(1), "shard": "a"}),
            "shard",
        ),
        (
            json!({"id": "e", "customer": "c", "kind": "migration_failed", "occurred_at": at(1), "forged": true}),
            "forged",
        ),
        (
            json!([assigned("ok", "c", "a", 1), {"id": "e", "customer": "c", "kind": "assigned", "occurred_at": at(1)}]),
            "[1].shard",
        ),
        (json!([]), "body"),
        (json!("assigned"), "body"),
    ];
    for (body, field) in cases {
        let (status, answer) = w.event(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|i| assigned(&format!("m{i}"), "c", "a", 1))
        .collect();
    let (status, answer) = w.event(Value::Array(too_many)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 1000"));

    let response = w
        .client
        .post(format!("{}/api/sharding-events", w.address))
        .bearer_auth(&w.admin_key)
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let huge = json!({"id": "e", "customer": "c".repeat(300 * 1024), "kind": "migration_failed", "occurred_at": at(1)});
    assert_eq!(w.event(huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, _) = w
        .post(
            &w.read_key,
            "/api/sharding-events",
            &assigned("r1", "c", "a", 1),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "writing needs the admin scope"
    );
    let (status, _) = w
        .post(
            "hk_forged",
            "/api/sharding-events",
            &assigned("r1", "c", "a", 1),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = w.get("/api/customers/a%20b/placement").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = w.get("/api/customers/c/sharding-history?after=x").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = w.get("/api/customers/c/sharding-history?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(w.placement("c").await, json!({"state": "unknown"}));
}

async fn parked_events_are_released_in_order_to_the_new_shard(w: Arc<World>) {
    let route = default_route();
    w.setup_routes(std::slice::from_ref(&route)).await;
    let worker = w.worker(&route);
    let releaser = w.releaser(std::slice::from_ref(&route));
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        assigned("a2", "c2", "a", 1)
    ]))
    .await;
    w.publish(Some("c1"), 1).await;
    worker.drain().await.unwrap();
    assert_eq!(w.numbers("shard-a.email-events").await, [1]);

    w.event(started("m1", "c1", "a", "b", 2)).await;
    for n in 2..=4 {
        w.publish(Some("c1"), n).await;
    }
    w.publish(Some("c2"), 5).await;
    let report = worker.drain().await.unwrap();
    assert_eq!((report.held, report.delivered), (3, 1));
    assert_eq!(w.numbers("shard-a.email-events").await, [1, 5]);
    assert_eq!(w.numbers("shard-b.email-events").await, Vec::<u64>::new());
    assert_eq!(
        releaser.sweep().await.unwrap().released,
        0,
        "still migrating"
    );

    let (status, _) = w.event(succeeded("m2", "c1", "b", 3)).await;
    assert_eq!(status, StatusCode::OK);
    let report = releaser.sweep().await.unwrap();
    assert_eq!(report.released, 3);
    assert_eq!(w.numbers("shard-b.email-events").await, [2, 3, 4]);
    w.publish(Some("c1"), 6).await;
    worker.drain().await.unwrap();
    assert_eq!(w.numbers("shard-b.email-events").await, [2, 3, 4, 6]);
    assert!(w.store.holds().summary().await.unwrap().is_empty());
    let queue = route_queue(&route).unwrap();
    let stats = w.bus.stats(&queue).await.unwrap();
    assert_eq!(stats.visible + stats.in_flight, 0, "every event acked");
}

async fn events_for_a_stable_customer_queue_behind_a_draining_hold(w: Arc<World>) {
    let route = default_route();
    w.setup_routes(std::slice::from_ref(&route)).await;
    let worker = w.worker(&route);
    let releaser = w.releaser(std::slice::from_ref(&route));
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        started("a2", "c1", "a", "b", 2)
    ]))
    .await;
    for n in 1..=3 {
        w.publish(Some("c1"), n).await;
    }
    worker.drain().await.unwrap();
    w.event(succeeded("a3", "c1", "b", 3)).await;
    // Stable now, but the hold is not released yet: new events go behind it.
    w.publish(Some("c1"), 4).await;
    w.publish(Some("c1"), 5).await;
    let report = worker.drain().await.unwrap();
    assert_eq!(report.held, 2);
    assert_eq!(w.numbers("shard-b.email-events").await, Vec::<u64>::new());
    releaser.sweep().await.unwrap();
    w.publish(Some("c1"), 6).await;
    worker.drain().await.unwrap();
    assert_eq!(w.numbers("shard-b.email-events").await, [1, 2, 3, 4, 5, 6]);
}

async fn migration_failed_releases_to_the_old_shard(w: Arc<World>) {
    let route = default_route();
    w.setup_routes(std::slice::from_ref(&route)).await;
    let worker = w.worker(&route);
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        started("a2", "c1", "a", "b", 2)
    ]))
    .await;
    w.publish(Some("c1"), 1).await;
    w.publish(Some("c1"), 2).await;
    worker.drain().await.unwrap();
    let (_, body) = w.event(failed("a3", "c1", 3)).await;
    assert_eq!(body["release_to"], "a");
    w.releaser(std::slice::from_ref(&route))
        .sweep()
        .await
        .unwrap();
    assert_eq!(w.numbers("shard-a.email-events").await, [1, 2]);
    assert_eq!(w.numbers("shard-b.email-events").await, Vec::<u64>::new());
}

/// The releaser runs with an hour between sweeps: only the signal the API
/// fires on `migration_succeeded` can make it release.
async fn a_woken_releaser_releases_without_a_sweep_timer(w: Arc<World>) {
    let route = default_route();
    w.setup_routes(std::slice::from_ref(&route)).await;
    let worker = w.worker(&route);
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        started("a2", "c1", "a", "b", 2)
    ]))
    .await;
    for n in 1..=20 {
        w.publish(Some("c1"), n).await;
    }
    worker.drain().await.unwrap();
    let settings = RoutingSettings {
        release_interval: Duration::from_secs(3600),
        ..RoutingSettings::default()
    };
    let releaser = Releaser::new(
        vec![route.clone()],
        w.store.clone(),
        w.bus.clone(),
        w.signal.clone(),
        settings,
        w.clock.clone(),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(releaser.run(stop.clone()));
    w.event(succeeded("a3", "c1", "b", 3)).await;
    let expected: Vec<u64> = (1..=20).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.numbers("shard-b.email-events").await != expected {
        assert!(tokio::time::Instant::now() < deadline, "not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
}

async fn delay_mode_rechecks_until_the_migration_ends(w: Arc<World>) {
    let route: Route = serde_json::from_value(json!({
        "name": "delayed", "source": "email-events", "key": "/custom_args/customer_id",
        "target": "shard-{shard}.email-events", "migrating": "delay:200ms"
    }))
    .unwrap();
    w.setup_routes(std::slice::from_ref(&route)).await;
    let worker = w.worker(&route);
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        started("a2", "c1", "a", "b", 2)
    ]))
    .await;
    w.publish(Some("c1"), 1).await;
    let report = worker.drain().await.unwrap();
    assert_eq!(report.delayed, 1);
    assert!(
        w.store.holds().summary().await.unwrap().is_empty(),
        "nothing parked"
    );
    // Still migrating at the re-check: delayed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = worker.drain().await.unwrap();
        if report.delayed > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never re-checked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.event(succeeded("a3", "c1", "b", 3)).await;
    while w.numbers("shard-b.email-events").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        worker.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.numbers("shard-b.email-events").await, [1]);
    let peeked = w
        .bus
        .peek(&QueueName::parse("shard-b.email-events").unwrap(), 10)
        .await
        .unwrap();
    assert!(!peeked[0].attributes.contains_key("herald_origin"));
}

async fn broadcast_sends_to_every_known_shard(w: Arc<World>) {
    let route: Route = serde_json::from_value(json!({
        "name": "fanout", "source": "email-events",
        "target": "shard-{shard}.email-events", "broadcast": true
    }))
    .unwrap();
    w.setup_routes(std::slice::from_ref(&route)).await;
    let worker = w.worker(&route);
    w.publish(Some("c1"), 1).await;
    worker.drain().await.unwrap();
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        assigned("a2", "c2", "b", 1),
        started("a3", "c2", "b", "c", 2)
    ]))
    .await;
    w.publish(Some("c1"), 2).await;
    w.publish(None, 3).await;
    let report = worker.drain().await.unwrap();
    assert_eq!(report.delivered, 2);
    for shard in ["a", "b", "c"] {
        assert_eq!(
            w.numbers(&format!("shard-{shard}.email-events")).await,
            [2, 3],
            "shard {shard}"
        );
    }
}

async fn unknown_customers_follow_each_policy(w: Arc<World>) {
    let route = |name: &str, unknown: Option<&str>| -> Route {
        let mut config = json!({
            "name": name, "source": "email-events", "key": "/custom_args/customer_id",
            "target": format!("{name}-{{shard}}.in"),
        });
        if let Some(unknown) = unknown {
            config["unknown"] = json!(unknown);
        }
        serde_json::from_value(config).unwrap()
    };
    let routes = [
        route("dflt", None),
        route("lost", Some("queue:lost-events")),
        route("deflt", Some("shard:z")),
        route("drops", Some("drop")),
    ];
    w.setup_routes(&routes).await;
    w.publish(Some("nobody"), 1).await;
    w.publish(None, 2).await;
    for route in &routes {
        let report = w.worker(route).drain().await.unwrap();
        assert_eq!(report.unroutable, 2, "{}", route.name);
        let stats = w.bus.stats(&route_queue(route).unwrap()).await.unwrap();
        assert_eq!(stats.visible + stats.in_flight, 0, "{} acked", route.name);
    }
    assert_eq!(w.numbers("unroutable").await, [1, 2]);
    assert_eq!(w.numbers("lost-events").await, [1, 2]);
    assert_eq!(w.numbers("deflt-z.in").await, [1, 2]);
    for queue in ["drops-z.in", "dflt-z.in", "lost-z.in"] {
        assert!(w.numbers(queue).await.is_empty(), "{queue}");
    }
}

async fn holds_survive_a_restart(w: Arc<World>) {
    let route = default_route();
    w.setup_routes(std::slice::from_ref(&route)).await;
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        started("a2", "c1", "a", "b", 2)
    ]))
    .await;
    for n in 1..=5 {
        w.publish(Some("c1"), n).await;
    }
    w.worker(&route).drain().await.unwrap();
    w.event(succeeded("a3", "c1", "b", 3)).await;

    // A new process: new connections, new worker and releaser.
    let (store, bus) = w.reconnect().await;
    let releaser = Releaser::new(
        vec![route.clone()],
        store.clone(),
        bus.clone(),
        ReleaseSignal::new(),
        RoutingSettings::default(),
        w.clock.clone(),
    );
    assert_eq!(releaser.sweep().await.unwrap().released, 5);
    assert_eq!(w.numbers("shard-b.email-events").await, [1, 2, 3, 4, 5]);
    store.close().await;
}

async fn old_holds_expire_to_the_route_dead_letter_queue(w: Arc<World>) {
    let route = default_route();
    w.setup_routes(std::slice::from_ref(&route)).await;
    w.event(json!([
        assigned("a1", "c1", "a", 1),
        started("a2", "c1", "a", "b", 2)
    ]))
    .await;
    w.publish(Some("c1"), 1).await;
    w.worker(&route).drain().await.unwrap();
    w.clock.advance(Duration::from_secs(23 * 3600));
    w.publish(Some("c1"), 2).await;
    w.worker(&route).drain().await.unwrap();
    let releaser = w.releaser(std::slice::from_ref(&route));
    assert_eq!(releaser.sweep().await.unwrap().expired, 0);
    w.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(releaser.sweep().await.unwrap().expired, 1);
    let dlq = route_dead_letter(&route).unwrap();
    let letters = w.bus.peek(&dlq, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].attributes["reason"].contains("hold_max_age"),
        "{:?}",
        letters[0].attributes
    );
    assert_eq!(w.store.holds().summary().await.unwrap()[0].events, 1);
    let metrics = herald_server::telemetry::prometheus().render();
    assert!(
        metrics.contains("herald_holds_expired_total{route=\"shards\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_holds_events{route=\"shards\"}"));
}

async fn sharding_events_queue_follows_the_same_rules(w: Arc<World>) {
    w.setup_routes(&[default_route()]).await;
    let queue = QueueName::parse(SHARDING_EVENTS_QUEUE).unwrap();
    let consumer = ShardingConsumer::new(w.store.clone(), w.bus.clone(), w.signal.clone());
    for body in [
        assigned("q1", "c1", "a", 1),
        assigned("q1", "c1", "a", 1),
        failed("q2", "c1", 2),
        json!({"id": "q3", "kind": "assigned"}),
        started("q4", "c1", "a", "b", 3),
    ] {
        w.bus
            .send(
                &queue,
                OutgoingMessage::new(serde_json::to_vec(&body).unwrap()),
            )
            .await
            .unwrap();
    }
    w.bus
        .send(&queue, OutgoingMessage::new(&b"not json"[..]))
        .await
        .unwrap();
    let report = consumer.drain().await.unwrap();
    assert_eq!(
        (report.recorded, report.duplicates, report.dead_lettered),
        (2, 1, 3),
        "{report:?}"
    );
    assert_eq!(
        w.placement("c1").await,
        json!({"state": "migrating", "from": "a", "to": "b"})
    );
    let letters = w
        .bus
        .peek(&queue.default_dead_letter().unwrap(), 10)
        .await
        .unwrap();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.attributes["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons[0].contains("while the customer is stable(a)"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("customer"), "{reasons:?}");
    assert!(reasons[2].contains("not a sharding event"), "{reasons:?}");
}
