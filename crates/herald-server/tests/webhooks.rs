//! The webhook receivers over HTTP: every SendGrid and SparkPost fixture
//! case, forged, replayed, truncated, non-array, oversized and duplicate
//! requests, generic senders, unconfigured providers and the metrics. Cases
//! that store run on SQLite + embedded bus and on PostgreSQL + its bus.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_alerts::{Composer, MailerSettings, Transports};
use herald_bus::{Bus, EmbeddedBus, PostgresBus};
use herald_core::email_event::SourceName;
use herald_core::{Clock, ManualClock, SystemClock, Timestamp};
use herald_router::ingest::{ensure_topology, EmbeddedSink, EventSink, PostgresSink};
use herald_router::verify::{
    SendGridSigner, SendGridVerifier, SharedSecretAuth, StandardWebhooks, WebhookSecret,
    SENDGRID_SIGNATURE_HEADER, SENDGRID_TIMESTAMP_HEADER, WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER,
};
use herald_server::webhooks::WebhookReceivers;
use herald_server::{AppState, HttpLimits};
use herald_store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use common::json_of;

const SPARKPOST_USER: &str = "sparkpost";
const SPARKPOST_PASSWORD: &str = "shared-secret";
const SPARKPOST_TOKEN: &str = "sparkpost-bearer-token";
const GENERIC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The fixtures' signing time.
const SIGNED_AT: i64 = 1_795_000_060;
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Postgres,
}

/// What to configure; everything by default.
struct Setup {
    sendgrid: bool,
    sparkpost: bool,
    ingest: bool,
    replay_window: Option<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            sendgrid: true,
            sparkpost: true,
            ingest: true,
            replay_window: None,
        }
    }
}

struct App {
    address: String,
    client: reqwest::Client,
    store: Store,
    clock: Arc<ManualClock>,
    _data: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

fn fixture(relative: &str) -> Vec<u8> {
    let path = fixtures().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn fixture_json(relative: &str) -> Value {
    serde_json::from_slice(&fixture(relative)).unwrap()
}

async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("HERALD_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set"
        );
        eprintln!("skipped: HERALD_TEST_DATABASE_URL is not set");
        return None;
    };
    let schema = format!("herald_webhooks_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("schema created");
    pool.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

async fn spawn(backend: Backend, setup: Setup) -> Option<App> {
    let data = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(Timestamp(SIGNED_AT * 1000 + 5_000)));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let (store, bus, sink): (Store, Arc<dyn Bus>, Arc<dyn EventSink>) = match backend {
        Backend::Embedded => {
            let url = format!("sqlite://{}", data.path().join("herald.db").display());
            let store = Store::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            let bus = Arc::new(EmbeddedBus::new(store.sqlite().unwrap().clone()));
            let sink = Arc::new(EmbeddedSink::new(bus.clone(), dyn_clock.clone()));
            (store, bus, sink)
        }
        Backend::Postgres => {
            let store = Store::connect(&postgres_url().await?).await.unwrap();
            store.migrate().await.unwrap();
            let bus = Arc::new(
                PostgresBus::new(store.postgres().unwrap().clone())
                    .await
                    .unwrap(),
            );
            let sink = Arc::new(PostgresSink::new(bus.clone(), dyn_clock.clone()));
            (store, bus, sink)
        }
    };
    ensure_topology(bus.as_ref(), Default::default())
        .await
        .unwrap();
    let settings = MailerSettings::default();
    let transports = Transports::build(
        &Default::default(),
        &settings.default_transport,
        data.path(),
    )
    .unwrap();
    let composer = Composer::new(
        store.clone(),
        Arc::new(transports),
        &settings,
        &[7u8; 32],
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut state = AppState::new(store.clone(), bus, Arc::new(composer));
    if setup.ingest {
        let key = String::from_utf8(fixture("sendgrid/public_key.b64")).unwrap();
        let sendgrid = setup.sendgrid.then(|| {
            let verifier = SendGridVerifier::new(key.trim()).unwrap();
            match setup.replay_window {
                Some(window) => verifier.with_replay_window(window),
                None => verifier,
            }
        });
        let sparkpost = setup.sparkpost.then(|| {
            SharedSecretAuth::new(
                Some((SPARKPOST_USER, SPARKPOST_PASSWORD)),
                Some(SPARKPOST_TOKEN),
            )
            .unwrap()
        });
        let mut generic = BTreeMap::new();
        generic.insert(
            SourceName::parse("crm").unwrap(),
            StandardWebhooks::new(WebhookSecret::parse(GENERIC_SECRET).unwrap()),
        );
        state = state.with_webhooks(Arc::new(WebhookReceivers {
            sink,
            sendgrid,
            sparkpost,
            generic,
            max_body_bytes: BODY_LIMIT,
            clock: dyn_clock,
        }));
    }
    let limits = HttpLimits {
        max_body_bytes: 1024 * 1024,
        request_timeout: Duration::from_secs(30),
    };
    let router = herald_server::router(state, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_server::serve(listener, router, shutdown.clone()));
    Some(App {
        address,
        client: reqwest::Client::new(),
        store,
        clock,
        _data: data,
        shutdown,
    })
}

impl App {
    async fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        json_of(request.send().await.unwrap()).await
    }

    async fn stored(&self) -> u64 {
        self.store.email_events().count().await.unwrap()
    }

    async fn post_sendgrid_case(&self, case: &str) -> (StatusCode, Value) {
        let meta = fixture_json(&format!("sendgrid/{case}/case.json"));
        let headers: Vec<(&str, String)> = meta["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let name = if k.eq_ignore_ascii_case(SENDGRID_SIGNATURE_HEADER) {
                    SENDGRID_SIGNATURE_HEADER
                } else {
                    SENDGRID_TIMESTAMP_HEADER
                };
                (name, v.as_str().unwrap().to_owned())
            })
            .collect();
        self.post(
            "/webhooks/sendgrid",
            &headers,
            fixture(&format!("sendgrid/{case}/body.json")),
        )
        .await
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn signer() -> SendGridSigner {
    SendGridSigner::from_pkcs8_pem(
        std::str::from_utf8(&fixture("sendgrid/private_key.pem")).unwrap(),
    )
    .unwrap()
}

/// Headers of a SendGrid request signed with the fixture key.
fn signed(timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let timestamp = timestamp.to_string();
    vec![
        (SENDGRID_TIMESTAMP_HEADER, timestamp.clone()),
        (SENDGRID_SIGNATURE_HEADER, signer().sign(&timestamp, body)),
    ]
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

macro_rules! on_both {
    ($($case:ident),+ $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Embedded).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )+
        }
    };
}

on_both!(
    every_sendgrid_fixture_case_gets_its_verdict,
    sparkpost_fixtures_ping_duplicates_and_auth,
    generic_sources_take_one_event_or_an_array,
);

/// Every case of the SendGrid index, in order, on one app: accepted cases
/// store their events once (the duplicate stores nothing), rejected ones
/// store nothing.
async fn every_sendgrid_fixture_case_gets_its_verdict(backend: Backend) {
    let Some(app) = spawn(backend, Setup::default()).await else {
        return;
    };
    let index = fixture_json("sendgrid/index.json");
    let cases: Vec<&str> = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cases.len(), 11, "a new fixture case needs a look here");
    for case in cases {
        let meta = fixture_json(&format!("sendgrid/{case}/case.json"));
        let before = app.stored().await;
        let (status, body) = app.post_sendgrid_case(case).await;
        let stored = app.stored().await - before;
        match meta["expect"].as_str().unwrap() {
            "accept" => {
                assert!(status.is_success(), "{case}: {status} {body}");
                let events: Vec<Value> =
                    serde_json::from_slice(&fixture(&format!("sendgrid/{case}/body.json")))
                        .unwrap();
                let expected_new = if case == "duplicate_of_valid_batch" {
                    0
                } else {
                    events.len() as u64
                };
                assert_eq!(stored, expected_new, "{case}");
                assert_eq!(body["stored"], expected_new, "{case}: {body}");
                assert_eq!(body["received"], events.len(), "{case}: {body}");
                assert_eq!(
                    body["duplicates"],
                    events.len() as u64 - expected_new,
                    "{case}: {body}"
                );
            }
            "reject" => {
                assert!(status.is_client_error(), "{case}: {status} {body}");
                assert!(!error_code(&body).is_empty(), "{case}: {body}");
                assert_eq!(stored, 0, "{case}");
            }
            other => panic!("{case}: unknown verdict {other}"),
        }
        let expected_status = match case {
            "malformed_json" | "not_an_array" => Some(StatusCode::BAD_REQUEST),
            "missing_signature" | "missing_timestamp" | "garbage_signature" => {
                Some(StatusCode::UNAUTHORIZED)
            }
            "tampered_body" | "tampered_timestamp" | "wrong_key" => Some(StatusCode::FORBIDDEN),
            _ => None,
        };
        if let Some(expected) = expected_status {
            assert_eq!(status, expected, "{case}: {body}");
        }
    }
    assert_eq!(app.stored().await, 12);
}

async fn sparkpost_fixtures_ping_duplicates_and_auth(backend: Backend) {
    let Some(app) = spawn(backend, Setup::default()).await else {
        return;
    };
    let index = fixture_json("sparkpost/index.json");
    let user = index["auth"]["username"].as_str().unwrap();
    let password = index["auth"]["password"].as_str().unwrap();
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        vec![("authorization", format!("Basic {token}"))]
    };
    let batch = fixture("sparkpost/batch.json");

    let (status, body) = app
        .post(
            "/webhooks/sparkpost",
            &basic(user, password),
            fixture("sparkpost/ping.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 0);
    assert_eq!(app.stored().await, 0, "a ping stores nothing");

    let (status, body) = app.post("/webhooks/sparkpost", &[], batch.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = app
        .post("/webhooks/sparkpost", &basic(user, "wrong"), batch.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let bearer = vec![("authorization", "Bearer not-the-token".to_owned())];
    let (status, _) = app
        .post("/webhooks/sparkpost", &bearer, batch.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.stored().await, 0);

    let (status, body) = app
        .post("/webhooks/sparkpost", &basic(user, password), batch.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 10, "{body}");
    let bearer = vec![("authorization", format!("Bearer {SPARKPOST_TOKEN}"))];
    let (status, body) = app.post("/webhooks/sparkpost", &bearer, batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 0, "SparkPost's retry: {body}");
    assert_eq!(body["duplicates"], 10, "{body}");
    assert_eq!(app.stored().await, 10);

    let (status, body) = app
        .post(
            "/webhooks/sparkpost",
            &basic(user, password),
            b"{\"msys\":{}}".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .post(
            "/webhooks/sparkpost",
            &basic(user, password),
            br#"[{"msys":{"message_event":{"type":"delivery"}}}]"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["field"].as_str().unwrap().starts_with("[0]."),
        "{body}"
    );
    assert_eq!(app.stored().await, 10);
}

fn generic_headers(id: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let check = StandardWebhooks::new(WebhookSecret::parse(GENERIC_SECRET).unwrap());
    vec![
        (WEBHOOK_ID_HEADER, id.to_owned()),
        (WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string()),
        (WEBHOOK_SIGNATURE_HEADER, check.sign(id, timestamp, body)),
    ]
}

async fn generic_sources_take_one_event_or_an_array(backend: Backend) {
    let Some(app) = spawn(backend, Setup::default()).await else {
        return;
    };
    let now = app.clock.now().millis() / 1000;
    let one = json!({"id": "evt_1", "type": "bounce", "email": "a@example.com",
        "occurred_at": "2026-11-23T09:00:00Z", "bounce": "hard",
        "custom_args": {"customer_id": "c-1"}});
    let body = serde_json::to_vec(&one).unwrap();
    let (status, answer) = app
        .post(
            "/webhooks/generic/crm",
            &generic_headers("msg_1", now, &body),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["stored"], 1);

    let many = json!([one, {"id": "evt_2", "type": "open", "email": "b@example.com",
        "occurred_at": 1795000000}]);
    let body = serde_json::to_vec(&many).unwrap();
    let (status, answer) = app
        .post(
            "/webhooks/generic/crm",
            &generic_headers("msg_2", now, &body),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["stored"], 1);
    assert_eq!(answer["duplicates"], 1);

    let mut forged = generic_headers("msg_3", now, &body);
    forged[0].1 = "msg_other".into();
    let (status, answer) = app
        .post("/webhooks/generic/crm", &forged, body.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let stale = generic_headers("msg_4", now - 3600, &body);
    let (status, answer) = app
        .post("/webhooks/generic/crm", &stale, body.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(error_code(&answer), "stale_timestamp");
    let (status, answer) = app
        .post(
            "/webhooks/generic/billing",
            &generic_headers("m", now, &body),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, _) = app
        .post(
            "/webhooks/generic/a%2Fb",
            &generic_headers("m", now, &body),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let typo = serde_json::to_vec(&json!({"id": "evt_9", "type": "bounced",
        "email": "a@example.com", "occurred_at": 1795000000}))
    .unwrap();
    let (status, answer) = app
        .post(
            "/webhooks/generic/crm",
            &generic_headers("msg_5", now, &typo),
            typo,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["field"], "[0].type", "{answer}");
    assert_eq!(app.stored().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_requests_are_refused_when_the_window_is_on() {
    let app = spawn(
        Backend::Embedded,
        Setup {
            replay_window: Some(Duration::from_secs(300)),
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    // Five seconds after signing: inside the window.
    let (status, body) = app.post_sendgrid_case("valid_batch").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same request replayed an hour later.
    app.clock.advance(Duration::from_secs(3600));
    let (status, body) = app.post_sendgrid_case("valid_batch").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "stale_timestamp");
    assert_eq!(app.stored().await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_window_an_old_signature_is_accepted() {
    let app = spawn(Backend::Embedded, Setup::default()).await.unwrap();
    app.clock.advance(Duration::from_secs(30 * 24 * 3600));
    let (status, body) = app.post_sendgrid_case("valid_batch").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_oversized_and_misshapen_bodies_store_nothing() {
    let app = spawn(Backend::Embedded, Setup::default()).await.unwrap();
    let valid = fixture("sendgrid/valid_batch/body.json");

    // Truncated in transit: the signature no longer matches.
    let truncated = valid[..valid.len() / 2].to_vec();
    let headers = signed(SIGNED_AT, &valid);
    let (status, body) = app
        .post("/webhooks/sendgrid", &headers, truncated.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Truncated before signing: signed, but not JSON.
    let headers = signed(SIGNED_AT, &truncated);
    let (status, body) = app.post("/webhooks/sendgrid", &headers, truncated).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_json");

    // Signed, but a string, and an event without its id.
    for (doc, status_expected, field) in [
        (json!("events"), StatusCode::BAD_REQUEST, None),
        (
            json!([{"email": "a@example.com", "timestamp": 1795000000, "event": "delivered"}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("[0].sg_event_id"),
        ),
        (json!([42]), StatusCode::UNPROCESSABLE_ENTITY, Some("[0]")),
    ] {
        let body = serde_json::to_vec(&doc).unwrap();
        let (status, answer) = app
            .post("/webhooks/sendgrid", &signed(SIGNED_AT, &body), body)
            .await;
        assert_eq!(status, status_expected, "{doc}: {answer}");
        assert_eq!(answer["error"]["field"].as_str(), field, "{doc}: {answer}");
    }

    // Over the limit, declared up front and streamed without a length.
    let mut huge = b"[".to_vec();
    while huge.len() <= BODY_LIMIT {
        huge.extend_from_slice(&valid[1..valid.len() - 1]);
        huge.push(b',');
    }
    huge.pop();
    huge.push(b']');
    let headers = signed(SIGNED_AT, &huge);
    let (status, body) = app.post("/webhooks/sendgrid", &headers, huge.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "payload_too_large");
    let status = post_chunked(&app, "/webhooks/sendgrid", &headers, &huge).await;
    assert_eq!(
        status, 413,
        "a body without a length is cut off at the limit too"
    );
    assert_eq!(app.stored().await, 0);

    let metrics = app.metrics().await;
    for line in [
        r#"herald_webhook_rejected_total{provider="sendgrid",reason="bad_signature"}"#,
        r#"herald_webhook_rejected_total{provider="sendgrid",reason="invalid_json"}"#,
        r#"herald_webhook_rejected_total{provider="sendgrid",reason="payload_too_large"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_are_counted_by_provider_and_type() {
    let app = spawn(Backend::Embedded, Setup::default()).await.unwrap();
    let (status, _) = app.post_sendgrid_case("valid_batch").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = app.metrics().await;
    for event_type in [
        "delivered",
        "open",
        "click",
        "bounce",
        "spam_report",
        "unsubscribe",
    ] {
        let series =
            format!(r#"herald_webhook_events_total{{provider="sendgrid",type="{event_type}"}}"#);
        assert!(metrics.contains(&series), "{series} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_providers_answer_503_and_store_nothing() {
    let app = spawn(
        Backend::Embedded,
        Setup {
            sendgrid: false,
            sparkpost: false,
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    let (status, body) = app.post_sendgrid_case("valid_batch").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "not_configured");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ingest.sendgrid.public_key"),
        "{body}"
    );
    let (status, _) = app
        .post("/webhooks/sparkpost", &[], fixture("sparkpost/batch.json"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.stored().await, 0);

    let without_ingest = spawn(
        Backend::Embedded,
        Setup {
            ingest: false,
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    let (status, body) = without_ingest.post_sendgrid_case("valid_batch").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ingest role"),
        "{body}"
    );
}

/// Posts `body` with chunked transfer encoding (no Content-Length), over a
/// bare connection; returns the answer's status code.
async fn post_chunked(app: &App, path: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    for chunk in body.chunks(8 * 1024) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(&wire).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}
