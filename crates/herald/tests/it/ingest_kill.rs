//! The ingest path as a real process: `herald serve` takes signed SendGrid
//! batches from several concurrent senders and is killed with SIGKILL in the
//! middle of the load, then started again, and the senders retry what got no
//! answer, as SendGrid does. Every batch that got a 2xx must be stored
//! exactly once and published exactly once, and after the retries so must
//! every batch sent.
//!
//! "Published" is counted on a queue of the test's own subscribed to the
//! `email-events` topic before Herald starts (Herald's own subscribers
//! consume theirs while the test runs): each stored event must have exactly
//! one message there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_bus::{Bus, EmbeddedBus, QueueConfig, Subscription};
use herald_core::QueueName;
use herald_router::ingest::{email_events_topic, ensure_topology};
use herald_router::verify::{SendGridSigner, SENDGRID_SIGNATURE_HEADER, SENDGRID_TIMESTAMP_HEADER};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use crate::helpers::herald_bin;

const SENDERS: usize = 6;
const BATCHES: usize = 240;
const EVENTS_PER_BATCH: usize = 50;
/// Killed once this many batches were answered 2xx.
const KILL_AFTER: usize = 40;
const TAP: &str = "test.tap";

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

struct Install {
    dir: tempfile::TempDir,
    port: u16,
}

impl Install {
    fn new() -> Install {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key = std::fs::read_to_string(fixtures().join("sendgrid/public_key.b64")).unwrap();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[store]
data_dir = "{data}"

[ingest.sendgrid]
public_key = "{key}"
"#,
            data = dir.path().join("data").display(),
            key = key.trim(),
        );
        std::fs::write(dir.path().join("herald.toml"), config).unwrap();
        Install { dir, port }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("data/herald.db")
    }

    fn serve(&self) -> Child {
        let mut cmd = Command::new(herald_bin());
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(self.dir.path())
            .args(["serve", "--roles", "api,ingest"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn wait_ready(&self, server: &mut Child) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = format!("http://127.0.0.1:{}/healthz", self.port);
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(server.try_wait().unwrap().is_none(), "herald serve exited");
            assert!(Instant::now() < deadline, "herald did not start in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The test's tap on the topic, created in the database before Herald runs.
async fn create_tap(db: &Path) {
    let bus = EmbeddedBus::open(db).await.unwrap();
    ensure_topology(&bus, QueueConfig::default()).await.unwrap();
    let tap = QueueName::parse(TAP).unwrap();
    bus.ensure_queue(&tap, QueueConfig::default())
        .await
        .unwrap();
    bus.subscribe(Subscription {
        topic: email_events_topic(),
        queue: tap,
        filter: Default::default(),
    })
    .await
    .unwrap();
    bus.db().close().await;
}

struct Batch {
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    ids: Vec<String>,
}

fn batches() -> Vec<Batch> {
    let pem = std::fs::read_to_string(fixtures().join("sendgrid/private_key.pem")).unwrap();
    let signer = SendGridSigner::from_pkcs8_pem(&pem).unwrap();
    let types = ["delivered", "open", "click", "processed", "bounce"];
    (0..BATCHES)
        .map(|b| {
            let ids: Vec<String> = (0..EVENTS_PER_BATCH)
                .map(|i| format!("kill-{b:04}-{i:03}"))
                .collect();
            let events: Vec<serde_json::Value> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    serde_json::json!({
                        "email": format!("member{i}@example.com"),
                        "timestamp": 1_795_000_000,
                        "event": types[i % types.len()],
                        "sg_event_id": id,
                        "alert_id": "alert-1",
                    })
                })
                .collect();
            let body = serde_json::to_vec(&events).unwrap();
            let timestamp = "1795000060".to_owned();
            Batch {
                signature: signer.sign(&timestamp, &body),
                timestamp,
                body,
                ids,
            }
        })
        .collect()
}

/// Posts batches from `SENDERS` tasks until every batch has an answer of
/// any kind (or the server is gone); returns the batches answered 2xx.
async fn send_all(
    port: u16,
    batches: &Arc<Vec<Batch>>,
    todo: Vec<usize>,
    kill_after: Option<(usize, u32)>,
) -> BTreeSet<usize> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let todo = Arc::new(Mutex::new(todo));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let (client, todo, acked, batches) =
            (client.clone(), todo.clone(), acked.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(i) = todo.lock().unwrap().pop() else {
                    return;
                };
                let batch = &batches[i];
                let answer = client
                    .post(format!("http://127.0.0.1:{port}/webhooks/sendgrid"))
                    .header(SENDGRID_TIMESTAMP_HEADER, &batch.timestamp)
                    .header(SENDGRID_SIGNATURE_HEADER, &batch.signature)
                    .body(batch.body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().is_success() => {
                        let mut acked = acked.lock().unwrap();
                        acked.insert(i);
                        if let Some((after, pid)) = kill_after {
                            if acked.len() == after {
                                let status = Command::new("kill")
                                    .args(["-KILL", &pid.to_string()])
                                    .status()
                                    .unwrap();
                                assert!(status.success());
                            }
                        }
                    }
                    Ok(response) => panic!("batch {i}: {}", response.status()),
                    // Cut off by the kill: unknown whether it was stored.
                    Err(_) => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

/// Stored events and tap messages, by provider event id.
async fn counts(db: &Path) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider_event_id, COUNT(*) FROM email_events \
         WHERE provider = 'sendgrid' GROUP BY provider_event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let published: Vec<(String, i64)> = sqlx::query_as(
        "SELECT json_extract(CAST(m.body AS TEXT), '$.provider_event_id'), COUNT(*) \
         FROM bus_messages m JOIN bus_queues q ON q.id = m.queue_id \
         WHERE q.name = ?1 GROUP BY 1",
    )
    .bind(TAP)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    (
        stored.into_iter().collect(),
        published.into_iter().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_signed_load_loses_and_repeats_nothing() {
    let install = Install::new();
    create_tap(&install.db_path()).await;
    let batches = Arc::new(batches());

    let mut server = install.serve();
    install.wait_ready(&mut server).await;
    let pid = server.id();
    let all: Vec<usize> = (0..BATCHES).rev().collect();
    let acked_before = send_all(install.port, &batches, all, Some((KILL_AFTER, pid))).await;
    let status = server.wait().unwrap();
    assert!(
        !status.success(),
        "herald was killed, not stopped: {status}"
    );
    assert!(
        acked_before.len() >= KILL_AFTER && acked_before.len() < BATCHES,
        "the kill came mid-load: {} of {BATCHES} answered",
        acked_before.len()
    );

    // What got a 2xx before the kill is durable and on the topic, once.
    let (stored, published) = counts(&install.db_path()).await;
    for &b in &acked_before {
        for id in &batches[b].ids {
            assert_eq!(stored.get(id), Some(&1), "{id} of acked batch {b} stored");
            assert_eq!(
                published.get(id),
                Some(&1),
                "{id} of acked batch {b} published"
            );
        }
    }
    // Nothing half-stored: a batch is all in or all out.
    for (b, batch) in batches.iter().enumerate() {
        let present = batch
            .ids
            .iter()
            .filter(|id| stored.contains_key(*id))
            .count();
        assert!(
            present == 0 || present == EVENTS_PER_BATCH,
            "batch {b} is partly stored ({present} events)"
        );
    }

    // Restart; the senders retry every batch without a 2xx, as SendGrid would.
    let mut server = install.serve();
    install.wait_ready(&mut server).await;
    let retry: Vec<usize> = (0..BATCHES).filter(|b| !acked_before.contains(b)).collect();
    let acked_after = send_all(install.port, &batches, retry.clone(), None).await;
    assert_eq!(acked_after.len(), retry.len(), "every retry answered 2xx");
    server.kill().unwrap();
    server.wait().unwrap();

    let (stored, published) = counts(&install.db_path()).await;
    assert_eq!(stored.len(), BATCHES * EVENTS_PER_BATCH);
    assert!(stored.values().all(|&n| n == 1));
    assert_eq!(
        published.len(),
        BATCHES * EVENTS_PER_BATCH,
        "every event published"
    );
    let repeated: Vec<_> = published.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        repeated.is_empty(),
        "published more than once: {repeated:?}"
    );
}
