//! Push delivery against a real HTTP endpoint started by each test: it
//! verifies every request with Herald's Standard Webhooks verifier and
//! answers as the test scripts it (a status, or no answer within the
//! timeout). Each case runs on the embedded bus and, when
//! HERALD_TEST_DATABASE_URL is set, on the PostgreSQL bus.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_bus::{Bus, EmbeddedBus, OutgoingMessage, PostgresBus, QueueConfig, ReceiveOptions};
use herald_core::{Clock, ManualClock, QueueName, SystemClock, Timestamp};
use herald_router::push::{
    PushReport, PushSettings, PushTarget, PushWorker, ATTEMPTS_ATTRIBUTE, ORIGINAL_ID_ATTRIBUTE,
    REASON_ATTRIBUTE, SOURCE_QUEUE_ATTRIBUTE,
};
use herald_router::verify::{StandardWebhooks, VerifyError, Webhook, WebhookSecret};
use herald_store::Store;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_dGhpcyBpcyBub3QgdGhlIHNoYXJkJ3Mgc2VjcmV0";
/// Longest a step waits for a message due after a short retry delay.
const STEP_WAIT: Duration = Duration::from_secs(10);

/// What the endpoint does with one request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// No answer for longer than any timeout in these tests.
    Hang,
}

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    timestamp: i64,
    content_type: String,
    body: Bytes,
    verified: Result<(), VerifyError>,
    verified_with_other_secret: Result<(), VerifyError>,
}

struct Endpoint {
    script: Mutex<VecDeque<Answer>>,
    seen: Mutex<Vec<Seen>>,
    clock: Arc<dyn Clock>,
}

/// Starts an endpoint answering `script` in order, then 200; returns its URL.
async fn endpoint(script: &[Answer], clock: Arc<dyn Clock>) -> (String, Arc<Endpoint>) {
    let state = Arc::new(Endpoint {
        script: Mutex::new(script.iter().copied().collect()),
        seen: Mutex::new(Vec::new()),
        clock,
    });
    let app = axum::Router::new()
        .route("/events", axum::routing::post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

async fn receive(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = endpoint.clock.now();
    let check = |secret: &str| {
        let verifier = StandardWebhooks::new(WebhookSecret::parse(secret).unwrap());
        Webhook::new(headers.clone(), body.clone())
            .verify(&verifier, now)
            .map(drop)
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    endpoint.seen.lock().unwrap().push(Seen {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or(-1),
        content_type: header("content-type"),
        body: body.clone(),
        verified: check(SECRET),
        verified_with_other_secret: check(OTHER_SECRET),
    });
    let answer = endpoint.script.lock().unwrap().pop_front();
    match answer.unwrap_or(Answer::Status(200)) {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::OK
        }
    }
}

impl Endpoint {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Embedded,
    Postgres,
}

/// A bus of the backend's kind on a fresh database, and what keeps it.
async fn fresh_bus(backend: Backend) -> Option<(Arc<dyn Bus>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    match backend {
        Backend::Embedded => {
            let bus = EmbeddedBus::open(dir.path().join("herald.db"))
                .await
                .unwrap();
            Some((Arc::new(bus), dir))
        }
        Backend::Postgres => {
            let Ok(base) = std::env::var("HERALD_TEST_DATABASE_URL") else {
                assert!(
                    std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set"
                );
                eprintln!("skipped: HERALD_TEST_DATABASE_URL is not set");
                return None;
            };
            let schema = format!("herald_push_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::PgPool::connect(&base).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let separator = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
            let store = Store::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            let bus = PostgresBus::new(store.postgres().unwrap().clone())
                .await
                .unwrap();
            Some((Arc::new(bus), dir))
        }
    }
}

/// The push target of a test, from the same TOML an operator writes.
fn push_target(shard: &str, url: &str, extra: &str) -> PushTarget {
    let text = format!(
        "shard = \"{shard}\"\nqueue = \"shard-{shard}.email-events\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}"
    );
    let settings: PushSettings = toml::from_str(&text).unwrap();
    settings.resolve(0, |_| None).unwrap()
}

/// The recorder every test of this binary counts into; tests tell their
/// counts apart by their unique shard label.
fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// `herald_push_attempts_total{shard, outcome}` over the whole run. The
/// debugging recorder's snapshot drains every counter it reports (swaps it
/// to zero), and this file's tests run in parallel: each snapshot is added
/// to one tally, so one test's read never loses another test's counts.
fn attempts(shard: &str, outcome: &str) -> u64 {
    static TALLY: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());
    let mut tally = TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    for (key, _, _, value) in metrics().snapshot().into_vec() {
        let key = key.key();
        if key.name() != "herald_push_attempts_total" {
            continue;
        }
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        match (label("shard"), label("outcome"), value) {
            (Some(shard), Some(outcome), DebugValue::Counter(n)) => {
                *tally.entry((shard, outcome)).or_default() += n;
            }
            (.., other) => panic!("not a labelled counter: {key:?} {other:?}"),
        }
    }
    tally
        .get(&(shard.to_owned(), outcome.to_owned()))
        .copied()
        .unwrap_or(0)
}

fn shard_name(backend: Backend, case: &str) -> String {
    format!("{case}-{backend:?}").to_lowercase()
}

async fn settled(bus: &dyn Bus, queue: &QueueName) {
    let stats = bus.stats(queue).await.unwrap();
    assert_eq!(
        (stats.visible, stats.in_flight, stats.delayed),
        (0, 0, 0),
        "{stats:?}"
    );
}

async fn delivers_signed_requests_and_acks(backend: Backend) {
    let Some((bus, _db)) = fresh_bus(backend).await else {
        return;
    };
    let shard = shard_name(backend, "signed");
    // A clock of the test's: the webhook-timestamp header is its time.
    let clock = Arc::new(ManualClock::at(Timestamp(1_795_000_060_500)));
    let (url, endpoint) = endpoint(&[], clock.clone()).await;
    let target = push_target(&shard, &url, "");
    let queue = target.queue.clone();
    metrics();
    let worker = PushWorker::new(bus.clone(), target, QueueConfig::default(), clock).unwrap();
    worker.prepare().await.unwrap();
    let event =
        br#"{"provider":"sendgrid","type":"delivered","custom_args":{"customer_id":"c-7"}}"#;
    let json_id = bus
        .send(
            &queue,
            OutgoingMessage::new(event.to_vec()).attribute("type", "delivered"),
        )
        .await
        .unwrap();
    let text_id = bus
        .send(&queue, OutgoingMessage::new("plain text"))
        .await
        .unwrap();

    let report = worker.step(STEP_WAIT).await.unwrap();
    assert_eq!(
        report,
        PushReport {
            received: 2,
            delivered: 2,
            ..PushReport::default()
        }
    );
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.verified, Ok(()), "{request:?}");
        assert_eq!(
            request.verified_with_other_secret,
            Err(VerifyError::BadSignature),
            "a signature made with the shard's secret only"
        );
        assert_eq!(request.timestamp, 1_795_000_060);
    }
    let json_request = seen
        .iter()
        .find(|r| r.id == json_id.0)
        .expect("webhook-id is the message id");
    assert_eq!(&json_request.body[..], event);
    assert_eq!(json_request.content_type, "application/json");
    let text_request = seen.iter().find(|r| r.id == text_id.0).unwrap();
    assert_eq!(&text_request.body[..], b"plain text");
    assert_eq!(text_request.content_type, "application/octet-stream");
    settled(bus.as_ref(), &queue).await;
    assert_eq!(attempts(&shard, "delivered"), 2);
}

async fn retries_on_the_schedule_then_dead_letters(backend: Backend) {
    let Some((bus, _db)) = fresh_bus(backend).await else {
        return;
    };
    let shard = shard_name(backend, "retries");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (url, endpoint) = endpoint(
        &[
            Answer::Status(500),
            Answer::Status(503),
            Answer::Status(404),
        ],
        clock.clone(),
    )
    .await;
    let target = push_target(&shard, &url, "retry_schedule = [\"50ms\", \"100ms\"]\n");
    let queue = target.queue.clone();
    metrics();
    let worker =
        PushWorker::new(bus.clone(), target, QueueConfig::default(), clock.clone()).unwrap();
    let dead_letter = worker.prepare().await.unwrap().clone();
    let id = bus
        .send(
            &queue,
            OutgoingMessage::new("{\"n\":1}").attribute("type", "bounce"),
        )
        .await
        .unwrap();

    // Each failed attempt nacks with the schedule's next delay: the message
    // is due that long after the attempt was settled.
    for (delay_ms, status) in [(50, 500), (100, 503)] {
        let before = clock.now().millis();
        let report = worker.step(STEP_WAIT).await.unwrap();
        let after = clock.now().millis();
        assert_eq!((report.received, report.retried), (1, 1), "{report:?}");
        let due = bus.peek(&queue, 1).await.unwrap()[0].visible_at.millis();
        assert!(
            due >= before + delay_ms && due <= after + delay_ms,
            "after HTTP {status}: due at {due}, expected {delay_ms}ms after the attempt ({before}..{after})"
        );
    }
    // The third attempt is the last: the schedule has two retries.
    let report = worker.step(STEP_WAIT).await.unwrap();
    assert_eq!(
        (report.received, report.dead_lettered),
        (1, 1),
        "{report:?}"
    );
    settled(bus.as_ref(), &queue).await;
    let letters = bus.peek(&dead_letter, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(&letter.body[..], b"{\"n\":1}");
    assert_eq!(letter.attributes[ORIGINAL_ID_ATTRIBUTE], id.0);
    assert_eq!(letter.attributes[SOURCE_QUEUE_ATTRIBUTE], queue.as_str());
    assert_eq!(letter.attributes[ATTEMPTS_ATTRIBUTE], "3");
    assert_eq!(letter.attributes["type"], "bounce");
    assert!(
        letter.attributes[REASON_ATTRIBUTE].contains("404"),
        "{letter:?}"
    );

    let seen = endpoint.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|r| r.id == id.0 && r.verified.is_ok()),
        "{seen:?}"
    );
    assert_eq!(attempts(&shard, "rejected"), 3);

    // Redriven once the endpoint is fixed, it arrives under its first id.
    assert_eq!(bus.redrive(&dead_letter, &queue, None).await.unwrap(), 1);
    let report = worker.step(STEP_WAIT).await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(
        endpoint.seen()[3].id,
        id.0,
        "the same webhook-id after a redrive"
    );
    settled(bus.as_ref(), &queue).await;
    assert!(bus.peek(&dead_letter, 10).await.unwrap().is_empty());
}

async fn a_timeout_or_no_connection_is_a_failure(backend: Backend) {
    let Some((bus, _db)) = fresh_bus(backend).await else {
        return;
    };
    let shard = shard_name(backend, "timeout");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (url, endpoint) = endpoint(&[Answer::Hang], clock.clone()).await;
    let target = push_target(
        &shard,
        &url,
        "timeout = \"200ms\"\nretry_schedule = [\"50ms\"]\n",
    );
    let queue = target.queue.clone();
    metrics();
    let worker =
        PushWorker::new(bus.clone(), target, QueueConfig::default(), clock.clone()).unwrap();
    worker.prepare().await.unwrap();
    bus.send(&queue, OutgoingMessage::new("{}")).await.unwrap();
    let report = worker.step(STEP_WAIT).await.unwrap();
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(attempts(&shard, "timeout"), 1);
    let report = worker.step(STEP_WAIT).await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(endpoint.seen().len(), 2);
    settled(bus.as_ref(), &queue).await;

    // Nothing listens on this port any more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}/events", closed.local_addr().unwrap());
    drop(closed);
    let unreachable_shard = shard_name(backend, "unreachable");
    let target = push_target(&unreachable_shard, &closed_url, "retry_schedule = []\n");
    let queue = target.queue.clone();
    let worker = PushWorker::new(bus.clone(), target, QueueConfig::default(), clock).unwrap();
    let dead_letter = worker.prepare().await.unwrap().clone();
    bus.send(&queue, OutgoingMessage::new("{}")).await.unwrap();
    let report = worker.step(STEP_WAIT).await.unwrap();
    assert_eq!(
        report.dead_lettered, 1,
        "no retries in an empty schedule: {report:?}"
    );
    assert_eq!(attempts(&unreachable_shard, "unreachable"), 1);
    let letter = &bus.peek(&dead_letter, 1).await.unwrap()[0];
    assert!(
        letter.attributes[REASON_ATTRIBUTE].contains("unreachable"),
        "{letter:?}"
    );
}

async fn the_queue_dead_letters_what_a_dead_worker_left(backend: Backend) {
    let Some((bus, _db)) = fresh_bus(backend).await else {
        return;
    };
    let shard = shard_name(backend, "sizing");
    let queue = QueueName::parse(format!("shard-{shard}.email-events")).unwrap();
    let existing = QueueConfig {
        max_receives: 10,
        dedup_window: Duration::from_secs(42),
        ..QueueConfig::default()
    };
    bus.ensure_queue(&queue, existing).await.unwrap();
    let target = push_target(
        &shard,
        "http://127.0.0.1:9/unused",
        "retry_schedule = [\"1s\", \"2s\"]\n",
    );
    let worker = PushWorker::new(
        bus.clone(),
        target,
        QueueConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let dead_letter = worker.prepare().await.unwrap().clone();
    let config = bus
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == queue)
        .unwrap()
        .config;
    assert_eq!(config.max_receives, 3, "one attempt and two retries");
    assert_eq!(
        config.dedup_window,
        Duration::from_secs(42),
        "other settings kept"
    );
    assert_eq!(config.dead_letter_queue.as_ref(), Some(&dead_letter));

    // Three deliveries that no worker settles (each one died mid-attempt):
    // the next receive finds the message in the dead-letter queue.
    bus.send(&queue, OutgoingMessage::new("{}")).await.unwrap();
    let options = ReceiveOptions {
        max: 1,
        wait: STEP_WAIT,
        visibility: Duration::from_millis(20),
    };
    for count in 1..=3 {
        let got = bus.receive(&queue, options).await.unwrap();
        assert_eq!(got[0].receive_count, count);
    }
    let options = ReceiveOptions {
        wait: Duration::from_millis(300),
        ..options
    };
    assert!(bus.receive(&queue, options).await.unwrap().is_empty());
    assert_eq!(bus.stats(&dead_letter).await.unwrap().visible, 1);
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Backend::Embedded).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    delivers_signed_requests_and_acks,
    retries_on_the_schedule_then_dead_letters,
    a_timeout_or_no_connection_is_a_failure,
    the_queue_dead_letters_what_a_dead_worker_left,
);
