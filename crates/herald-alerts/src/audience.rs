//! The audience job: for each due alert, stream the members with enough
//! affinity for its brands, drop the ineligible, and enqueue one message per
//! member on `brand-alert-emails`.
//!
//! Resumable by construction: each batch is enqueued with one dedup key per
//! member (`<alert>:<member>`) and then recorded as the alert's build cursor.
//! A build killed between the two re-reads the batch after the cursor and
//! re-enqueues it; the bus drops the repeats within its dedup window, and
//! past it the mailer's send log still sends each member once.
//!
//! [`AudienceWorker`] polls for due alerts and holds a lease per alert
//! (`audience:<alert id>`), so two replicas never build one alert at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use herald_bus::{Bus, BusError, OutgoingMessage, QueueConfig};
use herald_core::alert::{AlertAction, AlertState};
use herald_core::cadence::CadencePolicy;
use herald_core::{Clock, QueueName, Timestamp};
use herald_store::brand_alerts::{AudienceCandidate, BrandAlert, BuildStep, Exclusion};
use herald_store::{Lease, Store, StoreError};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::affinity::{AffinityClient, AffinityError, AffinityReader};
use crate::content::{AlertContent, ContentError};
use crate::queue::{email_queue, ensure_email_queue, EmailJob};
use crate::settings::{AffinitySettings, AudienceSettings, SettingsError};
use crate::telemetry;

/// Most due alerts looked at per poll.
const DUE_PER_POLL: u32 = 16;

/// Member ranges of the built-in audience read at once, ahead of the
/// batch being enqueued. Reading is the larger half of a build's work and
/// each range is an independent query on the reader pool, so several at
/// once keep both the readers and the single writer busy.
const RANGES_AHEAD: usize = 3;

/// A range spans at most this many times `batch_size` members, so that a
/// region denser in candidates than the ones before it still makes a
/// batch of bounded size.
const MAX_RANGE_FACTOR: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Affinity(#[from] AffinityError),
}

/// What one step of a build did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// One batch enqueued and recorded.
    Batch(BuildStep),
    /// Every member is enqueued; the alert is now sending.
    Finished(Box<BrandAlert>),
    /// The alert left `building` meanwhile (cancelled or failed).
    Stopped(AlertState),
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildOutcome {
    /// Every member is enqueued; the alert is now sending.
    Finished(Box<BrandAlert>),
    /// The alert refers to something gone (template, sale, brand); it is
    /// now failed with this reason.
    Failed(String),
    /// The alert is not (or no longer) one to build: cancelled, failed, or
    /// not due.
    Stopped(AlertState),
    /// Shutdown, or the lease on the alert was lost; the build resumes
    /// later from its cursor.
    Interrupted,
}

/// Builds audiences. Cheap to share behind an `Arc`.
pub struct AudienceJob {
    store: Store,
    bus: Arc<dyn Bus>,
    settings: AudienceSettings,
    queue: QueueName,
    queue_config: QueueConfig,
    affinity: Option<AffinityClient>,
    clock: Arc<dyn Clock>,
    queue_ready: OnceCell<()>,
}

impl std::fmt::Debug for AudienceJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceJob")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AudienceJob {
    /// `queue_config` is the email queue's configuration (max receives,
    /// dedup window, body limit), created or updated on start.
    pub fn new(
        store: Store,
        bus: Arc<dyn Bus>,
        settings: AudienceSettings,
        queue_config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<AudienceJob, SettingsError> {
        settings.validate()?;
        let affinity = match &settings.affinity {
            AffinitySettings::Builtin => None,
            AffinitySettings::Http(http) => Some(
                AffinityClient::new(http.clone())
                    .map_err(|e| SettingsError::new("audience.affinity", e.to_string()))?,
            ),
        };
        Ok(AudienceJob {
            store,
            bus,
            settings,
            queue: email_queue(),
            queue_config,
            affinity,
            clock,
            queue_ready: OnceCell::new(),
        })
    }

    /// Creates (or updates) the email queue and its dead-letter queue, once
    /// per job; every build does it before enqueuing.
    pub async fn ensure_queue(&self) -> Result<(), BusError> {
        self.queue_ready
            .get_or_try_init(|| async {
                ensure_email_queue(self.bus.as_ref(), &self.queue_config)
                    .await
                    .map(drop)
            })
            .await
            .copied()
    }

    /// Starts the build of a due alert, or resumes the one in progress.
    /// `Err(outcome)` when there is nothing to build: the alert is not due
    /// or no longer buildable, or its content is gone (the alert then fails).
    pub async fn open(
        &self,
        alert_id: &str,
    ) -> Result<Result<AudienceBuild<'_>, BuildOutcome>, AudienceError> {
        let alerts = self.store.brand_alerts();
        let Some(alert) = alerts.get(alert_id).await? else {
            return Err(StoreError::NotFound {
                what: format!("brand alert {alert_id}"),
            }
            .into());
        };
        if !matches!(alert.state, AlertState::Scheduled | AlertState::Building) {
            return Ok(Err(BuildOutcome::Stopped(alert.state)));
        }
        let now = self.clock.now();
        if alert.state == AlertState::Scheduled && alert.send_at > now {
            return Ok(Err(BuildOutcome::Stopped(alert.state)));
        }
        let content = match AlertContent::load(&self.store, &alert).await {
            Ok(content) => content,
            Err(ContentError::Unusable(reason)) => {
                return fail_alert(&self.store, &alert.id, &reason, "audience")
                    .await
                    .map(Err);
            }
            Err(ContentError::Store(e)) => return Err(e.into()),
        };
        self.ensure_queue().await?;
        let alert = alerts.start_build(&alert.id, now).await?;
        let cadence = self.store.members().cadence_policy().await?;
        let brand_ids = content.brand_ids();
        let source = match &self.affinity {
            None => Source::Builtin(RangeReader::after(alert.build.cursor.clone())),
            Some(client) => Source::Http(Box::new(AffinityReader::new(
                client.clone(),
                brand_ids.clone(),
                alert.affinity_threshold,
                alert.build.cursor.clone(),
            ))),
        };
        tracing::info!(alert_id = %alert.id, resumed_after = ?alert.build.cursor, brands = brand_ids.len(), "audience build started");
        Ok(Ok(AudienceBuild {
            job: self,
            alert,
            brand_ids,
            cadence,
            source,
            batches: 0,
            started: Instant::now(),
        }))
    }

    /// Builds the alert to the end, stopping early when `stop` fires.
    pub async fn build(
        &self,
        alert_id: &str,
        stop: &CancellationToken,
    ) -> Result<BuildOutcome, AudienceError> {
        let mut build = match self.open(alert_id).await? {
            Ok(build) => build,
            Err(outcome) => return Ok(outcome),
        };
        loop {
            if stop.is_cancelled() {
                return Ok(BuildOutcome::Interrupted);
            }
            match build.step().await? {
                Step::Batch(_) => {}
                Step::Finished(alert) => return Ok(BuildOutcome::Finished(alert)),
                Step::Stopped(state) => return Ok(BuildOutcome::Stopped(state)),
            }
        }
    }
}

/// Moves an alert to failed with `reason`; an alert that already left the
/// states that can fail is reported as it is.
async fn fail_alert(
    store: &Store,
    alert_id: &str,
    reason: &str,
    by: &'static str,
) -> Result<BuildOutcome, AudienceError> {
    match store
        .brand_alerts()
        .apply(alert_id, AlertAction::Fail, Some(reason))
        .await
    {
        Ok(_) => {
            telemetry::AlertFailed {
                alert_id,
                reason,
                by,
            }
            .emit();
            Ok(BuildOutcome::Failed(reason.to_owned()))
        }
        Err(StoreError::Conflict { .. }) => {
            let state = store
                .brand_alerts()
                .get(alert_id)
                .await?
                .map_or(AlertState::Failed, |a| a.state);
            Ok(BuildOutcome::Stopped(state))
        }
        Err(e) => Err(e.into()),
    }
}

/// A batch ready to enqueue: one message per eligible member, and what the
/// batch adds to the alert's progress (its cursor and counts).
struct Prepared {
    messages: Vec<OutgoingMessage>,
    step: BuildStep,
}

impl Prepared {
    /// The candidates of the batch, enqueued or excluded.
    fn candidate_count(&self) -> u64 {
        let step = &self.step;
        step.enqueued
            + step.excluded_unsubscribed
            + step.excluded_suppressed
            + step.excluded_cadence
    }
}

/// Counts the exclusions of a batch and builds the messages of the rest.
fn prepare(alert_id: &str, candidates: Vec<AudienceCandidate>, cursor: String) -> Prepared {
    let mut step = BuildStep {
        cursor,
        enqueued: 0,
        excluded_unsubscribed: 0,
        excluded_suppressed: 0,
        excluded_cadence: 0,
    };
    let mut messages = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        match candidate.exclusion {
            Some(Exclusion::Unsubscribed) => step.excluded_unsubscribed += 1,
            Some(Exclusion::Suppressed) => step.excluded_suppressed += 1,
            Some(Exclusion::Cadence) => step.excluded_cadence += 1,
            None => {
                step.enqueued += 1;
                let email = EmailJob {
                    alert_id: alert_id.to_owned(),
                    member_id: candidate.member_id,
                    brand_ids: candidate.brand_ids,
                };
                messages.push(email.to_message());
            }
        }
    }
    Prepared { messages, step }
}

/// One range of members being read and prepared in the background.
struct PendingRange {
    /// The range holds the members after this id (`None`: from the first)
    /// up to and including `upto`.
    after: Option<String>,
    upto: String,
    width: u32,
    read: JoinHandle<Result<Prepared, StoreError>>,
}

/// The built-in audience, read as consecutive ranges of members whose
/// ends are known before they are read ([`BrandAlertStore::audience_range_end`]),
/// so that the next ranges are read while the current batch is enqueued.
///
/// [`BrandAlertStore::audience_range_end`]: herald_store::brand_alerts::BrandAlertStore::audience_range_end
struct RangeReader {
    pending: VecDeque<PendingRange>,
    /// Where the next range to start begins.
    next_after: Option<String>,
    /// No member comes after `next_after`.
    exhausted: bool,
    /// Members spanned by the ranges read so far, and the candidates in
    /// them: their ratio sizes the next ranges.
    members_read: u64,
    candidates_read: u64,
}

impl RangeReader {
    fn after(cursor: Option<String>) -> Self {
        Self {
            pending: VecDeque::new(),
            next_after: cursor,
            exhausted: false,
            members_read: 0,
            candidates_read: 0,
        }
    }

    /// Forgets the ranges in flight and starts again after `cursor`.
    fn restart(&mut self, cursor: Option<String>) {
        self.abort();
        self.next_after = cursor;
        self.exhausted = false;
    }

    fn abort(&mut self) {
        for range in self.pending.drain(..) {
            range.read.abort();
        }
    }

    /// Starts reading ranges until [`RANGES_AHEAD`] are in flight or the
    /// audience has no member left to range over.
    async fn top_up(
        &mut self,
        job: &AudienceJob,
        alert: &BrandAlert,
        brand_ids: &[String],
        cadence: CadencePolicy,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        while self.pending.len() < RANGES_AHEAD && !self.exhausted {
            let width = self.width(job.settings.batch_size);
            let Some(upto) = job
                .store
                .brand_alerts()
                .audience_range_end(self.next_after.as_deref(), width)
                .await?
            else {
                self.exhausted = true;
                break;
            };
            let (store, alert, brands, after, end) = (
                job.store.clone(),
                alert.clone(),
                brand_ids.to_vec(),
                self.next_after.clone(),
                upto.clone(),
            );
            let read = tokio::spawn(async move {
                let candidates = store
                    .brand_alerts()
                    .audience_range(&alert, &brands, &cadence, after.as_deref(), &end, now)
                    .await?;
                Ok(prepare(&alert.id, candidates, end))
            });
            self.pending.push_back(PendingRange {
                after: self.next_after.replace(upto.clone()),
                upto,
                width,
                read,
            });
        }
        Ok(())
    }

    /// Members per range so that a range holds about `batch_size`
    /// candidates, judging by the ranges read so far.
    fn width(&self, batch_size: u32) -> u32 {
        let batch = u64::from(batch_size);
        let width = match (self.members_read, self.candidates_read) {
            (0, _) => batch,
            (_, 0) => batch * MAX_RANGE_FACTOR,
            (members, candidates) => batch * members / candidates,
        };
        let width = width.clamp(batch, batch * MAX_RANGE_FACTOR);
        u32::try_from(width).unwrap_or(u32::MAX)
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        self.abort();
    }
}

enum Source {
    Builtin(RangeReader),
    Http(Box<AffinityReader>),
}

/// One alert's build in progress; [`AudienceBuild::step`] does one batch.
pub struct AudienceBuild<'a> {
    job: &'a AudienceJob,
    alert: BrandAlert,
    brand_ids: Vec<String>,
    cadence: CadencePolicy,
    source: Source,
    batches: u64,
    started: Instant,
}

impl AudienceBuild<'_> {
    pub fn alert(&self) -> &BrandAlert {
        &self.alert
    }

    /// Reads, classifies, enqueues and records one batch of members; at the
    /// end of the audience, finishes the build.
    pub async fn step(&mut self) -> Result<Step, AudienceError> {
        let job = self.job;
        let alerts = job.store.brand_alerts();
        let Some(current) = alerts.get(&self.alert.id).await? else {
            return Ok(Step::Stopped(AlertState::Cancelled));
        };
        if current.state != AlertState::Building {
            return Ok(Step::Stopped(current.state));
        }
        self.alert = current;
        let now = job.clock.now();
        let batch = match &mut self.source {
            Source::Builtin(ranges) => {
                let cursor = self.alert.build.cursor.clone();
                let expected = ranges
                    .pending
                    .front()
                    .map_or(&ranges.next_after, |r| &r.after);
                if *expected != cursor {
                    ranges.restart(cursor);
                }
                if ranges.pending.is_empty() {
                    ranges
                        .top_up(job, &self.alert, &self.brand_ids, self.cadence, now)
                        .await?;
                }
                match ranges.pending.pop_front() {
                    None => None,
                    Some(range) => {
                        // The next ranges' ends are found (and their reads
                        // started) while this one's read finishes.
                        let (read, topped_up) = tokio::join!(
                            range.read,
                            ranges.top_up(job, &self.alert, &self.brand_ids, self.cadence, now)
                        );
                        topped_up?;
                        let prepared = read.map_err(|e| StoreError::Backend {
                            backend: job.store.backend(),
                            message: format!(
                                "reading the audience up to member {} failed: {e}",
                                range.upto
                            ),
                        })??;
                        ranges.members_read += u64::from(range.width);
                        ranges.candidates_read += prepared.candidate_count();
                        Some((prepared, 0))
                    }
                }
            }
            Source::Http(reader) => {
                let batch_size = usize::try_from(job.settings.batch_size).unwrap_or(usize::MAX);
                let members = reader.next_batch(batch_size).await?;
                match members.last().map(|m| m.member_id.clone()) {
                    None => None,
                    Some(last) => {
                        let ids: Vec<String> =
                            members.iter().map(|m| m.member_id.clone()).collect();
                        let classified = alerts
                            .classify_members(&self.alert, &ids, &self.cadence, now)
                            .await?;
                        let unknown = (members.len() - classified.len().min(members.len())) as u64;
                        // Both lists are in member order; the store leaves
                        // out members it does not know.
                        let mut members = members.into_iter();
                        let mut candidates = Vec::with_capacity(classified.len());
                        for (member_id, exclusion) in classified {
                            let brand_ids = members
                                .by_ref()
                                .find(|m| m.member_id == member_id)
                                .map(|m| m.brand_ids)
                                .unwrap_or_default();
                            candidates.push(AudienceCandidate {
                                member_id,
                                brand_ids,
                                exclusion,
                            });
                        }
                        Some((prepare(&self.alert.id, candidates, last), unknown))
                    }
                }
            }
        };
        let Some((prepared, unknown_members)) = batch else {
            return self.finish().await;
        };
        let step = self.enqueue(prepared).await?;
        self.batches += 1;
        telemetry::AudienceBatch {
            alert_id: &self.alert.id,
            batch: self.batches,
            step: &step,
            unknown_members,
        }
        .emit();
        Ok(Step::Batch(step))
    }

    async fn enqueue(&self, prepared: Prepared) -> Result<BuildStep, AudienceError> {
        let job = self.job;
        let Prepared { messages, step } = prepared;
        if !messages.is_empty() {
            job.bus.send_batch(&job.queue, messages).await?;
        }
        job.store
            .brand_alerts()
            .record_build_step(&self.alert.id, &step)
            .await?;
        Ok(step)
    }

    async fn finish(&mut self) -> Result<Step, AudienceError> {
        let alert = self
            .job
            .store
            .brand_alerts()
            .finish_build(&self.alert.id, self.job.clock.now())
            .await?;
        telemetry::AudienceBuilt {
            alert_id: &alert.id,
            audience_size: alert.build.audience_size.unwrap_or(alert.build.enqueued),
            batches: self.batches,
            elapsed: self.started.elapsed(),
        }
        .emit();
        self.alert = alert.clone();
        Ok(Step::Finished(Box::new(alert)))
    }
}

/// Polls for due alerts and builds them, one lease per alert.
pub struct AudienceWorker {
    job: Arc<AudienceJob>,
    holder: String,
}

impl AudienceWorker {
    pub fn new(job: Arc<AudienceJob>) -> Self {
        Self {
            job,
            holder: format!("audience-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Polls every `poll_interval` until `shutdown` fires; a build in
    /// progress stops between two batches and resumes at the next start.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AudienceError> {
        self.job.ensure_queue().await?;
        tracing::info!(poll_interval = ?self.job.settings.poll_interval, "audience job started");
        while !shutdown.is_cancelled() {
            if let Err(e) = self.run_once(&shutdown).await {
                tracing::error!(error = %e, "audience poll failed; retrying at the next poll");
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.job.settings.poll_interval) => {}
            }
        }
        tracing::info!("audience job stopped");
        Ok(())
    }

    /// Builds every alert due now that no other replica is building;
    /// returns each alert's outcome.
    pub async fn run_once(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Vec<(String, BuildOutcome)>, AudienceError> {
        let due = self
            .job
            .store
            .brand_alerts()
            .due(self.job.clock.now(), DUE_PER_POLL)
            .await?;
        let mut outcomes = Vec::new();
        for alert in due {
            if shutdown.is_cancelled() {
                break;
            }
            let lease_name = format!("audience:{}", alert.id);
            let leases = self.job.store.leases();
            let Some(lease) = leases
                .try_acquire(&lease_name, &self.holder, self.job.settings.lease_ttl)
                .await?
            else {
                tracing::debug!(alert_id = %alert.id, "another replica is building this alert");
                continue;
            };
            let outcome = self.build_holding(&alert.id, lease, shutdown).await;
            match outcome {
                Ok(outcome) => outcomes.push((alert.id, outcome)),
                Err(e) => {
                    tracing::error!(alert_id = %alert.id, error = %e, "audience build interrupted by an error; it resumes at the next poll");
                }
            }
        }
        Ok(outcomes)
    }

    async fn build_holding(
        &self,
        alert_id: &str,
        lease: Lease,
        shutdown: &CancellationToken,
    ) -> Result<BuildOutcome, AudienceError> {
        let leases = self.job.store.leases();
        let ttl = self.job.settings.lease_ttl;
        let result = async {
            let mut lease = lease.clone();
            let mut renewed = Instant::now();
            let mut build = match self.job.open(alert_id).await? {
                Ok(build) => build,
                Err(outcome) => return Ok(outcome),
            };
            loop {
                if shutdown.is_cancelled() {
                    return Ok(BuildOutcome::Interrupted);
                }
                if renewed.elapsed() >= ttl / 3 {
                    match leases.renew(&lease, ttl).await? {
                        Some(next) => {
                            lease = next;
                            renewed = Instant::now();
                        }
                        None => {
                            tracing::warn!(alert_id, "lost the lease on this alert's build; another replica goes on with it");
                            return Ok(BuildOutcome::Interrupted);
                        }
                    }
                }
                match build.step().await? {
                    Step::Batch(_) => {}
                    Step::Finished(alert) => return Ok(BuildOutcome::Finished(alert)),
                    Step::Stopped(state) => return Ok(BuildOutcome::Stopped(state)),
                }
            }
        }
        .await;
        // The lease ran for the whole build; releasing it lets the next
        // poll of any replica pick the alert up at once if it is unfinished.
        if let Err(e) = leases.release(&lease).await {
            tracing::warn!(alert_id, error = %e, "cannot release the audience lease; it expires on its own");
        }
        result
    }

    pub fn job(&self) -> &AudienceJob {
        &self.job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sized_for_a_batch_of_candidates_within_bounds() {
        let mut ranges = RangeReader::after(None);
        assert_eq!(
            ranges.width(100),
            100,
            "nothing read yet: one batch of members"
        );
        ranges.members_read = 1_000;
        ranges.candidates_read = 200;
        assert_eq!(ranges.width(100), 500, "one member in five is a candidate");
        ranges.candidates_read = 1;
        assert_eq!(
            ranges.width(100),
            800,
            "sparse: capped at {MAX_RANGE_FACTOR} batches"
        );
        ranges.candidates_read = 0;
        assert_eq!(ranges.width(100), 800, "no candidate yet: the widest range");
        ranges.candidates_read = 5_000;
        assert_eq!(ranges.width(100), 100, "dense: never under one batch");
        assert_eq!(ranges.width(u32::MAX), u32::MAX, "saturates");
    }
}
