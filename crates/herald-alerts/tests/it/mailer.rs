//! The mailer: failures per member, retries, suppression, dead letters, and
//! what a kill or a graceful stop in the middle of sending leaves behind.

use std::sync::Arc;
use std::time::Duration;

use herald_alerts::queue::{ensure_email_queue, REASON_ATTRIBUTE};
use herald_alerts::{EmailJob, EMAIL_QUEUE};
use herald_bus::{OutgoingMessage, QueueConfig, ReceiveOptions};
use herald_core::alert::{AlertAction, AlertState};
use herald_core::catalog::SuppressionReason;
use herald_core::QueueName;
use herald_mail::SendError;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::support::{mailer_settings, CaptureTransport, Hold, Sink, TestEnv};

alerts_suite!(
    a_member_whose_email_cannot_render_is_dead_lettered_and_the_rest_are_sent,
    transient_failures_are_retried_until_they_succeed,
    transient_failures_past_max_receives_are_dead_lettered,
    a_permanent_failure_suppresses_the_address_when_it_says_so,
    a_mailer_killed_mid_send_resends_only_what_was_in_flight,
    a_graceful_stop_finishes_in_flight_sends_without_duplicates,
    a_claim_held_elsewhere_is_retried_after_it_lapses,
    messages_of_a_cancelled_alert_are_dropped_unsent,
    repeated_messages_send_one_email,
    malformed_messages_are_dead_lettered,
    an_alert_naming_an_unknown_transport_fails,
);

const DEAD_LETTERS: &str = "brand-alert-emails.dlq";

/// An alert over one acme sale, built for `count` members; returns its id
/// and the members in order.
async fn built_alert(env: &TestEnv, count: usize) -> (String, Vec<String>) {
    env.brand("acme", "Acme").await;
    let sale = env.sale("acme", "Acme spring").await;
    let template = env.standard_template().await;
    let members = env.members_for("s", count, "acme").await;
    let alert = env.alert(&template, &[sale], 0.5).await;
    env.build_all().await;
    (alert.id, members)
}

fn address(member: &str) -> String {
    format!("{member}@example.com")
}

fn assert_each_once(sink: &Sink, members: &[String]) {
    let counts = sink.per_member();
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), members);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

async fn a_member_whose_email_cannot_render_is_dead_lettered_and_the_rest_are_sent(env: TestEnv) {
    env.brand("acme", "Acme").await;
    let sale = env.sale("acme", "Acme spring").await;
    // No guard on first_name: a member without one cannot get this email.
    let template = env
        .template("Hi", "<p>Hello\n{{ member.first_name }}</p>", None)
        .await;
    let members = env.members_for("s", 4, "acme").await;
    env.member("s-nameless", None).await;
    env.affinity("s-nameless", "acme", 0.9).await;
    let alert = env.alert(&template, &[sale], 0.5).await;
    env.build_all().await;

    let sink = Arc::new(Sink::default());
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let report = env.send_until_done(&mailer, &alert.id).await;
    assert_eq!((report.sent, report.failed), (4, 1), "{report:?}");
    assert_each_once(&sink, &members);
    assert_eq!(env.get_alert(&alert.id).await.state, AlertState::Sent);
    let stats = env.stats(&alert.id).await;
    assert_eq!((stats.sent, stats.failed, stats.queued), (4, 1, 0));

    let letters = env.queue_messages(DEAD_LETTERS).await;
    assert_eq!(letters.len(), 1);
    let reason = &letters[0].attributes[REASON_ATTRIBUTE];
    assert!(
        reason.contains("line 2") && reason.contains("undefined"),
        "{reason}"
    );
    assert_eq!(letters[0].attributes["member_id"], "s-nameless");
    assert_eq!(
        EmailJob::parse(&letters[0].body).unwrap().member_id,
        "s-nameless"
    );
    assert!(env.queue_messages(EMAIL_QUEUE).await.is_empty());
}

async fn transient_failures_are_retried_until_they_succeed(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 4).await;
    let sink = Arc::new(Sink::default());
    let transport = Arc::new(CaptureTransport::new(sink.clone()));
    transport.fail(
        &address(&members[0]),
        vec![
            SendError::transient("421 try again later"),
            SendError::Transient {
                retry_after: Some(Duration::from_millis(200)),
                reason: "429 slow down".into(),
            },
        ],
    );
    let mailer = env.mailer(transport, mailer_settings());
    let report = env.send_until_done(&mailer, &alert_id).await;
    assert_eq!(
        (report.sent, report.retried, report.failed),
        (4, 2, 0),
        "{report:?}"
    );
    assert_eq!(report.possible_duplicates, 0);
    assert_each_once(&sink, &members);
    let stats = env.stats(&alert_id).await;
    assert_eq!(
        (stats.sent, stats.failed, stats.possible_duplicates),
        (4, 0, 0)
    );
    assert!(env.queue_messages(DEAD_LETTERS).await.is_empty());
}

async fn transient_failures_past_max_receives_are_dead_lettered(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 3).await;
    let sink = Arc::new(Sink::default());
    let transport = Arc::new(CaptureTransport::new(sink.clone()));
    transport.fail(
        &address(&members[1]),
        (0..5)
            .map(|i| SendError::transient(format!("timeout {i}")))
            .collect(),
    );
    let queue = QueueConfig {
        max_receives: 3,
        ..env.queue_config()
    };
    let mailer = env.mailer_with(transport, mailer_settings(), queue);
    let report = env.send_until_done(&mailer, &alert_id).await;
    assert_eq!(
        (report.sent, report.retried, report.failed),
        (2, 2, 1),
        "{report:?}"
    );
    assert_each_once(&sink, &[members[0].clone(), members[2].clone()]);
    assert_eq!(env.get_alert(&alert_id).await.state, AlertState::Sent);
    let letters = env.queue_messages(DEAD_LETTERS).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attributes[REASON_ATTRIBUTE],
        "gave up after 3 attempts: timeout 2"
    );
    let stats = env.stats(&alert_id).await;
    assert_eq!((stats.sent, stats.failed), (2, 1));
}

async fn a_permanent_failure_suppresses_the_address_when_it_says_so(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 3).await;
    let sink = Arc::new(Sink::default());
    let transport = Arc::new(CaptureTransport::new(sink.clone()));
    transport.fail(
        &address(&members[0]),
        vec![SendError::permanent("550 5.1.1 no such mailbox", true)],
    );
    transport.fail(
        &address(&members[1]),
        vec![SendError::permanent("554 message rejected as spam", false)],
    );
    let mailer = env.mailer(transport, mailer_settings());
    let report = env.send_until_done(&mailer, &alert_id).await;
    assert_eq!(
        (report.sent, report.failed, report.suppressed),
        (1, 2, 1),
        "{report:?}"
    );
    assert_each_once(&sink, &[members[2].clone()]);

    let suppression = env
        .store
        .members()
        .suppression(&address(&members[0]))
        .await
        .unwrap()
        .expect("the refused address is suppressed");
    assert_eq!(suppression.reason, SuppressionReason::InvalidAddress);
    assert_eq!(suppression.source, "mailer");
    assert_eq!(
        suppression.detail.as_deref(),
        Some("550 5.1.1 no such mailbox")
    );
    assert!(env
        .store
        .members()
        .suppression(&address(&members[1]))
        .await
        .unwrap()
        .is_none());

    let mut reasons: Vec<String> = env
        .queue_messages(DEAD_LETTERS)
        .await
        .iter()
        .map(|m| m.attributes[REASON_ATTRIBUTE].clone())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["550 5.1.1 no such mailbox", "554 message rejected as spam"]
    );
    let stats = env.stats(&alert_id).await;
    assert_eq!((stats.sent, stats.failed), (1, 2));
}

async fn a_mailer_killed_mid_send_resends_only_what_was_in_flight(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 24).await;
    let settings = mailer_settings();
    let concurrency = settings.concurrency;
    let sink = Arc::new(Sink::default());
    // After six quick sends, every send is taken by the provider and never
    // returns: the mailer is killed with `concurrency` sends in flight.
    let stuck = Arc::new(CaptureTransport::holding(
        sink.clone(),
        Hold::After {
            pass: 6,
            gate: Arc::new(Semaphore::new(0)),
        },
    ));
    let running = tokio::spawn(
        env.mailer(stuck.clone(), settings.clone())
            .run(CancellationToken::new()),
    );
    stuck.wait_held(concurrency).await;
    assert_eq!(stuck.held(), concurrency, "a permit per send in flight");
    running.abort();
    assert!(running.await.is_err_and(|e| e.is_cancelled()));
    // Unlike SIGKILL, aborting the tasks is not instant: a batch task not yet
    // cancelled can start a send with a permit that an aborted one freed.
    // Such a send reached the provider too, so it counts as in flight.
    let in_flight = stuck.held();
    let before_restart = sink.len();

    let mailer = env.mailer(Arc::new(CaptureTransport::new(sink.clone())), settings);
    let report = env.send_until_done(&mailer, &alert_id).await;

    let counts = sink.per_member();
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        members,
        "no member missing"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates, {in_flight} in flight"
    );
    assert_eq!(duplicates, in_flight, "the sends in flight were resent");
    let stats = env.stats(&alert_id).await;
    assert_eq!(
        (stats.sent, stats.failed, stats.queued),
        (24, 0, 0),
        "one sent row per member"
    );
    assert!(
        stats.possible_duplicates >= duplicates as u64,
        "{} reported, {duplicates} in the sink",
        stats.possible_duplicates
    );
    assert_eq!(report.possible_duplicates, stats.possible_duplicates);
    assert_eq!(report.sent as usize, sink.len() - before_restart);
    assert_eq!(env.get_alert(&alert_id).await.state, AlertState::Sent);
}

async fn a_graceful_stop_finishes_in_flight_sends_without_duplicates(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 24).await;
    let settings = mailer_settings();
    let sink = Arc::new(Sink::default());
    let gate = Arc::new(Semaphore::new(0));
    let slow = Arc::new(CaptureTransport::holding(
        sink.clone(),
        Hold::After {
            pass: 6,
            gate: gate.clone(),
        },
    ));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        env.mailer(slow.clone(), settings.clone())
            .run(shutdown.clone()),
    );
    slow.wait_held(settings.concurrency).await;
    shutdown.cancel();
    gate.add_permits(1_000);
    let first = running.await.unwrap().unwrap();
    assert!(first.sent >= 6 + settings.concurrency as u64, "{first:?}");
    assert!(first.sent < 24, "stopped before the end: {first:?}");

    let mailer = env.mailer(Arc::new(CaptureTransport::new(sink.clone())), settings);
    let second = env.send_until_done(&mailer, &alert_id).await;
    assert_eq!(first.sent + second.sent, 24, "{first:?} {second:?}");
    assert_each_once(&sink, &members);
    let stats = env.stats(&alert_id).await;
    assert_eq!((stats.sent, stats.possible_duplicates), (24, 0));
    assert_eq!(second.possible_duplicates, 0);
}

async fn a_claim_held_elsewhere_is_retried_after_it_lapses(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 3).await;
    // Another mailer claimed the first member and died.
    let cadence = env.store.members().cadence_policy().await.unwrap();
    env.store
        .brand_alerts()
        .claim_sends(
            &alert_id,
            &members[..1],
            &cadence,
            Duration::from_millis(500),
            env.now(),
        )
        .await
        .unwrap();
    let sink = Arc::new(Sink::default());
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let first = mailer.drain().await.unwrap();
    assert_eq!((first.sent, first.busy), (2, 1), "{first:?}");
    let rest = env.send_until_done(&mailer, &alert_id).await;
    assert_eq!((rest.sent, rest.possible_duplicates), (1, 1), "{rest:?}");
    assert_each_once(&sink, &members);
    assert_eq!(env.stats(&alert_id).await.possible_duplicates, 1);
}

async fn messages_of_a_cancelled_alert_are_dropped_unsent(env: TestEnv) {
    let (alert_id, _) = built_alert(&env, 3).await;
    env.store
        .brand_alerts()
        .apply(&alert_id, AlertAction::Cancel, None)
        .await
        .unwrap();
    let sink = Arc::new(Sink::default());
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let report = mailer.drain().await.unwrap();
    assert_eq!(
        (report.received, report.dropped, report.sent),
        (3, 3, 0),
        "{report:?}"
    );
    assert_eq!(sink.len(), 0);
    assert!(env.queue_messages(EMAIL_QUEUE).await.is_empty());
    assert_eq!(env.get_alert(&alert_id).await.state, AlertState::Cancelled);
}

async fn repeated_messages_send_one_email(env: TestEnv) {
    let (alert_id, members) = built_alert(&env, 3).await;
    let queue = QueueName::parse(EMAIL_QUEUE).unwrap();
    // Another mailer holds the last member's message, so the alert stays
    // sending however long the drain takes.
    let received = env
        .bus
        .receive(
            &queue,
            ReceiveOptions {
                max: 10,
                wait: Duration::ZERO,
                visibility: Duration::from_secs(300),
            },
        )
        .await
        .unwrap();
    assert_eq!(received.len(), 3);
    for delivery in &received[..2] {
        env.bus
            .nack(&queue, &delivery.receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    // Copies without a dedup key, as after the dedup window passed.
    let copy = || {
        let mut message = EmailJob {
            alert_id: alert_id.clone(),
            member_id: members[0].clone(),
            brand_ids: vec!["acme".into()],
        }
        .to_message();
        message.dedup_key = None;
        message
    };
    env.bus
        .send_batch(&queue, vec![copy(), copy()])
        .await
        .unwrap();

    // One message per batch: the copies meet the finished row.
    let sink = Arc::new(Sink::default());
    let one_at_a_time = herald_alerts::MailerSettings {
        receive_batch: 1,
        ..mailer_settings()
    };
    let mailer = env.mailer(Arc::new(CaptureTransport::new(sink.clone())), one_at_a_time);
    let report = mailer.drain().await.unwrap();
    assert_eq!((report.sent, report.already_finished), (2, 2), "{report:?}");
    assert_each_once(&sink, &members[..2]);

    // Copies in one batch: the first decides, the others are dropped.
    env.bus
        .send_batch(&queue, vec![copy(), copy()])
        .await
        .unwrap();
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let report = mailer.drain().await.unwrap();
    assert_eq!(
        (report.received, report.already_finished, report.dropped),
        (2, 1, 1),
        "{report:?}"
    );
    assert_each_once(&sink, &members[..2]);
    assert_eq!(env.get_alert(&alert_id).await.state, AlertState::Sending);
}

async fn malformed_messages_are_dead_lettered(env: TestEnv) {
    let queue = QueueName::parse(EMAIL_QUEUE).unwrap();
    ensure_email_queue(env.bus.as_ref(), &env.queue_config())
        .await
        .unwrap();
    env.bus
        .send(&queue, OutgoingMessage::new("not json"))
        .await
        .unwrap();
    env.bus
        .send(
            &queue,
            OutgoingMessage::new(r#"{"alert_id":"","member_id":"m","brand_ids":[]}"#),
        )
        .await
        .unwrap();
    let sink = Arc::new(Sink::default());
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let report = mailer.drain().await.unwrap();
    assert_eq!((report.received, report.malformed), (2, 2), "{report:?}");
    let letters = env.queue_messages(DEAD_LETTERS).await;
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|l| l.attributes[REASON_ATTRIBUTE]
                .starts_with("malformed brand alert email message"))
    );
    assert_eq!(letters[0].body.as_ref(), b"not json");
    assert_eq!(mailer.dead_letter_queue().as_str(), DEAD_LETTERS);
    assert!(env.queue_messages(EMAIL_QUEUE).await.is_empty());
}

async fn an_alert_naming_an_unknown_transport_fails(env: TestEnv) {
    env.brand("acme", "Acme").await;
    let sale = env.sale("acme", "Acme spring").await;
    let template = env.standard_template().await;
    env.members_for("s", 2, "acme").await;
    let alert = env.alert_via(&template, &[sale], 0.5, Some("pigeon")).await;
    env.build_all().await;
    let sink = Arc::new(Sink::default());
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let report = mailer.drain().await.unwrap();
    assert_eq!((report.dropped, report.sent), (2, 0), "{report:?}");
    let alert = env.get_alert(&alert.id).await;
    assert_eq!(alert.state, AlertState::Failed);
    assert_eq!(
        alert.failure_reason.as_deref(),
        Some("transport \"pigeon\" is not configured")
    );
    assert_eq!(sink.len(), 0);
}
