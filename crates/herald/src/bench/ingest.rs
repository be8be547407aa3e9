//! The ingest benchmark: signed SendGrid batches posted over `connections`
//! concurrent HTTP connections to Herald's real router (the whole HTTP stack
//! with its layers, ECDSA verification, parsing, and the atomic store and
//! publish on the embedded store in a fresh temporary folder), against the
//! same requests posted to a bare axum handler that reads the body and
//! answers 200, in the same run.
//!
//! Bodies and signatures are generated before the clock starts; each batch
//! holds `batch_size` events with ids of their own, of the common types in
//! proportions like a real send (mostly processed, delivered and opens).
//! Herald's figure counts only events it answered 2xx for, and the run fails
//! unless the store then holds every event exactly once.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use herald_alerts::{Composer, MailerSettings, Transports};
use herald_bus::{Bus, EmbeddedBus, QueueConfig};
use herald_core::{Clock, SystemClock};
use herald_router::ingest::{ensure_topology, stats_queue, EmbeddedSink};
use herald_router::verify::{SendGridSigner, SendGridVerifier};
use herald_server::webhooks::{WebhookReceivers, DEFAULT_MAX_BODY_BYTES};
use herald_server::{AppState, HttpLimits};
use herald_store::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{per_second, RunDir};

/// The targets.
const TARGET_EVENTS_PER_SEC: f64 = 100_000.0;
const TARGET_RATIO: f64 = 0.25;
/// Signs the unsubscribe links of the throwaway store's composer.
const SIGNING_KEY: &[u8; 32] = b"herald-bench-unsubscribe-signing";
const SENDGRID_PATH: &str = "/webhooks/sendgrid";
/// The event types of a batch, cycled: roughly a send's mix.
const TYPES: [&str; 10] = [
    "processed",
    "delivered",
    "processed",
    "delivered",
    "open",
    "delivered",
    "open",
    "click",
    "processed",
    "bounce",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestBenchOptions {
    /// Where to create the run's temporary folder (the system's temporary
    /// folder when `None`); removed after the run.
    pub dir: Option<PathBuf>,
    /// Requests each side receives.
    pub batches: usize,
    pub batch_size: usize,
    /// Concurrent HTTP connections of the load generator.
    pub connections: usize,
    /// A signing key in PKCS#8 PEM (the fixture's, say); `None` generates one.
    pub private_key_pem: Option<String>,
}

impl Default for IngestBenchOptions {
    fn default() -> Self {
        Self {
            dir: None,
            batches: 600,
            batch_size: 500,
            connections: 32,
            private_key_pem: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestBenchReport {
    pub batches: usize,
    pub batch_size: usize,
    pub connections: usize,
    /// Mean request body size.
    pub body_bytes: usize,
    pub herald_secs: f64,
    pub herald_events_per_sec: f64,
    pub bare_secs: f64,
    pub bare_events_per_sec: f64,
    /// Herald / bare handler.
    pub ratio: f64,
    /// Events the store holds afterwards (must equal batches × batch_size).
    pub stored: u64,
    /// Messages on the statistics subscriber's queue afterwards.
    pub published_to_stats: u64,
    /// Transactions Herald's single writer committed.
    pub writer_transactions: u64,
    /// Mean time the writer spent per batch, inside its transactions: the
    /// serial part of the work, which bounds throughput at
    /// `batch_size / writer_ms_per_batch` whatever the cores.
    pub writer_ms_per_batch: f64,
    /// Of `writer_ms_per_batch`: storing the events, publishing them, and
    /// the commit.
    pub writer_store_ms_per_batch: f64,
    pub writer_publish_ms_per_batch: f64,
    pub writer_commit_ms_per_batch: f64,
}

impl fmt::Display for IngestBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ingest benchmark: {} signed SendGrid batches of {} events ({} bytes each on average) \
             over {} connections",
            self.batches, self.batch_size, self.body_bytes, self.connections
        )?;
        writeln!(f, "{:<46} {:>10} {:>12}", "receiver", "seconds", "events/s")?;
        writeln!(
            f,
            "{:<46} {:>10.2} {:>12.0}",
            "herald (verify, parse, store + publish)", self.herald_secs, self.herald_events_per_sec
        )?;
        writeln!(
            f,
            "{:<46} {:>10.2} {:>12.0}",
            "bare axum handler (read body, answer 200)", self.bare_secs, self.bare_events_per_sec
        )?;
        writeln!(
            f,
            "ratio herald / bare handler: {:.2} (target at least {TARGET_RATIO}); \
             herald {:.0} events/s (target at least {TARGET_EVENTS_PER_SEC:.0})",
            self.ratio, self.herald_events_per_sec
        )?;
        writeln!(
            f,
            "stored {} events; {} published to {}",
            self.stored,
            self.published_to_stats,
            stats_queue()
        )?;
        write!(
            f,
            "writer: {:.2} ms per batch in {} transactions ({:.1} batches each): \
             store {:.2}, publish {:.2}, commit {:.2}",
            self.writer_ms_per_batch,
            self.writer_transactions,
            self.batches as f64 / self.writer_transactions.max(1) as f64,
            self.writer_store_ms_per_batch,
            self.writer_publish_ms_per_batch,
            self.writer_commit_ms_per_batch,
        )
    }
}

/// One prepared request.
struct SignedBatch {
    timestamp: String,
    signature: String,
    body: Bytes,
}

pub async fn run_ingest_bench(options: IngestBenchOptions) -> anyhow::Result<IngestBenchReport> {
    if options.batches == 0 || options.batch_size == 0 || options.connections == 0 {
        bail!("batches, batch size and connections must all be at least 1");
    }
    let signer = match &options.private_key_pem {
        Some(pem) => SendGridSigner::from_pkcs8_pem(pem).context("the signing key")?,
        None => {
            let secret: [u8; 32] = rand::random();
            SendGridSigner::from_key(
                p256::ecdsa::SigningKey::from_slice(&secret).context("a generated signing key")?,
            )
        }
    };
    let batches = Arc::new(prepare(&signer, options.batches, options.batch_size));
    let body_bytes = batches.iter().map(|b| b.body.len()).sum::<usize>() / batches.len();
    let events = (options.batches * options.batch_size) as u64;

    let run_dir = RunDir::create(options.dir.as_deref())?;
    let (herald, store, bus, sink) = herald_server(&run_dir, &signer).await?;
    let herald_elapsed = post_all(&herald.address, &batches, options.connections, true).await?;
    herald.shutdown.cancel();
    let writer = sink.stats();
    let stored = store.email_events().count().await?;
    let published_to_stats = bus.stats(&stats_queue()).await?.visible;
    store.close().await;
    if stored != events {
        bail!("the store holds {stored} events after {events} were accepted");
    }

    let bare = bare_server().await?;
    let bare_elapsed = post_all(&bare.address, &batches, options.connections, false).await?;
    bare.shutdown.cancel();

    let per_batch = |d: Duration| d.as_secs_f64() * 1000.0 / writer.batches.max(1) as f64;
    let herald_events_per_sec = per_second(events, herald_elapsed);
    let bare_events_per_sec = per_second(events, bare_elapsed);
    Ok(IngestBenchReport {
        batches: options.batches,
        batch_size: options.batch_size,
        connections: options.connections,
        body_bytes,
        herald_secs: herald_elapsed.as_secs_f64(),
        herald_events_per_sec,
        bare_secs: bare_elapsed.as_secs_f64(),
        bare_events_per_sec,
        ratio: herald_events_per_sec / bare_events_per_sec.max(1e-9),
        stored,
        published_to_stats,
        writer_transactions: writer.transactions,
        writer_ms_per_batch: per_batch(writer.busy),
        writer_store_ms_per_batch: per_batch(writer.store),
        writer_publish_ms_per_batch: per_batch(writer.publish),
        writer_commit_ms_per_batch: per_batch(writer.commit),
    })
}

fn prepare(signer: &SendGridSigner, batches: usize, batch_size: usize) -> Vec<SignedBatch> {
    let timestamp = (SystemClock.now().millis() / 1000).to_string();
    (0..batches)
        .map(|b| {
            let events: Vec<serde_json::Value> = (0..batch_size)
                .map(|i| {
                    let n = b * batch_size + i;
                    let event_type = TYPES[n % TYPES.len()];
                    let mut event = serde_json::json!({
                        "email": format!("member{}@example.com", n % 100_000),
                        "timestamp": 1_795_000_000 + (n as i64 % 86_400),
                        "smtp-id": format!("<bench.{n}@mail.example.com>"),
                        "event": event_type,
                        "category": ["brand-alert"],
                        "sg_event_id": format!("bench-ev-{n:09}"),
                        "sg_message_id": format!("bench-msg-{:09}.filter0001", n / 4),
                        "customer_id": format!("c-{}", n % 10_000),
                        "alert_id": format!("alert-{}", n % 8),
                        "member_id": format!("m-{}", n % 100_000),
                    });
                    if event_type == "bounce" {
                        event["type"] = "bounce".into();
                        event["status"] = "5.1.1".into();
                        event["reason"] = "550 5.1.1 The email account does not exist".into();
                    }
                    event
                })
                .collect();
            let body = serde_json::to_vec(&events).expect("JSON of JSON values");
            SignedBatch {
                signature: signer.sign(&timestamp, &body),
                timestamp: timestamp.clone(),
                body: Bytes::from(body),
            }
        })
        .collect()
}

struct Running {
    address: String,
    shutdown: CancellationToken,
}

async fn serve(router: axum::Router) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_server::serve(listener, router, shutdown.clone()));
    Ok(Running { address, shutdown })
}

/// Herald's real router with the ingest role on a fresh embedded store.
async fn herald_server(
    run_dir: &RunDir,
    signer: &SendGridSigner,
) -> anyhow::Result<(Running, Store, Arc<EmbeddedBus>, Arc<EmbeddedSink>)> {
    let store = Store::connect(&format!(
        "sqlite://{}",
        run_dir.path().join("herald.db").display()
    ))
    .await?;
    store.migrate().await?;
    let bus = Arc::new(EmbeddedBus::new(
        store.sqlite().context("an embedded store")?.clone(),
    ));
    ensure_topology(bus.as_ref(), QueueConfig::default()).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let settings = MailerSettings::default();
    let transports = Transports::build(
        &Default::default(),
        &settings.default_transport,
        run_dir.path(),
    )?;
    let composer = Composer::new(
        store.clone(),
        Arc::new(transports),
        &settings,
        SIGNING_KEY,
        clock.clone(),
    )?;
    let sink = Arc::new(EmbeddedSink::new(bus.clone(), clock.clone()));
    let receivers = WebhookReceivers {
        sink: sink.clone(),
        sendgrid: Some(SendGridVerifier::new(&signer.public_key_b64())?),
        sparkpost: None,
        generic: Default::default(),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        clock,
    };
    let state = AppState::new(store.clone(), bus.clone(), Arc::new(composer))
        .with_webhooks(Arc::new(receivers));
    let limits = HttpLimits {
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        request_timeout: Duration::from_secs(60),
    };
    let running = serve(herald_server::router(state, limits)).await?;
    Ok((running, store, bus, sink))
}

/// The reference: read the whole body, answer 200.
async fn bare_server() -> anyhow::Result<Running> {
    let router = axum::Router::new()
        .route(
            SENDGRID_PATH,
            post(|body: Bytes| async move {
                std::hint::black_box(body.len());
                StatusCode::OK
            }),
        )
        .layer(DefaultBodyLimit::max(DEFAULT_MAX_BODY_BYTES));
    serve(router).await
}

/// Posts every batch once over `connections` concurrent connections; fails
/// on any answer but 200 (and, for Herald, on a batch not stored whole).
async fn post_all(
    address: &str,
    batches: &Arc<Vec<SignedBatch>>,
    connections: usize,
    check_stored: bool,
) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let url = format!("{address}{SENDGRID_PATH}");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, next, batches) =
            (client.clone(), url.clone(), next.clone(), batches.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        herald_router::verify::SENDGRID_TIMESTAMP_HEADER,
                        &batch.timestamp,
                    )
                    .header(
                        herald_router::verify::SENDGRID_SIGNATURE_HEADER,
                        &batch.signature,
                    )
                    .body(batch.body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let answer = response.bytes().await?;
                if status != reqwest::StatusCode::OK {
                    bail!("batch {i}: {status}: {}", String::from_utf8_lossy(&answer));
                }
                if check_stored {
                    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
                    if answer["received"] != answer["stored"] {
                        bail!("batch {i} was not stored whole: {answer}");
                    }
                }
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_stores_every_event_once_and_reports_both_sides() {
        let report = run_ingest_bench(IngestBenchOptions {
            batches: 6,
            batch_size: 50,
            connections: 3,
            ..IngestBenchOptions::default()
        })
        .await
        .unwrap();
        assert_eq!(report.stored, 300);
        // delivered, open, click and bounce with an alert: 7 of every 10.
        assert_eq!(report.published_to_stats, 210);
        assert!(report.writer_transactions >= 1 && report.writer_transactions <= 6);
        assert!(report.writer_ms_per_batch > 0.0);
        assert!(report.herald_events_per_sec > 0.0 && report.bare_events_per_sec > 0.0);
        assert!(report.to_string().contains("ratio herald / bare handler"));
    }
}
