//! The audience job: batches, exclusions, resuming after a crash or an
//! abort without enqueuing anyone twice, failing alerts that cannot be
//! sent, and one builder per alert.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_alerts::{AudienceSettings, AudienceWorker, BuildOutcome, EmailJob, Step, EMAIL_QUEUE};
use herald_bus::{
    AckOutcome, Bus, BusError, BusResult, Committed, Delivery, MessageId, OutgoingMessage,
    PeekedMessage, QueueConfig, QueueInfo, QueueStats, Receipt, ReceiveOptions, Subscription,
    WriteBatch,
};
use herald_core::alert::{AlertAction, AlertState};
use herald_core::{QueueName, Timestamp, TopicName};
use herald_store::brand_alerts::NewBrandAlert;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{TestEnv, PATIENCE};

alerts_suite!(
    a_build_that_dies_after_enqueuing_replays_the_batch_without_duplicates,
    an_aborted_build_resumes_and_enqueues_each_member_once,
    each_step_enqueues_one_batch_and_a_new_job_resumes_from_the_cursor,
    an_alert_whose_template_does_not_compile_fails,
    a_cancelled_alert_stops_its_build,
    an_alert_leased_by_another_replica_is_left_alone,
    an_alert_not_yet_due_is_not_built,
);

fn batches_of(size: u32) -> AudienceSettings {
    AudienceSettings {
        batch_size: size,
        ..AudienceSettings::default()
    }
}

/// An alert over one acme sale, with `count` members of affinity 0.9.
async fn alert_with_members(env: &TestEnv, count: usize) -> (String, Vec<String>) {
    env.brand("acme", "Acme").await;
    let sale = env.sale("acme", "Acme spring").await;
    let template = env.standard_template().await;
    let members = env.members_for("a", count, "acme").await;
    let alert = env.alert(&template, &[sale], 0.5).await;
    (alert.id, members)
}

/// The members with a message on the email queue, and how many each has.
async fn enqueued(env: &TestEnv) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for message in env.queue_messages(EMAIL_QUEUE).await {
        let job = EmailJob::parse(&message.body).expect("an email job");
        *counts.entry(job.member_id).or_default() += 1;
    }
    counts
}

fn assert_each_once(counts: &BTreeMap<String, usize>, members: &[String]) {
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), members);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "enqueued twice: {repeated:?}");
}

async fn a_build_that_dies_after_enqueuing_replays_the_batch_without_duplicates(env: TestEnv) {
    let (alert_id, members) = alert_with_members(&env, 25).await;
    // The second batch reaches the queue, then the process "dies" before
    // recording it as the build's progress.
    let crashing = Arc::new(FaultyBus::new(env.bus.clone(), 2, Fault::ErrorAfterSend));
    let mut dying = env.clone();
    dying.bus = crashing.clone();
    let job = dying.audience_job(batches_of(10));
    let err = job
        .build(&alert_id, &CancellationToken::new())
        .await
        .expect_err("the build dies on its second batch");
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let alert = env.get_alert(&alert_id).await;
    assert_eq!(alert.state, AlertState::Building);
    assert_eq!(
        alert.build.enqueued, 10,
        "only the first batch was recorded"
    );
    assert_eq!(enqueued(&env).await.len(), 20, "yet two batches are queued");

    let outcome = env
        .audience_job(batches_of(10))
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap();
    let BuildOutcome::Finished(alert) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(alert.build.audience_size, Some(25));
    assert_eq!(alert.build.enqueued, 25);
    assert_each_once(&enqueued(&env).await, &members);
}

async fn an_aborted_build_resumes_and_enqueues_each_member_once(env: TestEnv) {
    let (alert_id, members) = alert_with_members(&env, 60).await;
    // The third batch never reaches the queue: the task is aborted there.
    let hanging = Arc::new(FaultyBus::new(env.bus.clone(), 3, Fault::HangBeforeSend));
    let mut dying = env.clone();
    dying.bus = hanging.clone();
    let running = {
        let job = dying.audience_job(batches_of(7));
        let alert_id = alert_id.clone();
        tokio::spawn(async move { job.build(&alert_id, &CancellationToken::new()).await })
    };
    tokio::time::timeout(PATIENCE, hanging.reached.notified())
        .await
        .expect("the build reaches its third batch");
    running.abort();
    assert!(
        running.await.is_err_and(|e| e.is_cancelled()),
        "aborted mid-build"
    );
    assert_eq!(enqueued(&env).await.len(), 14);

    let outcome = env
        .audience_job(batches_of(7))
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap();
    let BuildOutcome::Finished(alert) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(alert.build.audience_size, Some(60));
    assert_each_once(&enqueued(&env).await, &members);
}

async fn each_step_enqueues_one_batch_and_a_new_job_resumes_from_the_cursor(env: TestEnv) {
    let (alert_id, members) = alert_with_members(&env, 12).await;
    env.unsubscribe(&members[1]).await;
    env.suppress(&format!("{}@example.com", members[2])).await;

    let job = env.audience_job(batches_of(5));
    let mut build = job.open(&alert_id).await.unwrap().expect("a due alert");
    assert_eq!(build.alert().state, AlertState::Building);
    let Step::Batch(first) = build.step().await.unwrap() else {
        panic!("a batch")
    };
    assert_eq!(first.cursor, members[4]);
    assert_eq!(
        (
            first.enqueued,
            first.excluded_unsubscribed,
            first.excluded_suppressed
        ),
        (3, 1, 1)
    );
    drop(build);

    // Another process picks the build up where the cursor stands.
    let job = env.audience_job(batches_of(5));
    let mut build = job.open(&alert_id).await.unwrap().expect("a resumed build");
    assert_eq!(
        build.alert().build.cursor.as_deref(),
        Some(members[4].as_str())
    );
    let Step::Batch(second) = build.step().await.unwrap() else {
        panic!("a batch")
    };
    assert_eq!(
        (second.cursor.as_str(), second.enqueued),
        (members[9].as_str(), 5)
    );
    let Step::Batch(third) = build.step().await.unwrap() else {
        panic!("a batch")
    };
    assert_eq!(
        (third.cursor.as_str(), third.enqueued),
        (members[11].as_str(), 2)
    );
    let Step::Finished(alert) = build.step().await.unwrap() else {
        panic!("finished")
    };
    assert_eq!(alert.state, AlertState::Sending);
    assert_eq!(alert.build.audience_size, Some(10));

    let mut expected = members.clone();
    expected.retain(|m| *m != members[1] && *m != members[2]);
    assert_each_once(&enqueued(&env).await, &expected);
    let message = &env.queue_messages(EMAIL_QUEUE).await[0];
    let job = EmailJob::parse(&message.body).unwrap();
    assert_eq!(job.alert_id, alert_id);
    assert_eq!(job.brand_ids, ["acme"]);
    assert_eq!(message.attributes["alert_id"], alert_id);
}

async fn an_alert_whose_template_does_not_compile_fails(env: TestEnv) {
    env.brand("acme", "Acme").await;
    let sale = env.sale("acme", "Acme spring").await;
    env.members_for("a", 3, "acme").await;
    let template = env.template("Hi", "{% for sale in sales %}", None).await;
    let alert = env.alert(&template, &[sale], 0.5).await;

    let outcome = env
        .audience_job(AudienceSettings::default())
        .build(&alert.id, &CancellationToken::new())
        .await
        .unwrap();
    let BuildOutcome::Failed(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("does not compile"), "{reason}");
    let alert = env.get_alert(&alert.id).await;
    assert_eq!(alert.state, AlertState::Failed);
    assert_eq!(alert.failure_reason.as_deref(), Some(reason.as_str()));
    assert!(enqueued(&env).await.is_empty());
}

async fn a_cancelled_alert_stops_its_build(env: TestEnv) {
    let (alert_id, _) = alert_with_members(&env, 6).await;
    let job = env.audience_job(batches_of(2));
    let mut build = job.open(&alert_id).await.unwrap().unwrap();
    assert!(matches!(build.step().await.unwrap(), Step::Batch(_)));
    env.store
        .brand_alerts()
        .apply(&alert_id, AlertAction::Cancel, None)
        .await
        .unwrap();
    assert_eq!(
        build.step().await.unwrap(),
        Step::Stopped(AlertState::Cancelled)
    );
    assert_eq!(enqueued(&env).await.len(), 2);
    let again = job
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again, BuildOutcome::Stopped(AlertState::Cancelled));
}

async fn an_alert_leased_by_another_replica_is_left_alone(env: TestEnv) {
    let (alert_id, members) = alert_with_members(&env, 4).await;
    let name = format!("audience:{alert_id}");
    let lease = env
        .store
        .leases()
        .try_acquire(&name, "another-replica", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the lease is free");
    let worker = AudienceWorker::new(Arc::new(env.audience_job(AudienceSettings::default())));
    let outcomes = worker.run_once(&CancellationToken::new()).await.unwrap();
    assert!(outcomes.is_empty(), "{outcomes:?}");
    assert_eq!(env.get_alert(&alert_id).await.state, AlertState::Scheduled);

    assert!(env.store.leases().release(&lease).await.unwrap());
    let outcomes = worker.run_once(&CancellationToken::new()).await.unwrap();
    assert!(matches!(outcomes.as_slice(), [(id, BuildOutcome::Finished(_))] if *id == alert_id));
    assert_each_once(&enqueued(&env).await, &members);
    assert!(
        env.store.leases().current(&name).await.unwrap().is_none(),
        "the lease is released after the build"
    );
}

async fn an_alert_not_yet_due_is_not_built(env: TestEnv) {
    env.brand("acme", "Acme").await;
    let sale = env.sale("acme", "Acme spring").await;
    env.members_for("a", 2, "acme").await;
    let template = env.standard_template().await;
    let alerts = env.store.brand_alerts();
    let alert = alerts
        .create(&NewBrandAlert {
            name: "Later".into(),
            subject: "Soon".into(),
            template_id: template,
            send_at: Timestamp(env.now().millis() + 3_600_000),
            affinity_threshold: 0.5,
            transport: None,
            sale_ids: vec![sale],
        })
        .await
        .unwrap();
    alerts
        .apply(&alert.id, AlertAction::Schedule, None)
        .await
        .unwrap();
    let job = env.audience_job(AudienceSettings::default());
    let outcome = job
        .build(&alert.id, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, BuildOutcome::Stopped(AlertState::Scheduled));
    let worker = AudienceWorker::new(Arc::new(job));
    assert!(worker
        .run_once(&CancellationToken::new())
        .await
        .unwrap()
        .is_empty());
    assert!(enqueued(&env).await.is_empty());
    let unknown = env
        .audience_job(AudienceSettings::default())
        .build("no-such-alert", &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("not found"), "{unknown}");
}

enum Fault {
    /// The send reaches the queue, then an error is reported, as when the
    /// process is killed right after the send.
    ErrorAfterSend,
    /// The send never returns (and never reaches the queue).
    HangBeforeSend,
}

/// A bus whose `on_call`-th `send_batch` meets `fault`.
struct FaultyBus {
    inner: Arc<dyn Bus>,
    on_call: usize,
    fault: Fault,
    calls: AtomicUsize,
    reached: Notify,
}

impl FaultyBus {
    fn new(inner: Arc<dyn Bus>, on_call: usize, fault: Fault) -> Self {
        Self {
            inner,
            on_call,
            fault,
            calls: AtomicUsize::new(0),
            reached: Notify::new(),
        }
    }
}

#[async_trait]
impl Bus for FaultyBus {
    fn backend(&self) -> &'static str {
        "faulty"
    }

    async fn ping(&self) -> BusResult<()> {
        self.inner.ping().await
    }

    async fn ensure_queue(&self, name: &QueueName, config: QueueConfig) -> BusResult<()> {
        self.inner.ensure_queue(name, config).await
    }

    async fn delete_queue(&self, name: &QueueName) -> BusResult<()> {
        self.inner.delete_queue(name).await
    }

    async fn list_queues(&self) -> BusResult<Vec<QueueInfo>> {
        self.inner.list_queues().await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> BusResult<Vec<MessageId>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 != self.on_call {
            return self.inner.send_batch(queue, messages).await;
        }
        self.reached.notify_one();
        match self.fault {
            Fault::ErrorAfterSend => {
                self.inner.send_batch(queue, messages).await?;
                Err(BusError::Backend {
                    backend: "faulty",
                    message: "simulated crash after the send".into(),
                    source: None,
                })
            }
            Fault::HangBeforeSend => std::future::pending().await,
        }
    }

    async fn commit(&self, batch: WriteBatch) -> BusResult<Committed> {
        self.inner.commit(batch).await
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> BusResult<Vec<Delivery>> {
        self.inner.receive(queue, options).await
    }

    async fn ack(&self, queue: &QueueName, receipt: &Receipt) -> BusResult<()> {
        self.inner.ack(queue, receipt).await
    }

    async fn ack_batch(
        &self,
        queue: &QueueName,
        receipts: &[Receipt],
    ) -> BusResult<Vec<AckOutcome>> {
        self.inner.ack_batch(queue, receipts).await
    }

    async fn nack(&self, queue: &QueueName, receipt: &Receipt, delay: Duration) -> BusResult<()> {
        self.inner.nack(queue, receipt, delay).await
    }

    async fn extend(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        visibility: Duration,
    ) -> BusResult<()> {
        self.inner.extend(queue, receipt, visibility).await
    }

    async fn redrive(
        &self,
        dead_letter: &QueueName,
        to: &QueueName,
        limit: Option<u64>,
    ) -> BusResult<u64> {
        self.inner.redrive(dead_letter, to, limit).await
    }

    async fn purge(&self, queue: &QueueName) -> BusResult<u64> {
        self.inner.purge(queue).await
    }

    async fn peek(&self, queue: &QueueName, max: usize) -> BusResult<Vec<PeekedMessage>> {
        self.inner.peek(queue, max).await
    }

    async fn stats(&self, queue: &QueueName) -> BusResult<QueueStats> {
        self.inner.stats(queue).await
    }

    async fn ensure_topic(&self, topic: &TopicName) -> BusResult<()> {
        self.inner.ensure_topic(topic).await
    }

    async fn subscribe(&self, subscription: Subscription) -> BusResult<()> {
        self.inner.subscribe(subscription).await
    }

    async fn unsubscribe(&self, topic: &TopicName, queue: &QueueName) -> BusResult<()> {
        self.inner.unsubscribe(topic, queue).await
    }

    async fn subscriptions(&self, topic: &TopicName) -> BusResult<Vec<Subscription>> {
        self.inner.subscriptions(topic).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<OutgoingMessage>,
    ) -> BusResult<Vec<MessageId>> {
        self.inner.publish_batch(topic, messages).await
    }
}
