//! The mailer: consumes `brand-alert-emails`, claims each member's send-log
//! row, renders and sends the email, and confirms the row.
//!
//! Each member gets one email per alert: a redelivered message finds its
//! row finished and is acked without sending. The only ambiguous sends are
//! those in flight when a process dies (the provider may have taken the
//! email before the confirm); their claims lapse after `claim_ttl`, the next
//! mailer resends them and counts them as possible duplicates. A permit of
//! the `concurrency` semaphore is held from the start of a send until its
//! confirm is committed, so one killed mailer leaves at most `concurrency`
//! such sends. A graceful stop ([`Mailer::run`]'s token) stops receiving and
//! confirms every send it started, leaving none.
//!
//! One confirmer per mailer confirms the completed sends of every batch
//! together: each of its rounds commits every send completed since the last
//! (one transaction per alert among them) and releases their permits; sends
//! complete while a round commits, so groups form on their own. Each batch
//! then acks its confirmed messages with its others, in one bus call. The claim answers with what the email needs of each member, so the
//! members are not read again; the cadence policy the claims check against
//! is read at most once every [`CADENCE_REUSE`], so a change to it applies to
//! claims made from then on.
//!
//! What happens to a message:
//! - alert missing, cancelled, failed or sent: acked, nothing sent;
//! - claim answered finished or skipped: acked;
//! - claim busy (another delivery holds a live claim): retried once the
//!   claim lapses;
//! - the email cannot be rendered for this member, or the transport refuses
//!   it for good: the row is failed with the reason, the address suppressed
//!   when the refusal is about it, and a copy of the message goes to the
//!   dead-letter queue with a `reason` attribute;
//! - a transient transport failure: the claim is released and the message
//!   retried after the `retry_backoff` delay for its delivery count, until
//!   the queue's `max_receives`, then failed and dead-lettered as above.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald_bus::{Bus, BusError, Delivery, QueueConfig, Receipt, ReceiveOptions};
use herald_core::alert::{AlertAction, AlertState};
use herald_core::cadence::CadencePolicy;
use herald_core::catalog::SuppressionReason;
use herald_core::{Clock, QueueName};
use herald_mail::{SendError, Transport};
use herald_store::brand_alerts::{BrandAlert, ClaimOutcome, SentMessage};
use herald_store::{Store, StoreError};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::compose::{Composer, Recipient};
use crate::content::{AlertContent, ContentError};
use crate::queue::{self, email_queue, ensure_email_queue, EmailJob};
use crate::recipient;
use crate::settings::{MailerSettings, SettingsError};
use crate::telemetry::{self, FailureKind};

/// Delay before a message is retried after the store failed for it.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Pause after a failed receive before the next.
const RECEIVE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often finished alerts are moved to sent, at most.
const COMPLETE_EVERY: Duration = Duration::from_secs(1);
/// Attempts at confirming sent emails before leaving them to redelivery.
const CONFIRM_ATTEMPTS: u32 = 3;
/// Longest a completed send waits for others to be confirmed with.
const SETTLE_WITHIN: Duration = Duration::from_millis(2);
/// How long a cadence policy read for one batch's claim is used for the
/// next batches' before it is read again.
pub const CADENCE_REUSE: Duration = Duration::from_secs(1);
/// Margin added to a busy claim's expiry before the message is retried.
const BUSY_MARGIN: Duration = Duration::from_millis(100);
/// The suppression source of addresses the mailer suppresses.
const SUPPRESSION_SOURCE: &str = "mailer";

/// What the mailer did with a batch (or, summed, with a drain or a run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailerReport {
    pub received: u64,
    /// Sent and confirmed.
    pub sent: u64,
    /// Of `sent`, resends of claims a stopped mailer left unconfirmed.
    pub possible_duplicates: u64,
    /// The send log already held a finished row: nothing sent.
    pub already_finished: u64,
    /// The member was no longer eligible (unsubscribed, suppressed, at the
    /// cadence limit, inactive, gone): nothing sent.
    pub skipped: u64,
    /// The alert was missing, cancelled, failed or sent, or the message
    /// repeated another of the batch: nothing sent.
    pub dropped: u64,
    /// Another delivery held the claim: retried after it lapses.
    pub busy: u64,
    /// Transient failures, retried later.
    pub retried: u64,
    /// Failed for good and dead-lettered (render, permanent, out of retries).
    pub failed: u64,
    /// Addresses suppressed after a permanent failure.
    pub suppressed: u64,
    /// Bodies that were not email jobs; dead-lettered.
    pub malformed: u64,
}

impl std::ops::AddAssign for MailerReport {
    fn add_assign(&mut self, other: Self) {
        self.received += other.received;
        self.sent += other.sent;
        self.possible_duplicates += other.possible_duplicates;
        self.already_finished += other.already_finished;
        self.skipped += other.skipped;
        self.dropped += other.dropped;
        self.busy += other.busy;
        self.retried += other.retried;
        self.failed += other.failed;
        self.suppressed += other.suppressed;
        self.malformed += other.malformed;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Mailer workers of one process. Clones share the send permits.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    bus: Arc<dyn Bus>,
    composer: Arc<Composer>,
    settings: MailerSettings,
    queue: QueueName,
    queue_config: QueueConfig,
    dead_letter: QueueName,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    last_completion: Mutex<Option<Instant>>,
    queue_ready: OnceCell<()>,
    /// The cadence policy and when it was read.
    cadence: Mutex<Option<(Instant, CadencePolicy)>>,
    confirmer: Arc<Confirmer>,
    /// Completed sends for the confirmer's task.
    to_confirm: UnboundedSender<ToConfirm>,
    /// The confirmer task's end of `to_confirm`, until the task is started.
    confirm_queue: Mutex<Option<UnboundedReceiver<ToConfirm>>>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A claimed message waiting for its send.
struct Pending {
    delivery: Delivery,
    job: EmailJob,
}

/// A claimed message with its member, ready to be built and sent.
struct Ready {
    pending: Pending,
    recipient: Recipient,
}

/// How one send went.
enum Attempt {
    Sent(Option<String>),
    /// No email could be built for the member.
    NotComposed(String),
    Failed(SendError),
}

struct Finished {
    pending: Pending,
    address: Option<String>,
    attempt: Attempt,
}

/// The sends of one spawned task, with the permits they held.
struct Chunk {
    finished: Vec<Finished>,
    permits: OwnedSemaphorePermit,
}

impl Mailer {
    /// `queue_config` is the email queue's configuration (max receives,
    /// dedup window, body limit); its `max_receives` bounds retries.
    pub fn new(
        store: Store,
        bus: Arc<dyn Bus>,
        composer: Arc<Composer>,
        settings: MailerSettings,
        queue_config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Mailer, SettingsError> {
        settings.validate()?;
        let queue = email_queue();
        let dead_letter = match &queue_config.dead_letter_queue {
            Some(name) => name.clone(),
            None => queue
                .default_dead_letter()
                .map_err(|e| SettingsError::new("bus.dead_letter_queue", e.to_string()))?,
        };
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let confirmer = Arc::new(Confirmer {
            store: store.clone(),
            clock: clock.clone(),
            permits: permits.clone(),
            concurrency: settings.concurrency,
        });
        let (to_confirm, confirm_queue) = mpsc::unbounded_channel();
        Ok(Mailer {
            inner: Arc::new(Inner {
                permits,
                store,
                bus,
                composer,
                settings,
                queue,
                queue_config,
                dead_letter,
                clock,
                last_completion: Mutex::new(None),
                queue_ready: OnceCell::new(),
                cadence: Mutex::new(None),
                confirmer,
                to_confirm,
                confirm_queue: Mutex::new(Some(confirm_queue)),
            }),
        })
    }

    /// Sends until `shutdown` fires, then stops receiving, finishes and
    /// confirms every send in flight, and returns what it did.
    pub async fn run(self, shutdown: CancellationToken) -> Result<MailerReport, MailerError> {
        let inner = &self.inner;
        inner.prepare().await?;
        let settings = &inner.settings;
        // Enough batches in flight to keep every permit busy while one is
        // being claimed or confirmed.
        let max_batches = settings.concurrency.div_ceil(settings.receive_batch) + 1;
        let options = ReceiveOptions {
            max: settings.receive_batch,
            wait: settings.poll_wait,
            visibility: settings.claim_ttl,
        };
        tracing::info!(
            concurrency = settings.concurrency,
            receive_batch = settings.receive_batch,
            "mailer started"
        );
        let mut total = MailerReport::default();
        let mut batches: JoinSet<MailerReport> = JoinSet::new();
        loop {
            while let Some(done) = batches.try_join_next() {
                total += batch_report(done);
            }
            if batches.len() >= max_batches {
                if let Some(done) = batches.join_next().await {
                    total += batch_report(done);
                }
                continue;
            }
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = inner.bus.receive(&inner.queue, options) => received,
            };
            match received {
                Ok(deliveries) if deliveries.is_empty() => inner.maybe_complete().await,
                Ok(deliveries) => {
                    batches.spawn(inner.clone().process(deliveries));
                }
                Err(e) => {
                    tracing::error!(error = %e, "receiving from the email queue failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(RECEIVE_RETRY_DELAY) => {}
                    }
                }
            }
        }
        tracing::info!(
            batches = batches.len(),
            "mailer stopping: finishing the sends in flight"
        );
        while let Some(done) = batches.join_next().await {
            total += batch_report(done);
        }
        inner.complete().await;
        tracing::info!(sent = total.sent, "mailer stopped");
        Ok(total)
    }

    /// Handles every message visible now, batch after batch, then moves
    /// finished alerts to sent. Messages waiting for a retry delay are left
    /// for a later call.
    pub async fn drain(&self) -> Result<MailerReport, MailerError> {
        let inner = &self.inner;
        inner.prepare().await?;
        let options = ReceiveOptions {
            max: inner.settings.receive_batch,
            wait: Duration::ZERO,
            visibility: inner.settings.claim_ttl,
        };
        let mut total = MailerReport::default();
        loop {
            let deliveries = inner.bus.receive(&inner.queue, options).await?;
            if deliveries.is_empty() {
                break;
            }
            total += inner.clone().process(deliveries).await;
        }
        inner.complete().await;
        Ok(total)
    }

    /// The dead-letter queue failed messages are copied to.
    pub fn dead_letter_queue(&self) -> &QueueName {
        &self.inner.dead_letter
    }
}

fn batch_report(done: Result<MailerReport, JoinError>) -> MailerReport {
    done.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a mailer batch ended abnormally; its messages are redelivered after their visibility lapses");
        MailerReport::default()
    })
}

impl Inner {
    /// Starts the confirmer's task and creates (or updates) the email queue
    /// and its dead-letter queue, once per mailer. The task ends once the
    /// mailer and its batches are gone, after confirming what they left.
    async fn prepare(&self) -> Result<(), BusError> {
        let queue = self
            .confirm_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(queue) = queue {
            tokio::spawn(self.confirmer.clone().run(queue));
        }
        self.queue_ready
            .get_or_try_init(|| async {
                let config = QueueConfig {
                    dead_letter_queue: Some(self.dead_letter.clone()),
                    ..self.queue_config.clone()
                };
                ensure_email_queue(self.bus.as_ref(), &config)
                    .await
                    .map(drop)
            })
            .await
            .copied()
    }

    async fn process(self: Arc<Self>, deliveries: Vec<Delivery>) -> MailerReport {
        let mut report = MailerReport {
            received: deliveries.len() as u64,
            ..MailerReport::default()
        };
        let mut groups: Vec<(String, Vec<Pending>)> = Vec::new();
        for delivery in deliveries {
            match EmailJob::parse(&delivery.body) {
                Ok(job) => {
                    let pending = Pending { delivery, job };
                    match groups
                        .iter_mut()
                        .find(|(id, _)| *id == pending.job.alert_id)
                    {
                        Some((_, items)) => items.push(pending),
                        None => groups.push((pending.job.alert_id.clone(), vec![pending])),
                    }
                }
                Err(e) => {
                    report.malformed += 1;
                    tracing::warn!(message_id = %delivery.id, error = %e, "dead-lettering a malformed message");
                    self.dead_letter(&delivery, None, &e.to_string()).await;
                }
            }
        }
        for (alert_id, items) in groups {
            self.process_alert(&alert_id, items, &mut report).await;
        }
        self.maybe_complete().await;
        report
    }

    async fn process_alert(&self, alert_id: &str, items: Vec<Pending>, report: &mut MailerReport) {
        let alert = match self.store.brand_alerts().get(alert_id).await {
            Ok(Some(alert))
                if matches!(alert.state, AlertState::Building | AlertState::Sending) =>
            {
                alert
            }
            Ok(found) => {
                let state = found.map(|a| a.state);
                tracing::debug!(
                    alert_id,
                    ?state,
                    count = items.len(),
                    "dropping messages of an alert that is not sending"
                );
                report.dropped += items.len() as u64;
                self.ack(items.iter().map(|p| p.delivery.receipt.clone()).collect())
                    .await;
                return;
            }
            Err(e) => return self.retry_later(alert_id, items, &e).await,
        };
        let content = match self.composer.content(&alert).await {
            Ok(content) => content,
            Err(ContentError::Unusable(reason)) => {
                self.fail_alert(&alert.id, &reason).await;
                report.dropped += items.len() as u64;
                self.ack(items.iter().map(|p| p.delivery.receipt.clone()).collect())
                    .await;
                return;
            }
            Err(ContentError::Store(e)) => return self.retry_later(alert_id, items, &e).await,
        };
        let Some((transport_name, transport)) = self.composer.transport(&alert) else {
            let reason = format!(
                "transport {:?} is not configured",
                alert.transport.as_deref().unwrap_or_default()
            );
            self.fail_alert(&alert.id, &reason).await;
            report.dropped += items.len() as u64;
            self.ack(items.iter().map(|p| p.delivery.receipt.clone()).collect())
                .await;
            return;
        };

        // One claim per member: a message repeated within the batch (its
        // dedup window had passed) is acked; the first copy decides.
        let mut seen = HashSet::new();
        let (items, repeats): (Vec<Pending>, Vec<Pending>) = items
            .into_iter()
            .partition(|p| seen.insert(p.job.member_id.clone()));
        if !repeats.is_empty() {
            report.dropped += repeats.len() as u64;
            self.ack(repeats.iter().map(|p| p.delivery.receipt.clone()).collect())
                .await;
        }

        let cadence = match self.cadence_policy().await {
            Ok(cadence) => cadence,
            Err(e) => return self.retry_later(alert_id, items, &e).await,
        };
        let member_ids: Vec<String> = items.iter().map(|p| p.job.member_id.clone()).collect();
        let now = self.clock.now();
        let outcomes = match self
            .store
            .brand_alerts()
            .claim_sends(
                &alert.id,
                &member_ids,
                &cadence,
                self.settings.claim_ttl,
                now,
            )
            .await
        {
            Ok(outcomes) if outcomes.len() == items.len() => outcomes,
            Ok(outcomes) => {
                let e = StoreError::Corrupt {
                    backend: self.store.backend(),
                    what: "claim outcomes",
                    message: format!("{} outcomes for {} members", outcomes.len(), items.len()),
                };
                return self.retry_later(alert_id, items, &e).await;
            }
            Err(e) => return self.retry_later(alert_id, items, &e).await,
        };

        let mut to_send = Vec::new();
        let mut done = Vec::new();
        for (pending, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                ClaimOutcome::Claimed {
                    possible_duplicate,
                    member,
                    ..
                } => {
                    if possible_duplicate {
                        report.possible_duplicates += 1;
                        telemetry::PossibleDuplicate {
                            alert_id: &alert.id,
                            member_id: &pending.job.member_id,
                        }
                        .emit();
                    }
                    let recipient = recipient::from_claim(pending.job.member_id.clone(), member);
                    to_send.push(Ready { pending, recipient });
                }
                ClaimOutcome::Busy { until } => {
                    report.busy += 1;
                    let delay = until.since(now) + BUSY_MARGIN;
                    self.nack(&pending.delivery.receipt, delay).await;
                }
                ClaimOutcome::Finished(_) => {
                    report.already_finished += 1;
                    done.push(pending.delivery.receipt);
                }
                ClaimOutcome::Skipped(reason) => {
                    report.skipped += 1;
                    telemetry::SendSkipped {
                        alert_id: &alert.id,
                        member_id: &pending.job.member_id,
                        reason,
                    }
                    .emit();
                    done.push(pending.delivery.receipt);
                }
            }
        }
        if !to_send.is_empty() {
            let send = SendContext {
                alert: Arc::new(alert),
                content,
                transport_name: Arc::from(transport_name),
                transport,
            };
            self.send_all(send, to_send, &mut done, report).await;
        }
        // One ack for the batch: a message left unacked a little longer only
        // comes back if the process dies, and its row, finished by then,
        // has it acked without a send.
        self.ack(done).await;
    }

    /// The cadence policy, read again once the one read last is
    /// [`CADENCE_REUSE`] old.
    async fn cadence_policy(&self) -> Result<CadencePolicy, StoreError> {
        let cached = self
            .cadence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(read_at, _)| read_at.elapsed() < CADENCE_REUSE)
            .map(|(_, cadence)| *cadence);
        if let Some(cadence) = cached {
            return Ok(cadence);
        }
        let read_at = Instant::now();
        let cadence = self.store.members().cadence_policy().await?;
        *self.cadence.lock().unwrap_or_else(PoisonError::into_inner) = Some((read_at, cadence));
        Ok(cadence)
    }

    /// Sends every claimed message, at most `concurrency` at once, hands
    /// each completed send with its permit to the confirmer, and waits
    /// for its answers; adds the receipts of confirmed sends to `acks`.
    async fn send_all(
        &self,
        send: SendContext,
        to_send: Vec<Ready>,
        acks: &mut Vec<Receipt>,
        report: &mut MailerReport,
    ) {
        let chunk_size = send
            .transport
            .batch_size(self.settings.concurrency)
            .clamp(1, self.settings.concurrency);
        let mut waiting: VecDeque<Vec<Ready>> = VecDeque::new();
        let mut items = to_send.into_iter().peekable();
        while items.peek().is_some() {
            waiting.push_back(items.by_ref().take(chunk_size).collect());
        }
        let mut running: JoinSet<Chunk> = JoinSet::new();
        let mut confirmations = Vec::new();
        loop {
            let next_len = waiting.front().map_or(1, Vec::len);
            let permits = u32::try_from(next_len).unwrap_or(u32::MAX);
            tokio::select! {
                biased;
                permit = self.permits.clone().acquire_many_owned(permits), if !waiting.is_empty() => {
                    // The semaphore is never closed and `waiting` was not
                    // empty, so this only guards against the impossible.
                    let (Ok(permit), Some(chunk)) = (permit, waiting.pop_front()) else {
                        break;
                    };
                    running.spawn(send_chunk(
                        self.composer.clone(),
                        send.clone(),
                        chunk,
                        permit,
                    ));
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    let chunk = match done {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            tracing::error!(alert_id = %send.alert.id, error = %e, "a send task ended abnormally; its messages are redelivered after their claims lapse");
                            continue;
                        }
                    };
                    if let Some(confirmation) = self.hand_over(&send.alert.id, chunk, report).await {
                        confirmations.push(confirmation);
                    }
                }
                else => break,
            }
        }
        for (mut receipts, confirmed) in confirmations {
            // A confirmer that went away before answering (its task
            // panicked) confirmed nothing that it did not report.
            if confirmed.await.unwrap_or(false) {
                let count = receipts.len() as u64;
                acks.append(&mut receipts);
                report.sent += count;
                telemetry::EmailsSent {
                    alert_id: &send.alert.id,
                    transport: &send.transport_name,
                    count,
                }
                .emit();
            }
        }
    }

    /// Hands a completed chunk's sends, with its permits, to the confirmer
    /// and handles its failures; returns the receipts of the sends it handed
    /// over, to ack once the answer says they are confirmed.
    async fn hand_over(
        &self,
        alert_id: &str,
        chunk: Chunk,
        report: &mut MailerReport,
    ) -> Option<(Vec<Receipt>, oneshot::Receiver<bool>)> {
        let mut sent = Vec::new();
        let mut receipts = Vec::new();
        let mut failures = Vec::new();
        for finished in chunk.finished {
            match finished.attempt {
                Attempt::Sent(provider_message_id) => {
                    sent.push(SentMessage {
                        member_id: finished.pending.job.member_id,
                        provider_message_id,
                    });
                    receipts.push(finished.pending.delivery.receipt);
                }
                _ => failures.push(finished),
            }
        }
        let handed = if sent.is_empty() {
            drop(chunk.permits);
            None
        } else {
            let (answer, confirmed) = oneshot::channel();
            let item = ToConfirm {
                alert_id: alert_id.to_owned(),
                sent,
                permits: chunk.permits,
                answer,
            };
            if let Err(mpsc::error::SendError(item)) = self.to_confirm.send(item) {
                // No confirmer task (it panicked): confirm here instead.
                self.confirmer.settle(vec![item]).await;
            }
            Some((receipts, confirmed))
        };
        for failure in failures {
            self.handle_failure(alert_id, failure, report).await;
        }
        handed
    }

    async fn handle_failure(&self, alert_id: &str, finished: Finished, report: &mut MailerReport) {
        let Finished {
            pending,
            address,
            attempt,
        } = finished;
        let member_id = pending.job.member_id.clone();
        match attempt {
            Attempt::Sent(_) => {}
            Attempt::NotComposed(reason) => {
                self.fail_and_dead_letter(alert_id, &pending, FailureKind::Render, &reason, report)
                    .await;
            }
            Attempt::Failed(SendError::Transient {
                retry_after,
                reason,
            }) => {
                let receives = pending.delivery.receive_count;
                let max = self.queue_config.max_receives;
                if max > 0 && receives >= max {
                    let reason = format!("gave up after {receives} attempts: {reason}");
                    self.fail_and_dead_letter(
                        alert_id,
                        &pending,
                        FailureKind::RetriesExhausted,
                        &reason,
                        report,
                    )
                    .await;
                    return;
                }
                let delay = self
                    .settings
                    .backoff_for(receives)
                    .max(retry_after.unwrap_or_default());
                self.release(alert_id, &member_id, &reason).await;
                self.nack(&pending.delivery.receipt, delay).await;
                report.retried += 1;
                telemetry::SendRetried {
                    alert_id,
                    member_id: &member_id,
                    attempt: receives,
                    delay,
                    reason: &reason,
                }
                .emit();
            }
            Attempt::Failed(SendError::Permanent {
                reason,
                suppress_address,
            }) => {
                if let (true, Some(address)) = (suppress_address, address) {
                    if self.suppress(&address, &reason).await {
                        report.suppressed += 1;
                        telemetry::AddressSuppressed {
                            member_id: &member_id,
                            reason: &reason,
                        }
                        .emit();
                    }
                }
                self.fail_and_dead_letter(
                    alert_id,
                    &pending,
                    FailureKind::Permanent,
                    &reason,
                    report,
                )
                .await;
            }
        }
    }

    async fn suppress(&self, address: &str, reason: &str) -> bool {
        let suppressed = self
            .store
            .members()
            .suppress(
                address,
                SuppressionReason::InvalidAddress,
                SUPPRESSION_SOURCE,
                Some(reason),
            )
            .await;
        match suppressed {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot suppress an address the provider refused");
                false
            }
        }
    }

    /// Finishes the member's row as failed, copies the message to the
    /// dead-letter queue with the reason, and acks it.
    async fn fail_and_dead_letter(
        &self,
        alert_id: &str,
        pending: &Pending,
        kind: FailureKind,
        reason: &str,
        report: &mut MailerReport,
    ) {
        let member_id = &pending.job.member_id;
        let marked = self
            .store
            .brand_alerts()
            .mark_failed(alert_id, member_id, reason, self.clock.now())
            .await;
        if let Err(e) = marked {
            tracing::warn!(alert_id, member_id, error = %e, "cannot record a failed send; retrying later");
            self.nack(&pending.delivery.receipt, STORE_RETRY_DELAY)
                .await;
            return;
        }
        report.failed += 1;
        telemetry::SendFailed {
            alert_id,
            member_id,
            kind,
            reason,
        }
        .emit();
        self.dead_letter(&pending.delivery, Some(&pending.job), reason)
            .await;
    }

    /// Copies a message to the dead-letter queue and acks the original.
    async fn dead_letter(&self, delivery: &Delivery, job: Option<&EmailJob>, reason: &str) {
        let letter = queue::dead_letter(delivery.body.clone(), job, reason);
        match self.bus.send(&self.dead_letter, letter).await {
            Ok(_) => self.ack(vec![delivery.receipt.clone()]).await,
            Err(e) => {
                // Left unacked, the message comes back; its finished row
                // then has it acked, so only the copy is lost.
                tracing::error!(message_id = %delivery.id, error = %e, reason, "cannot dead-letter a message");
            }
        }
    }

    async fn release(&self, alert_id: &str, member_id: &str, reason: &str) {
        let released = self
            .store
            .brand_alerts()
            .release_claim(alert_id, member_id, reason, self.clock.now())
            .await;
        if let Err(e) = released {
            tracing::warn!(alert_id, member_id, error = %e, "cannot release a claim; it lapses on its own");
        }
    }

    async fn fail_alert(&self, alert_id: &str, reason: &str) {
        let failed = self
            .store
            .brand_alerts()
            .apply(alert_id, AlertAction::Fail, Some(reason))
            .await;
        match failed {
            Ok(_) => telemetry::AlertFailed {
                alert_id,
                reason,
                by: "mailer",
            }
            .emit(),
            // Cancelled or failed by someone else meanwhile.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => {
                tracing::error!(alert_id, error = %e, reason, "cannot fail an alert that cannot be sent")
            }
        }
        self.composer.forget(alert_id);
    }

    /// Leaves the messages for a later delivery after a store failure.
    async fn retry_later(&self, alert_id: &str, items: Vec<Pending>, error: &StoreError) {
        tracing::warn!(alert_id, count = items.len(), error = %error, "store unavailable; retrying the messages later");
        for pending in items {
            self.nack(&pending.delivery.receipt, STORE_RETRY_DELAY)
                .await;
        }
    }

    async fn ack(&self, receipts: Vec<Receipt>) {
        if receipts.is_empty() {
            return;
        }
        match self.bus.ack_batch(&self.queue, &receipts).await {
            Ok(outcomes) => {
                for outcome in outcomes {
                    if let Err(e) = outcome {
                        // Redelivered meanwhile: the new delivery finds the
                        // row finished.
                        tracing::debug!(error = %e, "ack refused");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "acking failed; the messages come back and are acked then")
            }
        }
    }

    async fn nack(&self, receipt: &Receipt, delay: Duration) {
        if let Err(e) = self.bus.nack(&self.queue, receipt, delay).await {
            tracing::debug!(error = %e, "nack refused; the message comes back when its visibility lapses");
        }
    }

    async fn maybe_complete(&self) {
        {
            let mut last = self
                .last_completion
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < COMPLETE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.complete().await;
    }

    /// Moves alerts whose every message is handled to sent.
    async fn complete(&self) {
        match self
            .store
            .brand_alerts()
            .complete_finished(self.clock.now())
            .await
        {
            Ok(ids) => {
                for id in &ids {
                    self.composer.forget(id);
                }
                telemetry::alerts_completed(&ids);
            }
            Err(e) => tracing::warn!(error = %e, "cannot complete finished alerts; retrying later"),
        }
    }
}

/// Completed sends of one chunk, waiting for their confirm with the
/// permits they were sent under.
struct ToConfirm {
    alert_id: String,
    sent: Vec<SentMessage>,
    permits: OwnedSemaphorePermit,
    /// Whether they were confirmed.
    answer: oneshot::Sender<bool>,
}

/// Confirms the completed sends of every batch of a mailer, in rounds.
struct Confirmer {
    store: Store,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    concurrency: usize,
}

impl Confirmer {
    /// Takes completed sends until every sender is gone. A round takes
    /// those waiting; while fewer than half the permits' sends are in it
    /// and other sends are still in flight, it waits for them, at most
    /// [`SETTLE_WITHIN`] after its first, so a slow send never keeps the
    /// others unconfirmed (and their permits taken) for long.
    async fn run(self: Arc<Self>, mut queue: UnboundedReceiver<ToConfirm>) {
        let settle_at = (self.concurrency / 2).max(1);
        while let Some(first) = queue.recv().await {
            let settle_by = tokio::time::Instant::now() + SETTLE_WITHIN;
            let mut round = vec![first];
            loop {
                while let Ok(more) = queue.try_recv() {
                    round.push(more);
                }
                let held: usize = round.iter().map(|item| item.permits.num_permits()).sum();
                let sends: usize = round.iter().map(|item| item.sent.len()).sum();
                let in_flight = self.concurrency - self.permits.available_permits();
                if sends >= settle_at || in_flight <= held {
                    break;
                }
                match tokio::time::timeout_at(settle_by, queue.recv()).await {
                    Ok(Some(more)) => round.push(more),
                    Ok(None) | Err(_) => break,
                }
            }
            self.settle(round).await;
        }
    }

    /// Confirms the round's sends (a transaction per alert), releases their
    /// permits and answers each chunk.
    async fn settle(&self, round: Vec<ToConfirm>) {
        let mut alerts: Vec<(&str, Vec<SentMessage>)> = Vec::new();
        for item in &round {
            match alerts.iter_mut().find(|(id, _)| *id == item.alert_id) {
                Some((_, sent)) => sent.extend(item.sent.iter().cloned()),
                None => alerts.push((&item.alert_id, item.sent.clone())),
            }
        }
        let mut confirmed = HashSet::new();
        for (alert_id, sent) in &alerts {
            if self.confirm(alert_id, sent).await {
                confirmed.insert(alert_id.to_string());
            }
        }
        for item in round {
            drop(item.permits);
            // A batch that went away (aborted) needs no answer.
            let _ = item.answer.send(confirmed.contains(&item.alert_id));
        }
    }

    /// Confirms in the send log, retrying briefly; false when it could not,
    /// which leaves the messages to be redelivered and resent as possible
    /// duplicates once their claims lapse.
    async fn confirm(&self, alert_id: &str, sent: &[SentMessage]) -> bool {
        let mut attempt = 1;
        loop {
            let result = self
                .store
                .brand_alerts()
                .confirm_sent(alert_id, sent, self.clock.now())
                .await;
            match result {
                Ok(()) => return true,
                Err(e) if attempt < CONFIRM_ATTEMPTS => {
                    tracing::warn!(alert_id, attempt, error = %e, "confirming sent emails failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(alert_id, count = sent.len(), error = %e, "cannot confirm sent emails; they will be resent as possible duplicates");
                    return false;
                }
            }
        }
    }
}

/// What every send of one alert's batch shares.
#[derive(Clone)]
struct SendContext {
    alert: Arc<BrandAlert>,
    content: Arc<AlertContent>,
    transport_name: Arc<str>,
    transport: Arc<dyn Transport>,
}

/// Builds and sends the emails of one chunk; runs in its own task so
/// rendering uses every core.
async fn send_chunk(
    composer: Arc<Composer>,
    send: SendContext,
    chunk: Vec<Ready>,
    permits: OwnedSemaphorePermit,
) -> Chunk {
    let mut finished = Vec::with_capacity(chunk.len());
    let mut ready = Vec::new();
    let mut emails = Vec::new();
    for Ready { pending, recipient } in chunk {
        match composer.compose(
            &send.alert,
            &send.content,
            &recipient,
            &pending.job.brand_ids,
        ) {
            Ok(email) => {
                emails.push(email);
                ready.push((pending, recipient.email));
            }
            Err(e) => finished.push(Finished {
                pending,
                address: Some(recipient.email),
                attempt: Attempt::NotComposed(e.to_string()),
            }),
        }
    }
    if !emails.is_empty() {
        let started = Instant::now();
        let mut results = if let [email] = emails.as_slice() {
            vec![send.transport.send(email).await]
        } else {
            send.transport.send_batch(&emails).await
        };
        telemetry::record_send_duration(&send.transport_name, started.elapsed());
        // A transport owes one result per email; a missing one is treated
        // as a failure to retry rather than as a send.
        results.resize_with(ready.len(), || {
            Err(SendError::transient(
                "the transport returned no result for this email",
            ))
        });
        for ((pending, address), result) in ready.into_iter().zip(results) {
            finished.push(Finished {
                pending,
                address: Some(address),
                attempt: match result {
                    Ok(receipt) => Attempt::Sent(receipt.provider_message_id),
                    Err(e) => Attempt::Failed(e),
                },
            });
        }
    }
    Chunk { finished, permits }
}
