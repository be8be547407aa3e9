//! Herald's own subscribers, driven step by step on every pairing: the
//! suppression list and member subscriptions follow bounces, drops, spam
//! reports and unsubscribes; per-alert statistics count each provider event
//! once, however often its message is delivered.

use std::time::Duration;

use herald_bus::ReceiveOptions;
use herald_core::catalog::SuppressionReason;
use herald_core::email_event::{BounceClass, EmailEvent, EventType, Provider};
use herald_core::Timestamp;
use herald_router::ingest::stats_queue;
use herald_router::subscribers::{self, EventHandler, SubscriberSettings};
use serde_json::json;

use crate::backends::TestEnv;

pairing_suite!(
    bounces_complaints_and_unsubscribes_suppress,
    unsubscribe_records_the_members_opt_out,
    stats_count_each_event_once_under_redelivery,
    fixture_batch_feeds_both_subscribers,
);

fn settings() -> SubscriberSettings {
    SubscriberSettings {
        batch: 10,
        visibility: Duration::from_secs(30),
        poll_wait: Duration::ZERO,
        retry_delay: Duration::from_millis(10),
    }
}

fn event(id: &str, event_type: EventType, address: &str) -> EmailEvent {
    EmailEvent {
        provider: Provider::SendGrid,
        provider_event_id: id.into(),
        event_type,
        address: address.into(),
        occurred_at: Timestamp(1_795_000_000_000),
        message_id: None,
        bounce: None,
        tags: vec![],
        custom_args: json!({"alert_id": "alert-42", "member_id": "m-9"})
            .as_object()
            .unwrap()
            .clone(),
        raw: json!({"sg_event_id": id}),
    }
}

/// A brand alert `alert-42` (sent) and a member `m-9`.
async fn seed(env: &TestEnv) {
    env.exec(
        "INSERT INTO templates (id, name, subject, html, text, created_at, updated_at) \
         VALUES ('t1', 'basic', 'Hi', '<p>hi</p>', NULL, 0, 0); \
         INSERT INTO brand_alerts (id, name, subject, template_id, send_at, affinity_threshold, \
             state, created_at, updated_at) \
         VALUES ('alert-42', 'Sale', 'Sale', 't1', 0, 0.5, 'sent', 0, 0); \
         INSERT INTO members (id, email, email_normalized, name, first_name, locale, time_zone, \
             status, customer_id, created_at, updated_at) \
         VALUES ('m-9', 'member9@example.com', 'member9@example.com', NULL, NULL, NULL, NULL, \
             'active', NULL, 0, 0);",
    )
    .await;
}

async fn bounces_complaints_and_unsubscribes_suppress(env: TestEnv) {
    let mut hard = event("b1", EventType::Bounce, "Hard@Example.com");
    hard.bounce = Some(BounceClass::Hard);
    let mut soft = event("b2", EventType::Bounce, "soft@example.com");
    soft.bounce = Some(BounceClass::Soft);
    let mut dropped_bounced = event("d1", EventType::Dropped, "dropped@example.com");
    dropped_bounced.raw = json!({"reason": "Bounced Address"});
    let mut dropped_other = event("d2", EventType::Dropped, "spammy@example.com");
    dropped_other.raw = json!({"reason": "Spam Content"});
    let events = vec![
        hard,
        soft,
        dropped_bounced,
        dropped_other,
        event("s1", EventType::SpamReport, "complainer@example.com"),
        event("u1", EventType::Unsubscribe, "leaver@example.com"),
        event("bad", EventType::SpamReport, "not an address"),
    ];
    env.sink.ingest(events.clone()).await.unwrap();
    let worker = subscribers::suppressions(env.store.clone(), env.bus.clone(), settings());
    assert_eq!(worker.drain().await.unwrap(), 7);
    let members = env.store.members();
    let reason = |address: &'static str| {
        let members = env.store.members();
        async move {
            members
                .suppression(address)
                .await
                .unwrap()
                .map(|s| s.reason)
        }
    };
    assert_eq!(
        reason("hard@example.com").await,
        Some(SuppressionReason::HardBounce)
    );
    assert_eq!(reason("soft@example.com").await, None);
    assert_eq!(
        reason("dropped@example.com").await,
        Some(SuppressionReason::HardBounce)
    );
    assert_eq!(reason("spammy@example.com").await, None);
    assert_eq!(
        reason("complainer@example.com").await,
        Some(SuppressionReason::SpamReport)
    );
    assert_eq!(
        reason("leaver@example.com").await,
        Some(SuppressionReason::Unsubscribe)
    );
    let hard = members
        .suppression("hard@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hard.source, "webhook:sendgrid");
    // Nothing left, nothing dead-lettered: the bad address is skipped.
    assert_eq!(worker.drain().await.unwrap(), 0);
}

async fn unsubscribe_records_the_members_opt_out(env: TestEnv) {
    seed(&env).await;
    let mut stranger = event("u2", EventType::Unsubscribe, "stranger@example.com");
    stranger
        .custom_args
        .insert("member_id".into(), json!("m-unknown"));
    env.sink
        .ingest(vec![
            event("u1", EventType::Unsubscribe, "member9@example.com"),
            stranger,
        ])
        .await
        .unwrap();
    let worker = subscribers::suppressions(env.store.clone(), env.bus.clone(), settings());
    assert_eq!(worker.drain().await.unwrap(), 2);
    let subscriptions = env.store.members().subscriptions("m-9").await.unwrap();
    let brand_alerts = subscriptions
        .iter()
        .find(|s| s.email_type == "brand_alerts")
        .expect("a recorded opt-out");
    assert!(!brand_alerts.subscribed);
    assert_eq!(brand_alerts.source, "webhook:sendgrid");
}

async fn stats_count_each_event_once_under_redelivery(env: TestEnv) {
    seed(&env).await;
    let mut bounce = event("b1", EventType::Bounce, "x@example.com");
    bounce.bounce = Some(BounceClass::Soft);
    env.sink
        .ingest(vec![
            event("d1", EventType::Delivered, "a@example.com"),
            event("d2", EventType::Delivered, "b@example.com"),
            event("o1", EventType::Open, "a@example.com"),
            event("c1", EventType::Click, "a@example.com"),
            bounce,
        ])
        .await
        .unwrap();
    // Someone published the same event again (a relay replaying, a
    // redrive): its message is a second delivery of an event counted once.
    let copy = env.bus.peek(&stats_queue(), 1).await.unwrap().remove(0);
    env.bus
        .send(
            &stats_queue(),
            herald_bus::OutgoingMessage::new(copy.body.clone()),
        )
        .await
        .unwrap();
    // A worker that counted a batch and died before acking it: the
    // messages come back (a nack stands in for the lapsed visibility).
    let worker = subscribers::stats(env.store.clone(), env.bus.clone(), settings());
    let taken = env
        .bus
        .receive(
            &stats_queue(),
            ReceiveOptions {
                max: 3,
                wait: Duration::ZERO,
                visibility: Duration::from_secs(30),
            },
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 3);
    let events: Vec<EmailEvent> = taken
        .iter()
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .collect();
    subscribers::StatsHandler::new(env.store.clone())
        .handle(&events)
        .await
        .unwrap();
    for delivery in &taken {
        env.bus
            .nack(&stats_queue(), &delivery.receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(worker.drain().await.unwrap(), 6);
    let stats = env.store.brand_alerts().stats("alert-42").await.unwrap();
    assert_eq!(stats.events.get("delivered"), Some(&2));
    assert_eq!(stats.events.get("open"), Some(&1));
    assert_eq!(stats.events.get("click"), Some(&1));
    assert_eq!(stats.events.get("bounce"), Some(&1));
    let timeline = env.store.brand_alerts().timeline("alert-42").await.unwrap();
    let charted: u64 = timeline.counts.iter().map(|c| c.count).sum();
    assert_eq!(charted, 5, "the chart over time counts each event once too");
    assert_eq!(worker.drain().await.unwrap(), 0);
}

async fn fixture_batch_feeds_both_subscribers(env: TestEnv) {
    seed(&env).await;
    let body = crate::fixtures::bytes("sendgrid/valid_batch/body.json");
    let events = herald_core::providers::sendgrid::parse(&body).unwrap();
    env.sink.ingest(events.clone()).await.unwrap();
    subscribers::suppressions(env.store.clone(), env.bus.clone(), settings())
        .drain()
        .await
        .unwrap();
    subscribers::stats(env.store.clone(), env.bus.clone(), settings())
        .drain()
        .await
        .unwrap();
    let members = env.store.members();
    for (address, suppressed) in [
        ("member5@example.com", true),  // hard bounce
        ("member6@example.com", true),  // dropped: Bounced Address
        ("member8@example.com", true),  // spam report
        ("member9@example.com", true),  // unsubscribe
        ("member10@example.com", true), // group unsubscribe
        ("member2@example.com", false), // delivered
        ("member7@example.com", false), // deferred
    ] {
        assert_eq!(
            members.suppression(address).await.unwrap().is_some(),
            suppressed,
            "{address}"
        );
    }
    let stats = env.store.brand_alerts().stats("alert-42").await.unwrap();
    assert_eq!(stats.events.get("delivered"), Some(&2));
    assert_eq!(stats.events.get("open"), Some(&2));
    assert_eq!(stats.events.get("click"), Some(&1));
    assert_eq!(stats.events.get("bounce"), Some(&1));
}
