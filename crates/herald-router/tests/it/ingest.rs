//! The ingest contract, on every pairing: a batch is stored and its new
//! events published together; a retried, overlapping or concurrent batch
//! stores and publishes nothing twice; a failed publish stores nothing; the
//! messages carry what subscriptions and routes filter on.

use std::collections::HashSet;

use herald_bus::{QueueConfig, Subscription};
use herald_core::email_event::{BounceClass, EmailEvent, EventType, Provider};
use herald_core::{QueueName, Timestamp};
use herald_router::ingest::{email_events_topic, stats_queue, suppressions_queue, IngestError};
use serde_json::json;

use crate::backends::TestEnv;

pairing_suite!(
    new_events_are_stored_and_published_once,
    retried_and_overlapping_batches_publish_only_new_events,
    concurrent_copies_of_a_batch_publish_each_event_once,
    a_failed_publish_stores_nothing,
    a_failing_batch_does_not_fail_concurrent_ones,
    herald_subscriptions_get_only_their_types,
    empty_batch_is_a_no_op,
);

fn event(id: &str, event_type: EventType) -> EmailEvent {
    EmailEvent {
        provider: Provider::SendGrid,
        provider_event_id: id.into(),
        event_type,
        address: format!("{id}@example.com"),
        occurred_at: Timestamp(1_795_000_000_000),
        message_id: None,
        bounce: None,
        tags: vec![],
        custom_args: json!({"alert_id": "alert-42", "customer_id": "c-1"})
            .as_object()
            .unwrap()
            .clone(),
        raw: json!({"sg_event_id": id}),
    }
}

fn batch(prefix: &str, n: usize) -> Vec<EmailEvent> {
    (0..n)
        .map(|i| event(&format!("{prefix}{i}"), EventType::Delivered))
        .collect()
}

/// A queue that sees every message of the topic, as a route's would.
async fn tap(env: &TestEnv) -> QueueName {
    let queue = QueueName::parse("test.tap").unwrap();
    env.bus
        .ensure_queue(&queue, QueueConfig::default())
        .await
        .unwrap();
    env.bus
        .subscribe(Subscription {
            topic: email_events_topic(),
            queue: queue.clone(),
            filter: Default::default(),
        })
        .await
        .unwrap();
    queue
}

async fn published_ids(env: &TestEnv, queue: &QueueName) -> Vec<String> {
    env.bus
        .peek(queue, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            let e: EmailEvent = serde_json::from_slice(&m.body).unwrap();
            e.provider_event_id
        })
        .collect()
}

async fn new_events_are_stored_and_published_once(env: TestEnv) {
    let tap = tap(&env).await;
    let mut events = batch("e", 3);
    events[2].event_type = EventType::Open;
    let outcome = env.sink.ingest(events.clone()).await.unwrap();
    assert_eq!(outcome.stored_total(), 3);
    assert_eq!(outcome.stored.get("delivered"), Some(&2));
    assert_eq!(outcome.duplicates, 0);
    assert_eq!(env.store.email_events().count().await.unwrap(), 3);

    let messages = env.bus.peek(&tap, 10).await.unwrap();
    assert_eq!(messages.len(), 3);
    let first = &messages[0];
    let decoded: EmailEvent = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(decoded, events[0]);
    assert_eq!(first.attributes["provider"], "sendgrid");
    assert_eq!(first.attributes["type"], "delivered");
    assert_eq!(first.attributes["alert_id"], "alert-42");
    assert_eq!(messages[2].attributes["type"], "open");
}

async fn retried_and_overlapping_batches_publish_only_new_events(env: TestEnv) {
    let tap = tap(&env).await;
    let events = batch("e", 4);
    env.sink.ingest(events.clone()).await.unwrap();
    let retry = env.sink.ingest(events.clone()).await.unwrap();
    assert_eq!(retry.stored_total(), 0);
    assert_eq!(retry.duplicates, 4);

    let mut overlapping = events[2..].to_vec();
    overlapping.extend(batch("f", 2));
    overlapping.push(overlapping[2].clone());
    let outcome = env.sink.ingest(overlapping.clone()).await.unwrap();
    assert_eq!(outcome.stored_total(), 2);
    assert_eq!(outcome.duplicates, 3);
    assert_eq!(
        published_ids(&env, &tap).await,
        ["e0", "e1", "e2", "e3", "f0", "f1"]
    );
    assert_eq!(env.store.email_events().count().await.unwrap(), 6);
}

async fn concurrent_copies_of_a_batch_publish_each_event_once(env: TestEnv) {
    let tap = tap(&env).await;
    let events = batch("e", 50);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let sink = env.sink.clone();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            sink.ingest(events.clone()).await.unwrap().stored_total()
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    assert_eq!(stored, 50, "each event is new to exactly one batch");
    let ids = published_ids(&env, &tap).await;
    assert_eq!(ids.len(), 50);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50);
}

async fn a_failed_publish_stores_nothing(env: TestEnv) {
    // A subscriber queue whose bodies must be tiny makes the publish fail
    // after the events were inserted in the same transaction.
    let tiny = QueueName::parse("test.tiny").unwrap();
    env.bus
        .ensure_queue(
            &tiny,
            QueueConfig {
                max_body_bytes: 10,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    env.bus
        .subscribe(Subscription {
            topic: email_events_topic(),
            queue: tiny.clone(),
            filter: Default::default(),
        })
        .await
        .unwrap();
    let err = env.sink.ingest(batch("e", 3)).await.unwrap_err();
    assert!(matches!(err, IngestError::Bus(_)), "{err}");
    assert_eq!(env.store.email_events().count().await.unwrap(), 0);
    assert_eq!(env.bus.stats(&stats_queue()).await.unwrap().visible, 0);

    // Once the subscriber is fixed, the provider's retry goes through.
    env.bus
        .unsubscribe(&email_events_topic(), &tiny)
        .await
        .unwrap();
    let outcome = env.sink.ingest(batch("e", 3)).await.unwrap();
    assert_eq!(outcome.stored_total(), 3);
}

/// On the embedded pairing concurrent batches may share a transaction; a
/// batch that cannot be published must fail alone.
async fn a_failing_batch_does_not_fail_concurrent_ones(env: TestEnv) {
    let tiny = QueueName::parse("test.tiny").unwrap();
    env.bus
        .ensure_queue(
            &tiny,
            QueueConfig {
                max_body_bytes: 10,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    env.bus
        .subscribe(Subscription {
            topic: email_events_topic(),
            queue: tiny,
            filter: herald_bus::FilterPolicy::any()
                .with("type", herald_bus::Condition::Equals(vec!["click".into()])),
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for b in 0..8 {
        let sink = env.sink.clone();
        let mut events = batch(&format!("b{b}-"), 20);
        if b == 3 {
            events[7].event_type = EventType::Click;
        }
        tasks.push(tokio::spawn(async move { sink.ingest(events).await }));
    }
    for (b, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.unwrap();
        if b == 3 {
            assert!(outcome.is_err(), "batch 3 cannot be published");
        } else {
            assert_eq!(outcome.unwrap().stored_total(), 20, "batch {b}");
        }
    }
    assert_eq!(env.store.email_events().count().await.unwrap(), 7 * 20);
}

async fn herald_subscriptions_get_only_their_types(env: TestEnv) {
    let mut hard = event("bounce", EventType::Bounce);
    hard.bounce = Some(BounceClass::Hard);
    let mut no_alert = event("open-no-alert", EventType::Open);
    no_alert.custom_args.remove("alert_id");
    let events = vec![
        event("processed", EventType::Processed),
        event("delivered", EventType::Delivered),
        event("deferred", EventType::Deferred),
        hard,
        event("dropped", EventType::Dropped),
        event("open", EventType::Open),
        event("click", EventType::Click),
        event("spam", EventType::SpamReport),
        event("unsub", EventType::Unsubscribe),
        no_alert,
        event("other", EventType::Other("group_resubscribe".into())),
    ];
    env.sink.ingest(events.clone()).await.unwrap();
    let mut suppressions = published_ids(&env, &suppressions_queue()).await;
    suppressions.sort();
    assert_eq!(suppressions, ["bounce", "dropped", "spam", "unsub"]);
    let mut stats = published_ids(&env, &stats_queue()).await;
    stats.sort();
    assert_eq!(stats, ["bounce", "click", "delivered", "open"]);
}

async fn empty_batch_is_a_no_op(env: TestEnv) {
    let outcome = env.sink.ingest(Vec::new()).await.unwrap();
    assert_eq!(outcome.stored_total(), 0);
    assert_eq!(outcome.duplicates, 0);
    assert_eq!(env.store.email_events().count().await.unwrap(), 0);
}

/// The embedded sink copies what it committed from the write-ahead log into
/// the database file on a connection of its own, so that its commits need
/// not: the writer connection checkpoints only past 10,000 log pages, which
/// a few small batches never reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_sink_checkpoints_after_its_commits() {
    use std::sync::Arc;
    use std::time::Duration;

    use herald_bus::EmbeddedBus;
    use herald_core::{Clock, SystemClock};
    use herald_router::ingest::{ensure_topology, EmbeddedSink, EventSink};
    use herald_store::SqliteDb;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let db = SqliteDb::open(&path).await.unwrap();
    db.migrate().await.unwrap();
    let bus = Arc::new(EmbeddedBus::new(db.clone()));
    ensure_topology(bus.as_ref(), QueueConfig::default())
        .await
        .unwrap();
    // Every committed page, checkpointed or still in the log.
    let committed_bytes = || async {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&db.reader)
            .await
            .unwrap();
        let size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&db.reader)
            .await
            .unwrap();
        u64::try_from(pages * size).unwrap()
    };
    let file_bytes = || std::fs::metadata(&path).unwrap().len();
    assert!(
        file_bytes() < committed_bytes().await,
        "the migrations' pages are still only in the log"
    );

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sink = EmbeddedSink::new(bus.clone(), clock);
    for b in 0..3 {
        let outcome = sink.ingest(batch(&format!("b{b}-"), 100)).await.unwrap();
        assert_eq!(outcome.stored_total(), 100);
    }
    let stats = sink.stats();
    assert_eq!(stats.batches, 3);
    assert!(stats.transactions >= 1 && stats.busy > Duration::ZERO);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while file_bytes() < committed_bytes().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file still lacks committed pages: {} < {}",
            file_bytes(),
            committed_bytes().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
