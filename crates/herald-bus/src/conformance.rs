//! The bus contract as executable clauses: one `pub async fn` per clause,
//! each taking the bus under test and panicking when the backend breaks the
//! clause. A backend runs them all with one line in its test file:
//!
//! ```text
//! async fn fresh_bus() -> (std::sync::Arc<dyn herald_bus::Bus>, impl Send) { ... }
//! herald_bus::bus_conformance_suite!(fresh_bus);
//! ```
//!
//! The factory returns the bus and a guard kept alive for the test (a
//! temporary folder, a server handle), or an `Option` of the pair when the
//! backend may be unavailable: `None` skips the clause, the factory having
//! said why. Each clause names its queues and topics with a random prefix, so
//! backends shared between tests (one NATS server, one PostgreSQL database)
//! keep the tests apart. Timings are short and only ever bounded loosely, so
//! a loaded machine cannot fail a clause.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::{QueueName, TopicName};

use crate::{
    Bus, BusError, Condition, Delivery, FilterPolicy, OutgoingMessage, QueueConfig, ReceiveOptions,
    Subscription, WriteBatch,
};

/// Every clause, for the suite macro.
#[macro_export]
macro_rules! bus_conformance_suite {
    ($factory:path) => {
        $crate::bus_conformance_suite!(@clauses $factory;
            send_receive_ack_round_trip,
            send_batch_is_all_or_nothing,
            send_batch_keeps_each_message_options,
            body_too_large_stores_nothing,
            unknown_queue_is_not_found,
            receive_validates_max,
            concurrent_consumers_get_each_message_once,
            unacked_message_is_redelivered_after_visibility,
            dead_letter_after_exactly_max_receives,
            zero_max_receives_never_dead_letters,
            delay_is_honoured,
            nack_delay_is_honoured,
            nack_without_delay_redelivers_at_once,
            extend_keeps_message_invisible,
            group_delivers_one_at_a_time_in_order,
            group_order_holds_under_concurrent_consumers,
            dedup_key_returns_first_id,
            dedup_window_expires,
            stale_receipts_are_refused,
            ack_batch_reports_each_receipt,
            commit_sends_to_many_queues_and_acks_together,
            commit_with_a_stale_receipt_writes_nothing,
            commit_to_an_unknown_queue_or_too_large_writes_nothing,
            commit_honours_dedup_keys,
            long_poll_wakes_on_send,
            long_poll_returns_empty_after_wait,
            peek_does_not_receive,
            purge_empties_queue,
            stats_count_each_state,
            redrive_moves_in_order_with_limit,
            queues_are_created_updated_and_deleted,
            publish_filters_by_each_condition,
            publish_fans_out_atomically,
            publish_to_unknown_or_unsubscribed_topic,
            subscriptions_are_managed,
        );
    };
    (@clauses $factory:path; $($clause:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $clause() {
                let fresh = $crate::conformance::FreshBus::into_bus($factory().await);
                let Some((bus, _guard)) = fresh else { return };
                $crate::conformance::$clause(bus).await;
            }
        )*
    };
}

/// What a suite factory returns: the bus and a guard to keep alive for the
/// clause, or `None` when the backend is unavailable and the clause is
/// skipped.
pub trait FreshBus {
    type Guard;

    fn into_bus(self) -> Option<(Arc<dyn Bus>, Self::Guard)>;
}

impl<G> FreshBus for (Arc<dyn Bus>, G) {
    type Guard = G;

    fn into_bus(self) -> Option<(Arc<dyn Bus>, G)> {
        Some(self)
    }
}

impl<G> FreshBus for Option<(Arc<dyn Bus>, G)> {
    type Guard = G;

    fn into_bus(self) -> Option<(Arc<dyn Bus>, G)> {
        self
    }
}

/// Names unique to one clause run.
struct Names(String);

impl Names {
    fn new() -> Self {
        Self(format!("c{:08x}", rand::random::<u32>()))
    }

    fn queue(&self, name: &str) -> QueueName {
        QueueName::parse(format!("{}-{name}", self.0)).expect("valid test queue name")
    }

    fn topic(&self, name: &str) -> TopicName {
        TopicName::parse(format!("{}-{name}", self.0)).expect("valid test topic name")
    }
}

const LONG: Duration = Duration::from_secs(60);

fn opts(max: usize, wait: Duration, visibility: Duration) -> ReceiveOptions {
    ReceiveOptions {
        max,
        wait,
        visibility,
    }
}

/// Receive without waiting, long visibility.
fn now_opts(max: usize) -> ReceiveOptions {
    opts(max, Duration::ZERO, LONG)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn new_queue(bus: &dyn Bus, names: &Names, name: &str, config: QueueConfig) -> QueueName {
    let queue = names.queue(name);
    bus.ensure_queue(&queue, config)
        .await
        .expect("ensure_queue");
    queue
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

async fn peek_bodies(bus: &dyn Bus, queue: &QueueName) -> Vec<String> {
    bus.peek(queue, 1000)
        .await
        .expect("peek")
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

fn assert_stale<T: std::fmt::Debug>(result: Result<T, BusError>, what: &str) {
    assert!(
        matches!(result, Err(BusError::StaleReceipt(_))),
        "{what}: expected StaleReceipt, got {result:?}"
    );
}

fn assert_queue_not_found<T: std::fmt::Debug>(result: Result<T, BusError>, what: &str) {
    assert!(
        matches!(result, Err(BusError::QueueNotFound(_))),
        "{what}: expected QueueNotFound, got {result:?}"
    );
}

pub async fn send_receive_ack_round_trip(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let id = bus
        .send(
            &q,
            OutgoingMessage::new("hello").attribute("kind", "greeting"),
        )
        .await
        .unwrap();
    let got = bus.receive(&q, now_opts(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.id, id);
    assert_eq!(d.body, Bytes::from("hello"));
    assert_eq!(
        d.attributes.get("kind").map(String::as_str),
        Some("greeting")
    );
    assert_eq!(d.group, None);
    assert_eq!(d.receive_count, 1);
    assert!(d.first_received_at >= d.sent_at);
    bus.ack(&q, &d.receipt).await.unwrap();
    assert!(bus.receive(&q, now_opts(10)).await.unwrap().is_empty());
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));
    assert_eq!(stats.oldest_age, None);
}

pub async fn send_batch_is_all_or_nothing(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let config = QueueConfig {
        max_body_bytes: 16,
        ..QueueConfig::default()
    };
    let q = new_queue(&*bus, &names, "q", config).await;
    let batch: Vec<_> = (0..5)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let ids = bus.send_batch(&q, batch).await.unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5, "distinct ids");
    assert_eq!(peek_bodies(&*bus, &q).await, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(bus.send_batch(&q, Vec::new()).await.unwrap(), Vec::new());

    let bad = vec![
        OutgoingMessage::new("fine"),
        OutgoingMessage::new(vec![b'x'; 17]),
        OutgoingMessage::new("fine too"),
    ];
    let err = bus.send_batch(&q, bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            BusError::BodyTooLarge {
                size: 17,
                limit: 16,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        bus.stats(&q).await.unwrap().visible,
        5,
        "nothing of the failed batch stored"
    );
}

pub async fn send_batch_keeps_each_message_options(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    bus.send_batch(
        &q,
        vec![
            OutgoingMessage::new("plain"),
            OutgoingMessage::new("tagged")
                .attribute("k", "v,1")
                .attribute("z", ""),
            OutgoingMessage::new("grouped").group("g,é"),
            OutgoingMessage::new("later").delay(LONG),
            OutgoingMessage::new(vec![0u8, 255, 0, 10]).attribute("binary", "yes"),
        ],
    )
    .await
    .unwrap();
    let got = bus.receive(&q, now_opts(10)).await.unwrap();
    let by_body: HashMap<Bytes, &Delivery> = got.iter().map(|d| (d.body.clone(), d)).collect();
    assert_eq!(got.len(), 4, "the delayed one waits: {:?}", bodies(&got));
    assert!(by_body[&Bytes::from("plain")].attributes.is_empty());
    let tagged = &by_body[&Bytes::from("tagged")].attributes;
    assert_eq!(tagged.get("k").map(String::as_str), Some("v,1"));
    assert_eq!(tagged.get("z").map(String::as_str), Some(""));
    assert_eq!(
        by_body[&Bytes::from("grouped")].group.as_deref(),
        Some("g,é")
    );
    assert_eq!(by_body[&Bytes::from("plain")].group, None);
    let binary = by_body[&Bytes::from(vec![0u8, 255, 0, 10])];
    assert_eq!(
        binary.attributes.get("binary").map(String::as_str),
        Some("yes")
    );
    assert_eq!(bus.stats(&q).await.unwrap().delayed, 1);
}

pub async fn body_too_large_stores_nothing(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let config = QueueConfig {
        max_body_bytes: 100,
        ..QueueConfig::default()
    };
    let q = new_queue(&*bus, &names, "q", config).await;
    let err = bus
        .send(&q, OutgoingMessage::new(vec![0u8; 101]))
        .await
        .unwrap_err();
    match &err {
        BusError::BodyTooLarge { queue, size, limit } => {
            assert_eq!((queue, *size, *limit), (&q, 101, 100));
        }
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("101"), "{err}");
    assert!(bus.peek(&q, 10).await.unwrap().is_empty());
    bus.send(&q, OutgoingMessage::new(vec![0u8; 100]))
        .await
        .unwrap();
    assert_eq!(
        bus.stats(&q).await.unwrap().visible,
        1,
        "the limit itself is allowed"
    );
}

pub async fn unknown_queue_is_not_found(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let real = new_queue(&*bus, &names, "real", QueueConfig::default()).await;
    let ghost = names.queue("ghost");
    bus.send(&real, OutgoingMessage::new("x")).await.unwrap();
    let receipt = bus.receive(&real, now_opts(1)).await.unwrap()[0]
        .receipt
        .clone();

    assert_queue_not_found(bus.send(&ghost, OutgoingMessage::new("x")).await, "send");
    assert_queue_not_found(
        bus.send_batch(&ghost, vec![OutgoingMessage::new("x")])
            .await,
        "send_batch",
    );
    assert_queue_not_found(bus.receive(&ghost, now_opts(1)).await, "receive");
    assert_queue_not_found(bus.ack(&ghost, &receipt).await, "ack");
    assert_queue_not_found(bus.nack(&ghost, &receipt, Duration::ZERO).await, "nack");
    assert_queue_not_found(bus.extend(&ghost, &receipt, LONG).await, "extend");
    assert_queue_not_found(bus.purge(&ghost).await, "purge");
    assert_queue_not_found(bus.peek(&ghost, 1).await, "peek");
    assert_queue_not_found(bus.stats(&ghost).await, "stats");
    assert_queue_not_found(bus.delete_queue(&ghost).await, "delete_queue");
    assert_queue_not_found(bus.redrive(&ghost, &real, None).await, "redrive from");
    assert_queue_not_found(bus.redrive(&real, &ghost, None).await, "redrive to");
    let topic = names.topic("t");
    bus.ensure_topic(&topic).await.unwrap();
    assert_queue_not_found(
        bus.subscribe(Subscription {
            topic,
            queue: ghost,
            filter: FilterPolicy::any(),
        })
        .await,
        "subscribe",
    );
    bus.ack(&real, &receipt)
        .await
        .expect("the real receipt still works");
}

pub async fn receive_validates_max(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    for max in [0, 1001] {
        match bus.receive(&q, now_opts(max)).await {
            Err(BusError::InvalidArgument { field, .. }) => assert_eq!(field, "max"),
            other => panic!("max {max}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(bus.receive(&q, now_opts(1000)).await.unwrap().is_empty());
}

pub async fn concurrent_consumers_get_each_message_once(bus: Arc<dyn Bus>) {
    const N: usize = 300;
    const CONSUMERS: usize = 4;
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let batch: Vec<_> = (0..N)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let sent: HashSet<_> = bus
        .send_batch(&q, batch)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(sent.len(), N);

    let held = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let (bus, q, held) = (Arc::clone(&bus), q.clone(), Arc::clone(&held));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                // Everything was sent up front and visibility outlasts the
                // test, so an empty receive means nothing is left for anyone.
                let got = bus.receive(&q, opts(7, ms(100), LONG)).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                for d in &got {
                    assert_eq!(d.receive_count, 1, "redelivered {}", d.id);
                    let fresh = held.lock().unwrap().insert(d.id.clone());
                    assert!(fresh, "{} held by two consumers at once", d.id);
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
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all.len(), N, "every message received exactly once");
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), sent);
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));
}

pub async fn unacked_message_is_redelivered_after_visibility(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let id = bus.send(&q, OutgoingMessage::new("work")).await.unwrap();
    // The first consumer "dies": it never acks.
    let first = bus
        .receive(&q, opts(1, Duration::ZERO, ms(800)))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        bus.receive(&q, now_opts(1)).await.unwrap().is_empty(),
        "invisible while held"
    );
    let again = bus
        .receive(&q, opts(1, Duration::from_secs(10), LONG))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "redelivered once the visibility ran out");
    let (first, again) = (&first[0], &again[0]);
    assert_eq!(again.id, id);
    assert_eq!(again.receive_count, 2);
    assert_eq!(again.first_received_at, first.first_received_at);
    assert_ne!(again.receipt, first.receipt);
    assert_stale(
        bus.ack(&q, &first.receipt).await,
        "ack with the first receipt",
    );
    assert_eq!(
        bus.stats(&q).await.unwrap().in_flight,
        1,
        "the new copy is untouched"
    );
    bus.ack(&q, &again.receipt).await.unwrap();
    assert!(bus.peek(&q, 10).await.unwrap().is_empty());
}

pub async fn dead_letter_after_exactly_max_receives(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let config = QueueConfig {
        max_receives: 3,
        ..QueueConfig::default()
    };
    let q = new_queue(&*bus, &names, "q", config).await;
    let dlq = q.default_dead_letter().unwrap();
    let id = bus
        .send(
            &q,
            OutgoingMessage::new("poison")
                .attribute("a", "1")
                .group("g"),
        )
        .await
        .unwrap();
    let mut counts = Vec::new();
    loop {
        let got = bus.receive(&q, now_opts(10)).await.unwrap();
        let Some(d) = got.first() else { break };
        counts.push(d.receive_count);
        bus.nack(&q, &d.receipt, Duration::ZERO).await.unwrap();
        assert!(
            counts.len() <= 3,
            "delivered more than max_receives: {counts:?}"
        );
    }
    assert_eq!(counts, [1, 2, 3]);

    let dead = bus.peek(&dlq, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(m.id, id);
    assert_eq!(m.body, Bytes::from("poison"));
    assert_eq!(m.attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(m.group.as_deref(), Some("g"));
    let info = m.dead_letter.as_ref().expect("dead-letter info");
    assert_eq!(info.source_queue, q.as_str());
    assert!(info.reason.contains("max_receives"), "{}", info.reason);
    assert!(info.moved_at >= m.sent_at);
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!(
        (stats.visible, stats.in_flight, stats.dead_lettered),
        (0, 0, 1)
    );
}

pub async fn zero_max_receives_never_dead_letters(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let config = QueueConfig {
        max_receives: 0,
        ..QueueConfig::default()
    };
    let q = new_queue(&*bus, &names, "q", config).await;
    bus.send(&q, OutgoingMessage::new("again and again"))
        .await
        .unwrap();
    for expected in 1..=8 {
        let got = bus.receive(&q, now_opts(1)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {expected}");
        assert_eq!(got[0].receive_count, expected);
        bus.nack(&q, &got[0].receipt, Duration::ZERO).await.unwrap();
    }
    assert_eq!(bus.stats(&q).await.unwrap().dead_lettered, 0);
}

pub async fn delay_is_honoured(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let sent = Instant::now();
    bus.send(&q, OutgoingMessage::new("later").delay(ms(1000)))
        .await
        .unwrap();
    bus.send(
        &q,
        OutgoingMessage::new("much later").delay(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert!(
        bus.receive(&q, now_opts(10)).await.unwrap().is_empty(),
        "not before its delay"
    );
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!((stats.visible, stats.delayed), (0, 2));
    let got = bus
        .receive(&q, opts(10, Duration::from_secs(10), LONG))
        .await
        .unwrap();
    assert_eq!(
        bodies(&got),
        ["later"],
        "visible after its delay, the long one still waits"
    );
    assert!(
        sent.elapsed() >= ms(900),
        "delivered after {:?}",
        sent.elapsed()
    );
}

pub async fn nack_delay_is_honoured(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    bus.send(&q, OutgoingMessage::new("retry me"))
        .await
        .unwrap();
    let d = bus.receive(&q, now_opts(1)).await.unwrap().remove(0);
    let nacked = Instant::now();
    bus.nack(&q, &d.receipt, ms(1000)).await.unwrap();
    assert!(bus.receive(&q, now_opts(1)).await.unwrap().is_empty());
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 1));
    let again = bus
        .receive(&q, opts(1, Duration::from_secs(10), LONG))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    assert!(
        nacked.elapsed() >= ms(900),
        "redelivered after {:?}",
        nacked.elapsed()
    );
}

pub async fn nack_without_delay_redelivers_at_once(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    bus.send(&q, OutgoingMessage::new("x")).await.unwrap();
    let d = bus.receive(&q, now_opts(1)).await.unwrap().remove(0);
    bus.nack(&q, &d.receipt, Duration::ZERO).await.unwrap();
    let again = bus.receive(&q, now_opts(1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.clone(), again[0].receive_count), (d.id, 2));
}

pub async fn extend_keeps_message_invisible(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    bus.send(&q, OutgoingMessage::new("slow work"))
        .await
        .unwrap();
    let d = bus
        .receive(&q, opts(1, Duration::ZERO, ms(300)))
        .await
        .unwrap()
        .remove(0);
    bus.extend(&q, &d.receipt, LONG).await.unwrap();
    tokio::time::sleep(ms(700)).await;
    assert!(
        bus.receive(&q, now_opts(1)).await.unwrap().is_empty(),
        "still held"
    );
    assert_eq!(bus.stats(&q).await.unwrap().in_flight, 1);
    bus.ack(&q, &d.receipt).await.unwrap();
}

pub async fn group_delivers_one_at_a_time_in_order(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    bus.send_batch(
        &q,
        vec![
            OutgoingMessage::new("a1").group("a"),
            OutgoingMessage::new("a2").group("a"),
            OutgoingMessage::new("free"),
            OutgoingMessage::new("b1").group("b"),
            OutgoingMessage::new("a3").group("a"),
        ],
    )
    .await
    .unwrap();
    let first = bus.receive(&q, now_opts(10)).await.unwrap();
    let mut got = bodies(&first);
    got.sort();
    assert_eq!(got, ["a1", "b1", "free"], "one message per group at a time");
    assert!(bus.receive(&q, now_opts(10)).await.unwrap().is_empty());
    for d in first.iter().filter(|d| d.group.as_deref() == Some("a")) {
        bus.ack(&q, &d.receipt).await.unwrap();
    }
    let next = bus.receive(&q, now_opts(10)).await.unwrap();
    assert_eq!(bodies(&next), ["a2"]);
    // A nacked head stays the head: a3 must not overtake a2.
    bus.nack(&q, &next[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let retry = bus.receive(&q, now_opts(10)).await.unwrap();
    assert_eq!(bodies(&retry), ["a2"]);
    bus.ack(&q, &retry[0].receipt).await.unwrap();
    assert_eq!(
        bodies(&bus.receive(&q, now_opts(10)).await.unwrap()),
        ["a3"]
    );

    // A delayed head holds back the rest of its group.
    bus.send(
        &q,
        OutgoingMessage::new("c1")
            .group("c")
            .delay(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    bus.send(&q, OutgoingMessage::new("c2").group("c"))
        .await
        .unwrap();
    assert!(bus.receive(&q, now_opts(10)).await.unwrap().is_empty());
}

pub async fn group_order_holds_under_concurrent_consumers(bus: Arc<dyn Bus>) {
    const GROUPS: usize = 4;
    const PER_GROUP: usize = 8;
    const CONSUMERS: usize = 4;
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let mut batch = Vec::new();
    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            batch.push(OutgoingMessage::new(i.to_string()).group(format!("g{g}")));
        }
    }
    bus.send_batch(&q, batch).await.unwrap();

    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    let seen = Arc::new(Mutex::new(HashMap::<String, Vec<usize>>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let (bus, q) = (Arc::clone(&bus), q.clone());
        let (in_flight, seen, done) = (in_flight.clone(), seen.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < GROUPS * PER_GROUP {
                assert!(Instant::now() < deadline, "consumers stalled");
                let got = bus.receive(&q, opts(3, ms(200), LONG)).await.unwrap();
                for d in &got {
                    let group = d.group.clone().expect("grouped");
                    assert!(
                        in_flight.lock().unwrap().insert(group.clone()),
                        "two messages of {group} in flight at once"
                    );
                    let index: usize = String::from_utf8_lossy(&d.body).parse().unwrap();
                    seen.lock().unwrap().entry(group).or_default().push(index);
                }
                tokio::time::sleep(ms(5)).await;
                for d in &got {
                    // Released before the ack: the next of the group cannot be
                    // delivered until the ack lands.
                    in_flight
                        .lock()
                        .unwrap()
                        .remove(d.group.as_deref().unwrap());
                    bus.ack(&q, &d.receipt).await.unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), GROUPS);
    for (group, order) in seen.iter() {
        assert_eq!(
            *order,
            (0..PER_GROUP).collect::<Vec<_>>(),
            "order of {group}"
        );
    }
}

pub async fn dedup_key_returns_first_id(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let first = bus
        .send(&q, OutgoingMessage::new("one").dedup_key("k1"))
        .await
        .unwrap();
    let second = bus
        .send(&q, OutgoingMessage::new("one again").dedup_key("k1"))
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        peek_bodies(&*bus, &q).await,
        ["one"],
        "the second send stored nothing"
    );

    let d = bus.receive(&q, now_opts(10)).await.unwrap().remove(0);
    bus.ack(&q, &d.receipt).await.unwrap();
    let after_ack = bus
        .send(&q, OutgoingMessage::new("one, acked"))
        .await
        .unwrap();
    assert_ne!(after_ack, first, "no key, no dedup");
    let resend = bus
        .send(&q, OutgoingMessage::new("one yet again").dedup_key("k1"))
        .await
        .unwrap();
    assert_eq!(resend, first, "still deduplicated after the ack");

    let ids = bus
        .send_batch(
            &q,
            vec![
                OutgoingMessage::new("two").dedup_key("k2"),
                OutgoingMessage::new("two in the same batch").dedup_key("k2"),
                OutgoingMessage::new("three").dedup_key("k3"),
                OutgoingMessage::new("one, batched").dedup_key("k1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(ids[3], first);
    assert_eq!(peek_bodies(&*bus, &q).await, ["one, acked", "two", "three"]);
}

pub async fn dedup_window_expires(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let config = QueueConfig {
        dedup_window: ms(300),
        ..QueueConfig::default()
    };
    let q = new_queue(&*bus, &names, "q", config).await;
    let first = bus
        .send(&q, OutgoingMessage::new("a").dedup_key("k"))
        .await
        .unwrap();
    tokio::time::sleep(ms(700)).await;
    let later = bus
        .send(&q, OutgoingMessage::new("b").dedup_key("k"))
        .await
        .unwrap();
    assert_ne!(first, later, "the window has passed");
    assert_eq!(bus.stats(&q).await.unwrap().visible, 2);
}

pub async fn stale_receipts_are_refused(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;

    // After a redelivery, the old receipt acts on nothing.
    bus.send(&q, OutgoingMessage::new("redelivered"))
        .await
        .unwrap();
    let old = bus
        .receive(&q, opts(1, Duration::ZERO, ms(200)))
        .await
        .unwrap()
        .remove(0);
    let new = bus
        .receive(&q, opts(1, Duration::from_secs(10), LONG))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(new.id, old.id);
    assert_stale(bus.ack(&q, &old.receipt).await, "ack after redelivery");
    assert_stale(
        bus.nack(&q, &old.receipt, Duration::ZERO).await,
        "nack after redelivery",
    );
    assert_stale(
        bus.extend(&q, &old.receipt, LONG).await,
        "extend after redelivery",
    );
    assert!(
        bus.receive(&q, now_opts(1)).await.unwrap().is_empty(),
        "new copy still held"
    );
    bus.ack(&q, &new.receipt).await.unwrap();

    // After an ack, every use of the receipt is refused.
    assert_stale(bus.ack(&q, &new.receipt).await, "second ack");
    assert_stale(
        bus.nack(&q, &new.receipt, Duration::ZERO).await,
        "nack after ack",
    );
    assert_stale(bus.extend(&q, &new.receipt, LONG).await, "extend after ack");

    // After a nack, the receipt is spent; the message stays queued.
    bus.send(&q, OutgoingMessage::new("nacked")).await.unwrap();
    let d = bus.receive(&q, now_opts(1)).await.unwrap().remove(0);
    bus.nack(&q, &d.receipt, LONG).await.unwrap();
    assert_stale(bus.ack(&q, &d.receipt).await, "ack after nack");
    assert_stale(bus.extend(&q, &d.receipt, LONG).await, "extend after nack");
    assert_eq!(bus.stats(&q).await.unwrap().delayed, 1);
    bus.purge(&q).await.unwrap();

    // A receipt whose visibility lapsed, with no redelivery since, still acks.
    bus.send(&q, OutgoingMessage::new("lapsed")).await.unwrap();
    let d = bus
        .receive(&q, opts(1, Duration::ZERO, ms(100)))
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(ms(300)).await;
    bus.ack(&q, &d.receipt).await.unwrap();
    assert!(bus.peek(&q, 10).await.unwrap().is_empty());

    // A forged receipt acts on nothing.
    bus.send(&q, OutgoingMessage::new("guarded")).await.unwrap();
    let forged = crate::Receipt("forged-receipt".into());
    let refused = bus.ack(&q, &forged).await;
    assert!(
        matches!(
            refused,
            Err(BusError::StaleReceipt(_) | BusError::InvalidArgument { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(bus.stats(&q).await.unwrap().visible, 1);
}

pub async fn ack_batch_reports_each_receipt(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let batch: Vec<_> = (0..4)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    bus.send_batch(&q, batch).await.unwrap();
    let got = bus.receive(&q, now_opts(10)).await.unwrap();
    assert_eq!(got.len(), 4);
    bus.ack(&q, &got[1].receipt).await.unwrap();
    let receipts = vec![
        got[0].receipt.clone(),
        got[1].receipt.clone(),
        crate::Receipt("forged-receipt".into()),
        got[2].receipt.clone(),
        got[2].receipt.clone(),
    ];
    let outcomes = bus.ack_batch(&q, &receipts).await.unwrap();
    assert_eq!(outcomes.len(), 5);
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        matches!(outcomes[1], Err(BusError::StaleReceipt(_))),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_err(), "forged");
    assert!(outcomes[3].is_ok(), "{:?}", outcomes[3]);
    assert!(
        matches!(outcomes[4], Err(BusError::StaleReceipt(_))),
        "acked twice: {:?}",
        outcomes[4]
    );
    assert_eq!(
        peek_bodies(&*bus, &q).await,
        ["m3"],
        "only the unacked message is left"
    );
    assert!(bus.ack_batch(&q, &[]).await.unwrap().is_empty());
}

pub async fn commit_sends_to_many_queues_and_acks_together(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let src = new_queue(&*bus, &names, "src", QueueConfig::default()).await;
    let a = new_queue(&*bus, &names, "a", QueueConfig::default()).await;
    let b = new_queue(&*bus, &names, "b", QueueConfig::default()).await;
    bus.send_batch(
        &src,
        vec![
            OutgoingMessage::new("x"),
            OutgoingMessage::new("g1").group("g"),
            OutgoingMessage::new("g2").group("g"),
        ],
    )
    .await
    .unwrap();
    let got = bus.receive(&src, now_opts(10)).await.unwrap();
    assert_eq!(
        bodies(&got),
        ["x", "g1"],
        "g2 waits behind its group's head"
    );

    let mut batch = WriteBatch::new();
    batch
        .send(&a, OutgoingMessage::new("a1"))
        .send(&b, OutgoingMessage::new("b1").attribute("k", "v"))
        .send_batch(&a, [OutgoingMessage::new("a2"), OutgoingMessage::new("a3")])
        .ack_batch(&src, got.iter().map(|d| d.receipt.clone()));
    let committed = bus.commit(batch).await.unwrap();
    assert_eq!(
        committed
            .iter()
            .map(|(q, ids)| (q, ids.len()))
            .collect::<Vec<_>>(),
        [(&a, 3), (&b, 1)],
        "ids per queue, queues in the order first named"
    );
    let peeked: Vec<_> = bus.peek(&a, 10).await.unwrap();
    assert_eq!(
        peeked.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        committed[0].1
    );
    assert_eq!(peek_bodies(&*bus, &a).await, ["a1", "a2", "a3"]);
    let b1 = bus.receive(&b, now_opts(10)).await.unwrap();
    assert_eq!(b1[0].attributes.get("k").map(String::as_str), Some("v"));
    assert_eq!(b1[0].id, committed[1].1[0]);

    // The acks took effect, the group's head among them: g2 is next.
    let rest = bus.receive(&src, now_opts(10)).await.unwrap();
    assert_eq!(bodies(&rest), ["g2"]);
    assert_eq!(peek_bodies(&*bus, &src).await, ["g2"]);

    // Acks alone, sends alone, and nothing at all are commits too.
    let mut acks_only = WriteBatch::new();
    acks_only.ack(&src, rest[0].receipt.clone());
    assert!(bus.commit(acks_only).await.unwrap().is_empty());
    assert!(peek_bodies(&*bus, &src).await.is_empty());
    let mut sends_only = WriteBatch::new();
    sends_only.send(&src, OutgoingMessage::new("again"));
    bus.commit(sends_only).await.unwrap();
    assert_eq!(peek_bodies(&*bus, &src).await, ["again"]);
    assert!(bus.commit(WriteBatch::new()).await.unwrap().is_empty());
}

pub async fn commit_with_a_stale_receipt_writes_nothing(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let src = new_queue(&*bus, &names, "src", QueueConfig::default()).await;
    let out = new_queue(&*bus, &names, "out", QueueConfig::default()).await;
    bus.send_batch(
        &src,
        vec![OutgoingMessage::new("m1"), OutgoingMessage::new("m2")],
    )
    .await
    .unwrap();
    let first = bus.receive(&src, now_opts(10)).await.unwrap();
    assert_eq!(first.len(), 2);
    // m2 is redelivered: its first receipt is stale.
    bus.nack(&src, &first[1].receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = bus.receive(&src, now_opts(10)).await.unwrap();
    assert_eq!(bodies(&again), ["m2"]);

    let mut batch = WriteBatch::new();
    batch
        .send(&out, OutgoingMessage::new("derived").dedup_key("d1"))
        .ack(&src, first[0].receipt.clone())
        .ack(&src, first[1].receipt.clone());
    match bus.commit(batch).await {
        Err(BusError::StaleReceipt(receipt)) => assert_eq!(receipt, first[1].receipt),
        other => panic!("expected StaleReceipt, got {other:?}"),
    }
    assert!(peek_bodies(&*bus, &out).await.is_empty(), "nothing sent");
    assert_eq!(
        peek_bodies(&*bus, &src).await,
        ["m1", "m2"],
        "nothing acked"
    );
    // The current receipts still work, and the dedup key was not taken.
    bus.ack(&src, &first[0].receipt).await.unwrap();
    bus.ack(&src, &again[0].receipt).await.unwrap();
    let kept = bus
        .send(&out, OutgoingMessage::new("derived").dedup_key("d1"))
        .await
        .unwrap();
    let stored = bus.peek(&out, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, kept);

    // A malformed receipt fails the commit before anything is written.
    let mut forged = WriteBatch::new();
    forged
        .send(&out, OutgoingMessage::new("never"))
        .ack(&src, crate::Receipt("forged-receipt".into()));
    assert!(bus.commit(forged).await.is_err());
    assert_eq!(peek_bodies(&*bus, &out).await, ["derived"]);
}

pub async fn commit_to_an_unknown_queue_or_too_large_writes_nothing(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let src = new_queue(&*bus, &names, "src", QueueConfig::default()).await;
    let small = new_queue(
        &*bus,
        &names,
        "small",
        QueueConfig {
            max_body_bytes: 4,
            ..QueueConfig::default()
        },
    )
    .await;
    bus.send(&src, OutgoingMessage::new("m")).await.unwrap();
    let got = bus.receive(&src, now_opts(10)).await.unwrap();
    let receipt = got[0].receipt.clone();

    let mut missing = WriteBatch::new();
    missing
        .send(&small, OutgoingMessage::new("ok"))
        .send(&names.queue("missing"), OutgoingMessage::new("lost"))
        .ack(&src, receipt.clone());
    assert_queue_not_found(bus.commit(missing).await, "send to a missing queue");
    let mut missing_ack = WriteBatch::new();
    missing_ack
        .send(&small, OutgoingMessage::new("ok"))
        .ack(&names.queue("missing"), receipt.clone());
    assert_queue_not_found(bus.commit(missing_ack).await, "ack on a missing queue");

    let mut too_large = WriteBatch::new();
    too_large
        .send(&small, OutgoingMessage::new("ok"))
        .send(&small, OutgoingMessage::new("far too large"))
        .ack(&src, receipt.clone());
    assert!(
        matches!(
            bus.commit(too_large).await,
            Err(BusError::BodyTooLarge { limit: 4, .. })
        ),
        "body past the queue's limit"
    );
    assert!(peek_bodies(&*bus, &small).await.is_empty(), "nothing sent");
    bus.ack(&src, &receipt)
        .await
        .expect("the receipt was never used");
}

pub async fn commit_honours_dedup_keys(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let a = new_queue(&*bus, &names, "a", QueueConfig::default()).await;
    let b = new_queue(&*bus, &names, "b", QueueConfig::default()).await;
    let first = bus
        .send(&a, OutgoingMessage::new("k1").dedup_key("k1"))
        .await
        .unwrap();
    let mut batch = WriteBatch::new();
    batch
        .send(&a, OutgoingMessage::new("k1 again").dedup_key("k1"))
        .send(&a, OutgoingMessage::new("k2").dedup_key("k2"))
        .send(&a, OutgoingMessage::new("k2 again").dedup_key("k2"))
        // Keys belong to their queue.
        .send(&b, OutgoingMessage::new("k1 in b").dedup_key("k1"));
    let committed = bus.commit(batch).await.unwrap();
    let ids_a = &committed[0].1;
    assert_eq!(ids_a[0], first);
    assert_eq!(ids_a[1], ids_a[2]);
    assert_ne!(ids_a[1], first);
    assert_ne!(committed[1].1[0], first);
    assert_eq!(peek_bodies(&*bus, &a).await, ["k1", "k2"]);
    assert_eq!(peek_bodies(&*bus, &b).await, ["k1 in b"]);
    // A later send sees the keys the commit recorded.
    let k2 = bus
        .send(&a, OutgoingMessage::new("k2 later").dedup_key("k2"))
        .await
        .unwrap();
    assert_eq!(&k2, &ids_a[1]);
}

pub async fn long_poll_wakes_on_send(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let sender = {
        let (bus, q) = (Arc::clone(&bus), q.clone());
        tokio::spawn(async move {
            tokio::time::sleep(ms(300)).await;
            bus.send(&q, OutgoingMessage::new("ping")).await.unwrap();
        })
    };
    let started = Instant::now();
    let got = bus
        .receive(&q, opts(1, Duration::from_secs(10), LONG))
        .await
        .unwrap();
    let waited = started.elapsed();
    sender.await.unwrap();
    assert_eq!(bodies(&got), ["ping"]);
    assert!(
        waited < Duration::from_secs(5),
        "woke only after {waited:?}"
    );
}

pub async fn long_poll_returns_empty_after_wait(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let started = Instant::now();
    let got = bus.receive(&q, opts(1, ms(400), LONG)).await.unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= ms(350),
        "returned after {waited:?}, before the wait ran out"
    );
    assert!(waited < Duration::from_secs(5), "overslept: {waited:?}");
}

pub async fn peek_does_not_receive(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let batch: Vec<_> = (0..3)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let ids = bus.send_batch(&q, batch).await.unwrap();
    let peeked = bus.peek(&q, 2).await.unwrap();
    assert_eq!(
        peeked.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        ids[..2]
    );
    assert!(peeked
        .iter()
        .all(|m| m.receive_count == 0 && m.dead_letter.is_none()));
    let got = bus.receive(&q, now_opts(10)).await.unwrap();
    assert_eq!(got.len(), 3, "peeked messages are still visible");
    assert!(got.iter().all(|d| d.receive_count == 1));
    let after = bus.peek(&q, 10).await.unwrap();
    assert_eq!(after.len(), 3, "peek also shows messages in flight");
    assert!(after.iter().all(|m| m.receive_count == 1));
}

pub async fn purge_empties_queue(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let batch: Vec<_> = (0..5)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    bus.send_batch(&q, batch).await.unwrap();
    let held = bus.receive(&q, now_opts(1)).await.unwrap().remove(0);
    assert_eq!(
        bus.purge(&q).await.unwrap(),
        5,
        "in-flight messages are purged too"
    );
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));
    assert_stale(bus.ack(&q, &held.receipt).await, "ack after purge");
    assert_eq!(bus.purge(&q).await.unwrap(), 0);
    bus.send(&q, OutgoingMessage::new("after")).await.unwrap();
    assert_eq!(
        peek_bodies(&*bus, &q).await,
        ["after"],
        "the queue still works"
    );
}

pub async fn stats_count_each_state(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let fresh = bus.stats(&q).await.unwrap();
    assert_eq!(
        (
            fresh.visible,
            fresh.in_flight,
            fresh.delayed,
            fresh.dead_lettered,
            fresh.oldest_age
        ),
        (0, 0, 0, 0, None)
    );
    let batch: Vec<_> = (0..4)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    bus.send_batch(&q, batch).await.unwrap();
    bus.send(&q, OutgoingMessage::new("later").delay(LONG))
        .await
        .unwrap();
    let got = bus.receive(&q, now_opts(2)).await.unwrap();
    bus.nack(&q, &got[1].receipt, LONG).await.unwrap();
    bus.send(
        &q.default_dead_letter().unwrap(),
        OutgoingMessage::new("dead"),
    )
    .await
    .unwrap();
    let stats = bus.stats(&q).await.unwrap();
    assert_eq!(stats.visible, 2, "{stats:?}");
    assert_eq!(stats.in_flight, 1, "{stats:?}");
    assert_eq!(
        stats.delayed, 2,
        "a delayed send and a delayed nack: {stats:?}"
    );
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert!(stats.oldest_age.is_some(), "{stats:?}");
}

pub async fn redrive_moves_in_order_with_limit(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let config = QueueConfig {
        max_receives: 1,
        ..QueueConfig::default()
    };
    let q = new_queue(&*bus, &names, "q", config).await;
    let dlq = q.default_dead_letter().unwrap();
    let batch: Vec<_> = (0..5)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let ids = bus.send_batch(&q, batch).await.unwrap();
    let got = bus.receive(&q, now_opts(10)).await.unwrap();
    assert_eq!(got.len(), 5);
    for d in &got {
        bus.nack(&q, &d.receipt, Duration::ZERO).await.unwrap();
    }
    assert!(
        bus.receive(&q, now_opts(10)).await.unwrap().is_empty(),
        "all dead-lettered"
    );
    assert_eq!(
        peek_bodies(&*bus, &dlq).await,
        ["m0", "m1", "m2", "m3", "m4"]
    );

    assert_eq!(bus.redrive(&dlq, &q, Some(2)).await.unwrap(), 2);
    assert_eq!(peek_bodies(&*bus, &q).await, ["m0", "m1"]);
    assert_eq!(peek_bodies(&*bus, &dlq).await, ["m2", "m3", "m4"]);
    let back = bus.peek(&q, 10).await.unwrap();
    assert_eq!(back[0].id, ids[0], "ids survive the round trip");
    assert!(back
        .iter()
        .all(|m| m.receive_count == 0 && m.dead_letter.is_none()));

    bus.send(&q, OutgoingMessage::new("newer")).await.unwrap();
    assert_eq!(bus.redrive(&dlq, &q, None).await.unwrap(), 3);
    assert_eq!(
        peek_bodies(&*bus, &q).await,
        ["m0", "m1", "newer", "m2", "m3", "m4"],
        "redriven messages join the back, in their order"
    );
    assert!(bus.peek(&dlq, 10).await.unwrap().is_empty());
    assert_eq!(bus.redrive(&dlq, &q, None).await.unwrap(), 0);
    let again = bus.receive(&q, now_opts(1)).await.unwrap();
    assert_eq!(again[0].receive_count, 1, "receive count starts over");
}

pub async fn queues_are_created_updated_and_deleted(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let dlq = q.default_dead_letter().unwrap();
    let listed = |queues: &[crate::QueueInfo], name: &QueueName| {
        queues
            .iter()
            .find(|info| &info.name == name)
            .map(|info| info.config.clone())
    };
    let queues = bus.list_queues().await.unwrap();
    assert_eq!(listed(&queues, &q), Some(QueueConfig::default()));
    assert!(
        listed(&queues, &dlq).is_some(),
        "the dead-letter queue is created too"
    );

    let updated = QueueConfig {
        max_receives: 9,
        max_body_bytes: 1234,
        ..QueueConfig::default()
    };
    bus.ensure_queue(&q, updated.clone()).await.unwrap();
    assert_eq!(listed(&bus.list_queues().await.unwrap(), &q), Some(updated));
    let err = bus
        .send(&q, OutgoingMessage::new(vec![0u8; 1235]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::BodyTooLarge { limit: 1234, .. }),
        "{err:?}"
    );

    let plain = new_queue(
        &*bus,
        &names,
        "plain",
        QueueConfig {
            max_receives: 0,
            ..QueueConfig::default()
        },
    )
    .await;
    let plain_dlq = plain.default_dead_letter().unwrap();
    assert!(listed(&bus.list_queues().await.unwrap(), &plain_dlq).is_none());

    bus.send(&q, OutgoingMessage::new("doomed")).await.unwrap();
    bus.delete_queue(&q).await.unwrap();
    assert!(listed(&bus.list_queues().await.unwrap(), &q).is_none());
    assert_queue_not_found(bus.stats(&q).await, "stats after delete");
    bus.ensure_queue(&q, QueueConfig::default()).await.unwrap();
    assert!(
        bus.peek(&q, 10).await.unwrap().is_empty(),
        "messages went with the queue"
    );
}

pub async fn publish_filters_by_each_condition(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let topic = names.topic("events");
    bus.ensure_topic(&topic).await.unwrap();
    let policies = [
        (
            "equals",
            FilterPolicy::any().with(
                "type",
                Condition::Equals(vec!["bounce".into(), "dropped".into()]),
            ),
        ),
        (
            "prefix",
            FilterPolicy::any().with("provider", Condition::Prefix("send".into())),
        ),
        (
            "but",
            FilterPolicy::any().with("type", Condition::AnythingBut(vec!["open".into()])),
        ),
        (
            "exists",
            FilterPolicy::any().with("alert_id", Condition::Exists(true)),
        ),
        (
            "absent",
            FilterPolicy::any().with("alert_id", Condition::Exists(false)),
        ),
        ("all", FilterPolicy::any()),
        (
            "both",
            FilterPolicy::any()
                .with("type", Condition::Equals(vec!["bounce".into()]))
                .with("provider", Condition::Prefix("spark".into())),
        ),
    ];
    let mut queues = HashMap::new();
    for (name, filter) in policies {
        let q = new_queue(&*bus, &names, name, QueueConfig::default()).await;
        bus.subscribe(Subscription {
            topic: topic.clone(),
            queue: q.clone(),
            filter,
        })
        .await
        .unwrap();
        queues.insert(name, q);
    }
    let messages = [
        OutgoingMessage::new("m1")
            .attribute("type", "bounce")
            .attribute("provider", "sendgrid")
            .attribute("alert_id", "7"),
        OutgoingMessage::new("m2")
            .attribute("type", "open")
            .attribute("provider", "sparkpost"),
        OutgoingMessage::new("m3").attribute("type", "dropped"),
        OutgoingMessage::new("m4"),
    ];
    let expected_copies = [5, 2, 4, 2];
    for (message, copies) in messages.into_iter().zip(expected_copies) {
        let ids = bus.publish(&topic, message).await.unwrap();
        assert_eq!(ids.len(), copies);
    }
    let expect = [
        ("equals", vec!["m1", "m3"]),
        ("prefix", vec!["m1"]),
        ("but", vec!["m1", "m3"]),
        ("exists", vec!["m1"]),
        ("absent", vec!["m2", "m3", "m4"]),
        ("all", vec!["m1", "m2", "m3", "m4"]),
        ("both", vec![]),
    ];
    for (name, bodies) in expect {
        assert_eq!(
            peek_bodies(&*bus, &queues[name]).await,
            bodies,
            "queue {name}"
        );
    }
    let copy = bus
        .receive(&queues["exists"], now_opts(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        copy.attributes.get("provider").map(String::as_str),
        Some("sendgrid")
    );
}

pub async fn publish_fans_out_atomically(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let topic = names.topic("fan");
    bus.ensure_topic(&topic).await.unwrap();
    let small = new_queue(
        &*bus,
        &names,
        "small",
        QueueConfig {
            max_body_bytes: 10,
            ..QueueConfig::default()
        },
    )
    .await;
    let big = new_queue(&*bus, &names, "big", QueueConfig::default()).await;
    for queue in [&small, &big] {
        bus.subscribe(Subscription {
            topic: topic.clone(),
            queue: queue.clone(),
            filter: FilterPolicy::any(),
        })
        .await
        .unwrap();
    }
    let err = bus
        .publish_batch(
            &topic,
            vec![
                OutgoingMessage::new("ok"),
                OutgoingMessage::new("far too long for small"),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::BodyTooLarge { ref queue, .. } if queue == &small),
        "{err:?}"
    );
    for queue in [&small, &big] {
        assert!(
            bus.peek(queue, 10).await.unwrap().is_empty(),
            "{queue} got a partial publish"
        );
    }
    let ids = bus
        .publish_batch(
            &topic,
            (0..3)
                .map(|i| OutgoingMessage::new(format!("m{i}")).group("g"))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 6, "one copy per message per queue");
    for queue in [&small, &big] {
        assert_eq!(peek_bodies(&*bus, queue).await, ["m0", "m1", "m2"]);
        let first = bus.receive(queue, now_opts(10)).await.unwrap();
        assert_eq!(bodies(&first), ["m0"], "groups hold in every copy");
    }
}

pub async fn publish_to_unknown_or_unsubscribed_topic(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let ghost = names.topic("ghost");
    let err = bus
        .publish(&ghost, OutgoingMessage::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::TopicNotFound(ref t) if t == &ghost),
        "{err:?}"
    );
    assert!(matches!(
        bus.subscriptions(&ghost).await,
        Err(BusError::TopicNotFound(_))
    ));
    let q = new_queue(&*bus, &names, "q", QueueConfig::default()).await;
    let err = bus
        .subscribe(Subscription {
            topic: ghost.clone(),
            queue: q,
            filter: FilterPolicy::any(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::TopicNotFound(_)), "{err:?}");

    let quiet = names.topic("quiet");
    bus.ensure_topic(&quiet).await.unwrap();
    bus.ensure_topic(&quiet).await.unwrap();
    assert!(bus
        .publish(&quiet, OutgoingMessage::new("x"))
        .await
        .unwrap()
        .is_empty());
    assert!(bus.subscriptions(&quiet).await.unwrap().is_empty());
}

pub async fn subscriptions_are_managed(bus: Arc<dyn Bus>) {
    let names = Names::new();
    let topic = names.topic("t");
    bus.ensure_topic(&topic).await.unwrap();
    let a = new_queue(&*bus, &names, "a", QueueConfig::default()).await;
    let b = new_queue(&*bus, &names, "b", QueueConfig::default()).await;
    let only_bounces = FilterPolicy::any().with("type", Condition::Equals(vec!["bounce".into()]));
    let only_opens = FilterPolicy::any().with("type", Condition::Equals(vec!["open".into()]));
    for (queue, filter) in [(&a, &only_bounces), (&b, &FilterPolicy::any())] {
        bus.subscribe(Subscription {
            topic: topic.clone(),
            queue: queue.clone(),
            filter: filter.clone(),
        })
        .await
        .unwrap();
    }
    bus.subscribe(Subscription {
        topic: topic.clone(),
        queue: a.clone(),
        filter: only_opens.clone(),
    })
    .await
    .unwrap();
    let mut subs = bus.subscriptions(&topic).await.unwrap();
    subs.sort_by(|x, y| x.queue.cmp(&y.queue));
    assert_eq!(subs.len(), 2, "subscribing again replaces: {subs:?}");
    assert_eq!((&subs[0].queue, &subs[0].filter), (&a, &only_opens));
    assert_eq!(
        (&subs[1].queue, &subs[1].filter),
        (&b, &FilterPolicy::any())
    );

    bus.publish(
        &topic,
        OutgoingMessage::new("bounce").attribute("type", "bounce"),
    )
    .await
    .unwrap();
    assert!(
        bus.peek(&a, 10).await.unwrap().is_empty(),
        "the replaced filter no longer applies"
    );
    assert_eq!(peek_bodies(&*bus, &b).await, ["bounce"]);

    bus.unsubscribe(&topic, &b).await.unwrap();
    bus.unsubscribe(&topic, &b).await.unwrap();
    let subs = bus.subscriptions(&topic).await.unwrap();
    assert_eq!(subs.iter().map(|s| &s.queue).collect::<Vec<_>>(), [&a]);
    bus.publish(
        &topic,
        OutgoingMessage::new("open").attribute("type", "open"),
    )
    .await
    .unwrap();
    assert_eq!(
        peek_bodies(&*bus, &b).await,
        ["bounce"],
        "unsubscribed queue gets nothing new"
    );
    assert_eq!(peek_bodies(&*bus, &a).await, ["open"]);

    bus.delete_queue(&a).await.unwrap();
    assert!(
        bus.subscriptions(&topic).await.unwrap().is_empty(),
        "deleting a queue unsubscribes it"
    );
}
