//! Brand alerts and their send log.
//!
//! The alert's lifecycle follows [`herald_core::alert`]; every change of
//! state here goes through `AlertState::apply`, so an illegal move is a
//! [`StoreError::Conflict`] whose message names the current state.
//!
//! The send log holds one row per alert and member. The mailer claims the
//! row before it sends and finishes it after (sent, failed or skipped):
//! redeliveries and restarts find the finished row and send nothing. A claim
//! whose time ran out was left by a process that died mid-send; taking it
//! over resends and flags the row as a possible duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::alert::{AlertAction, AlertState, TransitionError};
use herald_core::cadence::CadencePolicy;
use herald_core::catalog::AffinityScore;
use herald_core::{Clock, Timestamp};
use sqlx::types::Json;

use crate::email_events::{EventKey, EventTimeline, TimeBucket, TimelineCount};
use crate::page::{Page, PageRequest};
use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// A brand alert as stored, with its sales in the order marketing chose.
#[derive(Debug, Clone, PartialEq)]
pub struct BrandAlert {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub template_id: String,
    pub send_at: Timestamp,
    /// Members with an affinity at least this high for one of the alert's
    /// brands are its audience.
    pub affinity_threshold: f64,
    /// A configured transport's name; `None` uses the default transport.
    pub transport: Option<String>,
    pub state: AlertState,
    /// Grows on every change; lets the API refuse a PATCH based on a stale read.
    pub version: i64,
    pub sale_ids: Vec<String>,
    pub build: BuildProgress,
    pub failure_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the alert reached a terminal state (sent, cancelled or failed).
    pub completed_at: Option<Timestamp>,
}

/// How far the audience job has come.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildProgress {
    /// The last member id whose message is enqueued; a restarted build goes
    /// on after it.
    pub cursor: Option<String>,
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    /// Known once the build has finished: the number of members enqueued.
    pub audience_size: Option<u64>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewBrandAlert {
    pub name: String,
    pub subject: String,
    pub template_id: String,
    pub send_at: Timestamp,
    pub affinity_threshold: f64,
    pub transport: Option<String>,
    /// At least one; every sale must exist.
    pub sale_ids: Vec<String>,
}

/// A change to a draft; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BrandAlertPatch {
    pub name: Option<String>,
    pub subject: Option<String>,
    pub template_id: Option<String>,
    pub send_at: Option<Timestamp>,
    pub affinity_threshold: Option<f64>,
    /// `Some(None)` clears the transport back to the default.
    pub transport: Option<Option<String>>,
    pub sale_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BrandAlertFilter {
    pub state: Option<AlertState>,
    /// Alerts whose send time is at or after this.
    pub send_from: Option<Timestamp>,
    /// Alerts whose send time is before this.
    pub send_until: Option<Timestamp>,
    pub page: PageRequest,
}

/// One member the audience query found for an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceCandidate {
    pub member_id: String,
    /// Every brand of the alert the member's affinity reaches the threshold
    /// for, in the alert's order.
    pub brand_ids: Vec<String>,
    /// Why the member gets no message, or `None` when they do.
    pub exclusion: Option<Exclusion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exclusion {
    Unsubscribed,
    Suppressed,
    /// At the cadence limit: the send log holds `max_alerts` other alerts
    /// for the member within the window.
    Cadence,
}

/// What one batch of the audience job adds to the alert's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStep {
    /// The last member id of the batch (enqueued or excluded).
    pub cursor: String,
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
}

/// The answer to a claim for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Send now, to `member`. `possible_duplicate` when the claim was taken
    /// over from a process that died mid-send, which may have sent it
    /// already.
    Claimed {
        possible_duplicate: bool,
        attempt: u32,
        member: Addressee,
    },
    /// Another worker holds a live claim until this time; retry after it.
    Busy { until: Timestamp },
    /// The row is finished (sent, failed or skipped): send nothing.
    Finished(SendState),
    /// Not sendable any more; the row is now finished as skipped with this
    /// reason.
    Skipped(SkipReason),
}

/// What an email needs of a member, read in the member's claim so the
/// sender need not read the member again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressee {
    pub email: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    /// The key provider events are routed by; `None` means the member id.
    pub customer_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendState {
    Claimed,
    Released,
    Sent,
    Failed,
    Skipped,
}

impl SendState {
    pub fn as_str(self) -> &'static str {
        match self {
            SendState::Claimed => "claimed",
            SendState::Released => "released",
            SendState::Sent => "sent",
            SendState::Failed => "failed",
            SendState::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    MemberMissing,
    MemberInactive,
    Unsubscribed,
    Suppressed,
    Cadence,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MemberMissing => "member_missing",
            SkipReason::MemberInactive => "member_inactive",
            SkipReason::Unsubscribed => "unsubscribed",
            SkipReason::Suppressed => "suppressed",
            SkipReason::Cadence => "cadence",
        }
    }
}

/// One successful send to confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub member_id: String,
    pub provider_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertStats {
    pub audience_size: Option<u64>,
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    /// Enqueued members without a finished send-log row.
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Sends resent after a claim was taken over from a dead process.
    pub possible_duplicates: u64,
    /// Provider events by type (`delivered`, `open`, `click`, `bounce`, ...).
    pub events: BTreeMap<String, u64>,
}

#[async_trait]
pub trait BrandAlertStore: Send + Sync {
    /// A new draft. Unknown template or sale ids are
    /// [`StoreError::InvalidInput`] naming `template_id` or `sale_ids`.
    async fn create(&self, new: &NewBrandAlert) -> Result<BrandAlert, StoreError>;

    async fn get(&self, id: &str) -> Result<Option<BrandAlert>, StoreError>;

    /// Newest send time first, then id.
    async fn list(&self, filter: &BrandAlertFilter) -> Result<Page<BrandAlert>, StoreError>;

    /// Changes a draft. Anything but a draft is a [`StoreError::Conflict`]
    /// naming its state; `expected_version`, when given and stale, too.
    async fn update_draft(
        &self,
        id: &str,
        patch: &BrandAlertPatch,
        expected_version: Option<i64>,
    ) -> Result<BrandAlert, StoreError>;

    /// Applies a lifecycle action (schedule, unschedule, cancel, fail, ...);
    /// an illegal one is a [`StoreError::Conflict`] naming the current state.
    /// `reason` is kept as the failure reason for [`AlertAction::Fail`].
    async fn apply(
        &self,
        id: &str,
        action: AlertAction,
        reason: Option<&str>,
    ) -> Result<BrandAlert, StoreError>;

    /// Deletes a draft; anything else is a [`StoreError::Conflict`].
    async fn delete_draft(&self, id: &str) -> Result<(), StoreError>;

    async fn stats(&self, id: &str) -> Result<AlertStats, StoreError>;

    /// Alerts the audience job should work on: scheduled ones whose send
    /// time has come and building ones (a build interrupted by a crash),
    /// oldest send time first.
    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<BrandAlert>, StoreError>;

    /// Moves a due scheduled alert to building and stamps the start; an
    /// alert already building is returned as it is (a resumed build). A
    /// scheduled alert not due yet is a [`StoreError::Conflict`].
    async fn start_build(&self, id: &str, now: Timestamp) -> Result<BrandAlert, StoreError>;

    /// Up to `limit` audience candidates after member id `after`, in member
    /// id order, for the given brands: members that are active and have an
    /// affinity of at least the alert's threshold for at least one brand,
    /// each with the exclusion that applies, if any. Streams in pages so the
    /// job never holds more than one page.
    async fn audience_page(
        &self,
        alert: &BrandAlert,
        brand_ids: &[String],
        cadence: &CadencePolicy,
        after: Option<&str>,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<AudienceCandidate>, StoreError>;

    /// The audience candidates, as [`BrandAlertStore::audience_page`] finds
    /// them, among the members whose ids are after `after` and up to and
    /// including `upto`, in member id order. With
    /// [`BrandAlertStore::audience_range_end`] a build knows where a range
    /// ends before reading it, so it can read several ranges at once.
    async fn audience_range(
        &self,
        alert: &BrandAlert,
        brand_ids: &[String],
        cadence: &CadencePolicy,
        after: Option<&str>,
        upto: &str,
        now: Timestamp,
    ) -> Result<Vec<AudienceCandidate>, StoreError>;

    /// Where a range of the next `members` members after `after` (in id
    /// order, whatever their status) ends: the id of the `members`-th one,
    /// or of the last member when fewer remain; `None` when no member comes
    /// after `after`.
    async fn audience_range_end(
        &self,
        after: Option<&str>,
        members: u32,
    ) -> Result<Option<String>, StoreError>;

    /// For an audience that comes from an external Affinity API: the same
    /// rules as [`BrandAlertStore::audience_page`] applied to the given
    /// members (in the given order). Members that do not exist or are
    /// inactive are left out of the answer.
    async fn classify_members(
        &self,
        alert: &BrandAlert,
        member_ids: &[String],
        cadence: &CadencePolicy,
        now: Timestamp,
    ) -> Result<Vec<(String, Option<Exclusion>)>, StoreError>;

    /// Records one enqueued batch; only moves forward (a cursor at or before
    /// the stored one changes nothing), so a replayed batch counts once.
    async fn record_build_step(&self, id: &str, step: &BuildStep) -> Result<(), StoreError>;

    /// Building → sending; the audience size becomes the enqueued count.
    /// An alert already sending is returned as it is (a replayed finish).
    async fn finish_build(&self, id: &str, now: Timestamp) -> Result<BrandAlert, StoreError>;

    /// Claims the send-log rows of these members in one transaction,
    /// checking again that each member exists, is active, subscribed, not
    /// suppressed and under the cadence limit (counting other alerts' sent
    /// and claimed rows in the window). Outcomes come in `member_ids` order;
    /// a claimed one carries what the email needs of the member.
    async fn claim_sends(
        &self,
        alert_id: &str,
        member_ids: &[String],
        cadence: &CadencePolicy,
        claim_ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>, StoreError>;

    /// Finishes claimed rows as sent, in one transaction. Rows in any other
    /// state stay as they are, so confirming again changes nothing.
    async fn confirm_sent(
        &self,
        alert_id: &str,
        sent: &[SentMessage],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// A transient failure: the row goes back to released so the next
    /// delivery of the message claims it again (not a duplicate). Only a
    /// claimed row is released.
    async fn release_claim(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// A permanent failure, or the last transient one: finished as failed
    /// with its reason. A claimed or released row fails; a member without a
    /// row yet (a message that failed before its claim, a render error say)
    /// gets a failed row, so the alert can still complete; a finished row
    /// stays as it is.
    async fn mark_failed(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Moves every sending alert whose enqueued members all have a finished
    /// send-log row to sent; returns their ids.
    async fn complete_finished(&self, now: Timestamp) -> Result<Vec<String>, StoreError>;

    /// Counts stored provider events toward their brand alert's statistics
    /// and timeline (the inbound stats subscriber), each event once: in one
    /// transaction it marks the events counted and adds those not marked
    /// before to their alert's counts by type and by type and time bucket.
    /// Returns the indexes (into `keys`) of the events counted now, so a
    /// redelivered event counts nothing. Events that are not stored count
    /// nothing; those of an unknown alert are marked but counted nowhere.
    async fn count_events(&self, keys: &[EventKey]) -> Result<Vec<usize>, StoreError>;

    /// The alert's counted events per type and time bucket, the bucket
    /// chosen from the span between its first and last counted event
    /// ([`TimeBucket::for_span`]); empty for an alert without any.
    async fn timeline(&self, id: &str) -> Result<EventTimeline, StoreError>;

    /// Deletes at most `limit` (up to [`MAX_PRUNE`]) send-log rows claimed
    /// before `before` of alerts that are finished (sent, cancelled or
    /// failed); returns how many. Rows of an alert still building or
    /// sending always stay: they are what keeps its sends to one per
    /// member. The cadence counts rows claimed within its window, so
    /// callers keep `before` at or before the window's start, and repeat
    /// until fewer than `limit` go so no single delete holds the writer long.
    /// The alert's statistics keep counting the pruned rows.
    async fn prune_send_log(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// The alerts a member was sent (send-log rows in state `sent`), the
    /// latest claimed first; at most `limit` (clamped to [`MAX_RECEIVED`]).
    async fn received_by_member(
        &self,
        member_id: &str,
        limit: u32,
    ) -> Result<Vec<ReceivedAlert>, StoreError>;
}

/// The most received alerts one [`BrandAlertStore::received_by_member`]
/// call returns.
pub const MAX_RECEIVED: u32 = 500;

/// One alert a member was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAlert {
    pub alert_id: String,
    pub name: String,
    pub subject: String,
    /// When the send was confirmed.
    pub sent_at: Timestamp,
    /// Resent after a claim was taken over from a dead process: the member
    /// may have two copies.
    pub possible_duplicate: bool,
}

/// The most send-log rows one prune call deletes.
pub const MAX_PRUNE: u32 = 10_000;

/// The most sales one alert may list.
pub const MAX_SALES: usize = 100;
/// The longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest subject accepted, in characters (RFC 5322's line limit).
pub const MAX_SUBJECT_CHARS: usize = 998;

/// How often a compare-and-set change is retried after losing a race with
/// another writer before the loser reports a conflict.
const MAX_CAS_ATTEMPTS: usize = 5;

/// The statements one dialect runs; [`BrandAlerts`] holds the rules, once.
/// Every state change is a compare-and-set on the state (or version) read
/// before, so concurrent changes cannot both win.
#[async_trait]
pub(crate) trait BrandAlertSql: Send + Sync + 'static {
    const BACKEND: &'static str;

    /// Inserts a draft with its sales, in one transaction that first checks
    /// the template and every sale exist.
    async fn insert(
        &self,
        id: &str,
        content: &NewBrandAlert,
        now: Timestamp,
    ) -> Result<Result<AlertRow, MissingReference>, StoreError>;
    /// Rewrites a draft's content and sales if it is still a draft at
    /// `version`; [`Written::Stale`] otherwise.
    async fn update_content(
        &self,
        id: &str,
        version: i64,
        content: &NewBrandAlert,
        now: Timestamp,
    ) -> Result<Written, StoreError>;
    async fn by_id(&self, id: &str) -> Result<Option<AlertRow>, StoreError>;
    /// Up to `limit + 1` alerts, newest send time first.
    async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<AlertRow>, StoreError>;
    /// Applies the change if the alert is still in `change.from`.
    async fn transition(
        &self,
        id: &str,
        change: &Transition<'_>,
    ) -> Result<Option<AlertRow>, StoreError>;
    /// Deletes the alert if it is a draft; false otherwise.
    async fn delete_draft(&self, id: &str) -> Result<bool, StoreError>;
    /// The alert's row of `alert_send_counts`, if it has one yet.
    async fn send_counts(&self, id: &str) -> Result<Option<SendCountRow>, StoreError>;
    async fn event_counts(&self, id: &str) -> Result<Vec<EventCountRow>, StoreError>;
    /// The first and last occurrence among the alert's counted events.
    async fn event_span(&self, id: &str) -> Result<(Option<i64>, Option<i64>), StoreError>;
    /// (bucket start, type, count) of the alert's non-empty buckets of
    /// `bucket_millis`, summed from its stored buckets of `width`, ordered.
    async fn event_buckets(
        &self,
        id: &str,
        width: i64,
        bucket_millis: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError>;
    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<AlertRow>, StoreError>;
    /// Adds the step to a building alert whose cursor is before the step's;
    /// false if nothing changed.
    async fn record_step(
        &self,
        id: &str,
        step: &BuildStep,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    async fn audience(&self, query: &AudienceQuery<'_>) -> Result<Vec<CandidateRow>, StoreError>;
    /// The id of the `members`-th member after `after` (`""`: from the
    /// first), or of the last one when fewer remain; `None` when none is.
    async fn range_end(&self, after: &str, members: u32) -> Result<Option<String>, StoreError>;
    /// The exclusion facts of the active members among `member_ids`.
    async fn classify(
        &self,
        alert_id: &str,
        member_ids: &[String],
        window_start: Timestamp,
    ) -> Result<Vec<CandidateRow>, StoreError>;
    /// Reads the facts of each member, plans with [`plan_claims`] and
    /// writes the plan, in one transaction that no other claim for the same
    /// members can interleave with.
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<ClaimOutcome>, StoreError>;
    async fn confirm(
        &self,
        alert_id: &str,
        sent: &[SentMessage],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn release(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
    ) -> Result<(), StoreError>;
    async fn fail(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Moves alerts in `from` whose finished rows reach the audience size
    /// to `to`; returns their ids. The finished rows are read from the
    /// alert's send counts, kept with the rows: each mailer asks every
    /// second, and counting a large alert's send log that often held the
    /// writer longer the further the alert went.
    async fn complete(
        &self,
        from: AlertState,
        to: AlertState,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError>;
    /// Marks the events counted where they were not, and adds the
    /// [`tally`] of those to the alert counts, in one transaction; returns
    /// the keys it marked.
    async fn count_events(
        &self,
        keys: &[(String, String)],
        now: Timestamp,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Deletes the `limit` first rows of finished alerts claimed before
    /// `before`.
    async fn prune_send_log(&self, before: Timestamp, limit: i64) -> Result<u64, StoreError>;
    /// (alert id, name, subject, sent at, possible duplicate).
    async fn received_by_member(
        &self,
        member_id: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, String, i64, bool)>, StoreError>;
}

/// What an edit found.
pub(crate) enum Written {
    Done(Box<AlertRow>),
    /// The alert is no longer a draft at the version read.
    Stale,
    Missing(MissingReference),
}

/// A template or sale the content names that does not exist.
pub(crate) enum MissingReference {
    Template,
    /// The index in `sale_ids` of the first sale that does not exist.
    Sale(usize),
}

pub(crate) struct ListQuery<'a> {
    pub state: Option<&'static str>,
    pub send_from: Option<i64>,
    pub send_until: Option<i64>,
    /// Alerts strictly after this `(send_at, id)` in list order.
    pub after: Option<(i64, &'a str)>,
    pub limit: u32,
}

/// One lifecycle change; the stamps set the columns that are `Some`.
pub(crate) struct Transition<'a> {
    pub from: AlertState,
    pub to: AlertState,
    pub now: Timestamp,
    pub build_started_at: Option<Timestamp>,
    /// Set when the build ends: the audience size becomes the enqueued count.
    pub build_finished_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub failure_reason: Option<&'a str>,
}

pub(crate) struct AudienceQuery<'a> {
    pub alert_id: &'a str,
    pub brand_ids: &'a [String],
    pub threshold: f64,
    /// Members strictly after this id; `""` starts at the first.
    pub after: &'a str,
    /// Members up to and including this id; `None`: to the last.
    pub upto: Option<&'a str>,
    pub limit: u32,
    /// Other alerts' sends claimed after this count toward the cadence.
    pub window_start: Timestamp,
}

pub(crate) struct ClaimRequest<'a> {
    pub alert_id: &'a str,
    /// In the caller's order, possibly with repeats.
    pub member_ids: &'a [String],
    /// The same ids without repeats, for the queries.
    pub unique_ids: Vec<String>,
    pub window_start: Timestamp,
    pub max_alerts: u32,
    pub now: Timestamp,
    pub claim_expires_at: Timestamp,
}

pub(crate) const COLUMNS: &str = "id, name, subject, template_id, send_at, affinity_threshold, \
     transport, state, version, build_cursor, audience_size, enqueued, excluded_unsubscribed, \
     excluded_suppressed, excluded_cadence, failure_reason, created_at, updated_at, \
     build_started_at, build_finished_at, completed_at";

/// A `brand_alerts` row with its sale ids (a JSON array in sale order).
#[derive(sqlx::FromRow)]
pub(crate) struct AlertRow {
    id: String,
    name: String,
    subject: String,
    template_id: String,
    send_at: i64,
    affinity_threshold: f64,
    transport: Option<String>,
    state: String,
    version: i64,
    build_cursor: Option<String>,
    audience_size: Option<i64>,
    enqueued: i64,
    excluded_unsubscribed: i64,
    excluded_suppressed: i64,
    excluded_cadence: i64,
    failure_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    build_started_at: Option<i64>,
    build_finished_at: Option<i64>,
    completed_at: Option<i64>,
    sale_ids: Json<Vec<String>>,
}

impl AlertRow {
    fn into_alert(self, backend: &'static str) -> Result<BrandAlert, StoreError> {
        let id = self.id;
        let corrupt = |message: String| StoreError::Corrupt {
            backend,
            what: "brand alert",
            message: format!("alert {id}: {message}"),
        };
        let count = |n: i64| u64::try_from(n).map_err(|_| corrupt(format!("negative count {n}")));
        let state = self.state.parse().map_err(|e| corrupt(format!("{e}")))?;
        Ok(BrandAlert {
            name: self.name,
            subject: self.subject,
            template_id: self.template_id,
            send_at: Timestamp(self.send_at),
            affinity_threshold: self.affinity_threshold,
            transport: self.transport,
            state,
            version: self.version,
            sale_ids: self.sale_ids.0,
            build: BuildProgress {
                cursor: self.build_cursor,
                enqueued: count(self.enqueued)?,
                excluded_unsubscribed: count(self.excluded_unsubscribed)?,
                excluded_suppressed: count(self.excluded_suppressed)?,
                excluded_cadence: count(self.excluded_cadence)?,
                audience_size: self.audience_size.map(count).transpose()?,
                started_at: self.build_started_at.map(Timestamp),
                finished_at: self.build_finished_at.map(Timestamp),
            },
            failure_reason: self.failure_reason,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
            completed_at: self.completed_at.map(Timestamp),
            id,
        })
    }
}

/// One audience member as the query found them, before the rules decide.
#[derive(sqlx::FromRow)]
pub(crate) struct CandidateRow {
    member_id: String,
    /// The alert's brands this member reaches the threshold for, any order.
    brand_ids: Json<Vec<String>>,
    unsubscribed: bool,
    suppressed: bool,
    /// Other alerts' live or sent rows for the member within the window.
    recent_sends: i64,
}

impl CandidateRow {
    fn exclusion(&self, max_alerts: u32) -> Option<Exclusion> {
        if self.unsubscribed {
            Some(Exclusion::Unsubscribed)
        } else if self.suppressed {
            Some(Exclusion::Suppressed)
        } else if self.recent_sends >= i64::from(max_alerts) {
            Some(Exclusion::Cadence)
        } else {
            None
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SendCountRow {
    sent: i64,
    failed: i64,
    skipped: i64,
    possible_duplicates: i64,
}

/// How a batch of send-log writes changes its alert's `alert_send_counts`
/// row, written in the same transaction as the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SendCountDelta {
    pub sent: i64,
    pub failed: i64,
    pub skipped: i64,
    pub possible_duplicates: i64,
}

impl SendCountDelta {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// The bucket widths `alert_event_buckets` keeps: a chart by the minute
/// reads minutes, by the hour or day it reads (and sums) hours.
pub(crate) const BUCKET_WIDTHS: [TimeBucket; 2] = [TimeBucket::Minute, TimeBucket::Hour];

/// The stored bucket width a chart of `bucket` is summed from.
fn stored_width(bucket: TimeBucket) -> TimeBucket {
    match bucket {
        TimeBucket::Minute => TimeBucket::Minute,
        TimeBucket::Hour | TimeBucket::Day => TimeBucket::Hour,
    }
}

/// The start of the bucket of `width` holding `at` (floored, as the
/// migration's backfill floors).
pub(crate) fn bucket_start(at: i64, width: i64) -> i64 {
    at - at.rem_euclid(width)
}

/// An email event the stats mark set just now.
#[derive(sqlx::FromRow)]
pub(crate) struct MarkedEvent {
    pub provider: String,
    pub provider_event_id: String,
    pub alert_id: Option<String>,
    pub event_type: String,
    pub occurred_at: i64,
}

/// What newly counted events add to the alert counts, sorted by key (so
/// concurrent PostgreSQL transactions lock the rows in one order).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EventTally {
    /// (alert id, type) → (count, first occurrence, last occurrence).
    pub by_type: BTreeMap<(String, String), (i64, i64, i64)>,
    /// (alert id, width, bucket start, type) → count.
    pub by_bucket: BTreeMap<(String, i64, i64, String), i64>,
}

/// Tallies the marked events of an alert; events without one count nowhere.
pub(crate) fn tally(events: &[MarkedEvent]) -> EventTally {
    let mut tally = EventTally::default();
    for event in events {
        let Some(alert_id) = &event.alert_id else {
            continue;
        };
        let at = event.occurred_at;
        let entry = tally
            .by_type
            .entry((alert_id.clone(), event.event_type.clone()))
            .or_insert((0, at, at));
        entry.0 += 1;
        entry.1 = entry.1.min(at);
        entry.2 = entry.2.max(at);
        for width in BUCKET_WIDTHS.map(TimeBucket::millis) {
            *tally
                .by_bucket
                .entry((
                    alert_id.clone(),
                    width,
                    bucket_start(at, width),
                    event.event_type.clone(),
                ))
                .or_insert(0) += 1;
        }
    }
    tally
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventCountRow {
    event_type: String,
    count: i64,
}

/// What a claim needs to know about one member, read inside the claim's
/// transaction.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimFacts {
    /// Whether the alert exists; read with the facts to spare the claim a
    /// round trip of its own.
    alert_exists: bool,
    member_id: String,
    /// `None` when no such member exists.
    status: Option<String>,
    unsubscribed: bool,
    suppressed: bool,
    recent_sends: i64,
    /// This alert's send-log row for the member, if there is one.
    row_state: Option<String>,
    row_possible_duplicate: Option<bool>,
    claim_expires_at: Option<i64>,
    attempts: Option<i64>,
    /// The member's address and what the email shows of them; `None` when
    /// no such member exists.
    email: Option<String>,
    name: Option<String>,
    first_name: Option<String>,
    locale: Option<String>,
    time_zone: Option<String>,
    customer_id: Option<String>,
}

impl ClaimFacts {
    /// Who a claimed email goes to; `None` when the member does not exist.
    fn addressee(&self) -> Option<Addressee> {
        Some(Addressee {
            email: self.email.clone()?,
            name: self.name.clone(),
            first_name: self.first_name.clone(),
            locale: self.locale.clone(),
            time_zone: self.time_zone.clone(),
            customer_id: self.customer_id.clone(),
        })
    }
}

/// One send-log row to insert or overwrite. `claimed_at` is the claim's
/// `now`; the possible-duplicate flag, once set, stays set.
pub(crate) struct SendLogWrite {
    pub member_id: String,
    pub state: SendState,
    pub claim_expires_at: Option<i64>,
    pub attempts: i64,
    pub possible_duplicate: bool,
    pub finished_at: Option<i64>,
    pub reason: Option<&'static str>,
}

/// Decides each member's claim from the facts read in the claim's
/// transaction: a finished row stays finished, a live claim is busy, a
/// member no longer eligible is skipped, anything else is claimed (taking
/// over a lapsed claim as a possible duplicate). A member listed twice gets,
/// the second time, what a later claim would see after the first.
pub(crate) fn plan_claims(
    backend: &'static str,
    request: &ClaimRequest<'_>,
    facts: Vec<ClaimFacts>,
) -> Result<(Vec<ClaimOutcome>, Vec<SendLogWrite>, SendCountDelta), StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        backend,
        what: "send log",
        message: format!("alert {}: {message}", request.alert_id),
    };
    if facts.iter().any(|f| !f.alert_exists) {
        return Err(not_found(request.alert_id));
    }
    let mut facts: HashMap<String, ClaimFacts> = facts
        .into_iter()
        .map(|f| (f.member_id.clone(), f))
        .collect();
    let now = request.now.millis();
    let mut outcomes = Vec::with_capacity(request.member_ids.len());
    let mut writes = Vec::new();
    let mut delta = SendCountDelta::default();
    for member_id in request.member_ids {
        let fact = facts
            .get_mut(member_id)
            .ok_or_else(|| corrupt(format!("no claim facts were read for member {member_id}")))?;
        let row_state = fact
            .row_state
            .as_deref()
            .map(parse_send_state)
            .transpose()
            .map_err(corrupt)?;
        let attempts = fact.attempts.unwrap_or(0);
        let (outcome, write) = match (row_state, fact.claim_expires_at) {
            (Some(state @ (SendState::Sent | SendState::Failed | SendState::Skipped)), _) => {
                (ClaimOutcome::Finished(state), None)
            }
            (Some(SendState::Claimed), Some(until)) if until > now => (
                ClaimOutcome::Busy {
                    until: Timestamp(until),
                },
                None,
            ),
            _ => match ineligibility(fact, request.max_alerts) {
                Some(reason) => (
                    ClaimOutcome::Skipped(reason),
                    Some(SendLogWrite {
                        member_id: member_id.clone(),
                        state: SendState::Skipped,
                        claim_expires_at: None,
                        attempts: attempts.max(1),
                        possible_duplicate: false,
                        finished_at: Some(now),
                        reason: Some(reason.as_str()),
                    }),
                ),
                None => {
                    let attempt = attempts + 1;
                    let possible_duplicate = row_state == Some(SendState::Claimed);
                    let member = fact.addressee().ok_or_else(|| {
                        corrupt(format!("member {member_id} is active without an address"))
                    })?;
                    (
                        ClaimOutcome::Claimed {
                            possible_duplicate,
                            attempt: u32::try_from(attempt)
                                .map_err(|_| corrupt(format!("attempt count {attempt}")))?,
                            member,
                        },
                        Some(SendLogWrite {
                            member_id: member_id.clone(),
                            state: SendState::Claimed,
                            claim_expires_at: Some(request.claim_expires_at.millis()),
                            attempts: attempt,
                            possible_duplicate,
                            finished_at: None,
                            reason: None,
                        }),
                    )
                }
            },
        };
        if let Some(write) = write {
            // Only unfinished rows are written, so a skip is a newly finished
            // row; the flag, once set, stays set and counts once.
            if write.state == SendState::Skipped {
                delta.skipped += 1;
            }
            let flagged = fact.row_possible_duplicate.unwrap_or(false);
            if write.possible_duplicate && !flagged {
                delta.possible_duplicates += 1;
            }
            // A repeat of this member now finds a live claim or a finished
            // row, which write nothing: one write per member at most.
            fact.row_possible_duplicate = Some(flagged || write.possible_duplicate);
            fact.row_state = Some(write.state.as_str().to_owned());
            fact.claim_expires_at = write.claim_expires_at;
            fact.attempts = Some(write.attempts);
            writes.push(write);
        }
        outcomes.push(outcome);
    }
    Ok((outcomes, writes, delta))
}

fn ineligibility(fact: &ClaimFacts, max_alerts: u32) -> Option<SkipReason> {
    match fact.status.as_deref() {
        None => Some(SkipReason::MemberMissing),
        Some(status) if status != "active" => Some(SkipReason::MemberInactive),
        Some(_) if fact.unsubscribed => Some(SkipReason::Unsubscribed),
        Some(_) if fact.suppressed => Some(SkipReason::Suppressed),
        Some(_) if fact.recent_sends >= i64::from(max_alerts) => Some(SkipReason::Cadence),
        Some(_) => None,
    }
}

fn parse_send_state(text: &str) -> Result<SendState, String> {
    [
        SendState::Claimed,
        SendState::Released,
        SendState::Sent,
        SendState::Failed,
        SendState::Skipped,
    ]
    .into_iter()
    .find(|s| s.as_str() == text)
    .ok_or_else(|| format!("unknown send state {text:?}"))
}

pub(crate) struct BrandAlerts<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: BrandAlertSql> BrandAlerts<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }

    async fn require(&self, id: &str) -> Result<BrandAlert, StoreError> {
        self.sql
            .by_id(id)
            .await?
            .ok_or_else(|| not_found(id))?
            .into_alert(S::BACKEND)
    }

    /// The candidates after `after` (up to `upto` when given), at most
    /// `limit`, each with its exclusion and the alert's brands it matched.
    #[allow(clippy::too_many_arguments)]
    async fn candidates(
        &self,
        alert: &BrandAlert,
        brand_ids: &[String],
        cadence: &CadencePolicy,
        after: Option<&str>,
        upto: Option<&str>,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<AudienceCandidate>, StoreError> {
        let brand_ids = without_repeats(brand_ids);
        if brand_ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .sql
            .audience(&AudienceQuery {
                alert_id: &alert.id,
                brand_ids: &brand_ids,
                threshold: alert.affinity_threshold,
                after: after.unwrap_or(""),
                upto,
                limit,
                window_start: cadence.window_start(now),
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| AudienceCandidate {
                exclusion: row.exclusion(cadence.max_alerts()),
                brand_ids: brand_ids
                    .iter()
                    .filter(|b| row.brand_ids.0.contains(b))
                    .cloned()
                    .collect(),
                member_id: row.member_id,
            })
            .collect())
    }

    /// Applies `action` through the lifecycle rules and writes it as a
    /// compare-and-set on the state read; a lost race re-reads and decides
    /// again.
    async fn change_state(
        &self,
        id: &str,
        action: AlertAction,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<BrandAlert, StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.require(id).await?;
            let to = current.state.apply(action).map_err(transition_conflict)?;
            let change = Transition {
                from: current.state,
                to,
                now,
                build_started_at: (to == AlertState::Building).then_some(now),
                build_finished_at: (current.state == AlertState::Building
                    && to == AlertState::Sending)
                    .then_some(now),
                completed_at: to.is_terminal().then_some(now),
                failure_reason: reason.filter(|_| to == AlertState::Failed),
            };
            if let Some(row) = self.sql.transition(id, &change).await? {
                return row.into_alert(S::BACKEND);
            }
        }
        Err(changed_concurrently(id))
    }
}

#[async_trait]
impl<S: BrandAlertSql> BrandAlertStore for BrandAlerts<S> {
    async fn create(&self, new: &NewBrandAlert) -> Result<BrandAlert, StoreError> {
        validate(new)?;
        let id = uuid::Uuid::now_v7().to_string();
        self.sql
            .insert(&id, new, self.clock.now())
            .await?
            .map_err(|missing| missing_reference(missing, new))?
            .into_alert(S::BACKEND)
    }

    async fn get(&self, id: &str) -> Result<Option<BrandAlert>, StoreError> {
        self.sql
            .by_id(id)
            .await?
            .map(|row| row.into_alert(S::BACKEND))
            .transpose()
    }

    async fn list(&self, filter: &BrandAlertFilter) -> Result<Page<BrandAlert>, StoreError> {
        let limit = filter.page.effective_limit();
        let after = filter.page.after.as_deref().map(parse_cursor).transpose()?;
        let rows = self
            .sql
            .list(&ListQuery {
                state: filter.state.map(AlertState::as_str),
                send_from: filter.send_from.map(Timestamp::millis),
                send_until: filter.send_until.map(Timestamp::millis),
                after,
                limit,
            })
            .await?;
        let alerts = rows
            .into_iter()
            .map(|row| row.into_alert(S::BACKEND))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(alerts, limit, |a| {
            format!("{}:{}", a.send_at.millis(), a.id)
        }))
    }

    async fn update_draft(
        &self,
        id: &str,
        patch: &BrandAlertPatch,
        expected_version: Option<i64>,
    ) -> Result<BrandAlert, StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.require(id).await?;
            current
                .state
                .ensure_editable()
                .map_err(transition_conflict)?;
            if let Some(expected) = expected_version.filter(|v| *v != current.version) {
                return Err(stale_version(id, expected, current.version));
            }
            if *patch == BrandAlertPatch::default() {
                return Ok(current);
            }
            let content = patched(&current, patch);
            validate(&content)?;
            let written = self
                .sql
                .update_content(id, current.version, &content, self.clock.now())
                .await?;
            match written {
                Written::Done(row) => return row.into_alert(S::BACKEND),
                Written::Missing(missing) => return Err(missing_reference(missing, &content)),
                Written::Stale => {}
            }
        }
        Err(changed_concurrently(id))
    }

    async fn apply(
        &self,
        id: &str,
        action: AlertAction,
        reason: Option<&str>,
    ) -> Result<BrandAlert, StoreError> {
        self.change_state(id, action, reason, self.clock.now())
            .await
    }

    async fn delete_draft(&self, id: &str) -> Result<(), StoreError> {
        if self.sql.delete_draft(id).await? {
            return Ok(());
        }
        let current = self.require(id).await?;
        Err(StoreError::Conflict {
            what: format!(
                "cannot delete brand alert {id}: only drafts can be deleted and it is {}; \
                 cancel it instead",
                current.state
            ),
        })
    }

    async fn stats(&self, id: &str) -> Result<AlertStats, StoreError> {
        let alert = self.require(id).await?;
        let corrupt = |message: String| StoreError::Corrupt {
            backend: S::BACKEND,
            what: "send log",
            message: format!("alert {id}: {message}"),
        };
        let count = |n: i64| u64::try_from(n).map_err(|_| corrupt(format!("negative count {n}")));
        let mut stats = AlertStats {
            audience_size: alert.build.audience_size,
            enqueued: alert.build.enqueued,
            excluded_unsubscribed: alert.build.excluded_unsubscribed,
            excluded_suppressed: alert.build.excluded_suppressed,
            excluded_cadence: alert.build.excluded_cadence,
            ..AlertStats::default()
        };
        if let Some(row) = self.sql.send_counts(id).await? {
            stats.sent = count(row.sent)?;
            stats.failed = count(row.failed)?;
            stats.skipped = count(row.skipped)?;
            stats.possible_duplicates = count(row.possible_duplicates)?;
        }
        let finished = stats.sent + stats.failed + stats.skipped;
        stats.queued = stats.enqueued.saturating_sub(finished);
        for row in self.sql.event_counts(id).await? {
            stats.events.insert(row.event_type, count(row.count)?);
        }
        Ok(stats)
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<BrandAlert>, StoreError> {
        self.sql
            .due(now, limit)
            .await?
            .into_iter()
            .map(|row| row.into_alert(S::BACKEND))
            .collect()
    }

    async fn start_build(&self, id: &str, now: Timestamp) -> Result<BrandAlert, StoreError> {
        let current = self.require(id).await?;
        match current.state {
            AlertState::Building => Ok(current),
            AlertState::Scheduled if current.send_at > now => Err(StoreError::Conflict {
                what: format!(
                    "cannot start building brand alert {id}: it is not due until {} ms",
                    current.send_at.millis()
                ),
            }),
            _ => {
                self.change_state(id, AlertAction::StartBuilding, None, now)
                    .await
            }
        }
    }

    async fn audience_page(
        &self,
        alert: &BrandAlert,
        brand_ids: &[String],
        cadence: &CadencePolicy,
        after: Option<&str>,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<AudienceCandidate>, StoreError> {
        self.candidates(alert, brand_ids, cadence, after, None, limit, now)
            .await
    }

    async fn audience_range(
        &self,
        alert: &BrandAlert,
        brand_ids: &[String],
        cadence: &CadencePolicy,
        after: Option<&str>,
        upto: &str,
        now: Timestamp,
    ) -> Result<Vec<AudienceCandidate>, StoreError> {
        self.candidates(alert, brand_ids, cadence, after, Some(upto), u32::MAX, now)
            .await
    }

    async fn audience_range_end(
        &self,
        after: Option<&str>,
        members: u32,
    ) -> Result<Option<String>, StoreError> {
        if members == 0 {
            return Ok(after.map(str::to_owned));
        }
        self.sql.range_end(after.unwrap_or(""), members).await
    }

    async fn classify_members(
        &self,
        alert: &BrandAlert,
        member_ids: &[String],
        cadence: &CadencePolicy,
        now: Timestamp,
    ) -> Result<Vec<(String, Option<Exclusion>)>, StoreError> {
        if member_ids.is_empty() {
            return Ok(Vec::new());
        }
        let unique = without_repeats(member_ids);
        let rows = self
            .sql
            .classify(&alert.id, &unique, cadence.window_start(now))
            .await?;
        let found: HashMap<&str, Option<Exclusion>> = rows
            .iter()
            .map(|row| (row.member_id.as_str(), row.exclusion(cadence.max_alerts())))
            .collect();
        Ok(member_ids
            .iter()
            .filter_map(|id| found.get(id.as_str()).map(|e| (id.clone(), *e)))
            .collect())
    }

    async fn record_build_step(&self, id: &str, step: &BuildStep) -> Result<(), StoreError> {
        if self.sql.record_step(id, step, self.clock.now()).await? {
            return Ok(());
        }
        // Nothing changed: a replayed batch is fine, a missing alert or one
        // that left the building state is not.
        let current = self.require(id).await?;
        if current.state == AlertState::Building {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                what: format!(
                    "cannot record build progress of brand alert {id}: it is {}, not building",
                    current.state
                ),
            })
        }
    }

    async fn finish_build(&self, id: &str, now: Timestamp) -> Result<BrandAlert, StoreError> {
        let current = self.require(id).await?;
        if current.state == AlertState::Sending {
            // A build finished before a restart: nothing more to do.
            return Ok(current);
        }
        self.change_state(id, AlertAction::StartSending, None, now)
            .await
    }

    async fn claim_sends(
        &self,
        alert_id: &str,
        member_ids: &[String],
        cadence: &CadencePolicy,
        claim_ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        if member_ids.is_empty() {
            return Ok(Vec::new());
        }
        if claim_ttl < Duration::from_millis(1) {
            return Err(StoreError::InvalidInput {
                field: "claim_ttl",
                message: "must be at least a millisecond, the send log's resolution".into(),
            });
        }
        self.sql
            .claim(&ClaimRequest {
                alert_id,
                member_ids,
                unique_ids: without_repeats(member_ids),
                window_start: cadence.window_start(now),
                max_alerts: cadence.max_alerts(),
                now,
                claim_expires_at: now.plus(claim_ttl),
            })
            .await
    }

    async fn confirm_sent(
        &self,
        alert_id: &str,
        sent: &[SentMessage],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        self.sql.confirm(alert_id, sent, now).await
    }

    async fn release_claim(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
        // A released row carries no time: the next claim stamps its own.
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        self.sql.release(alert_id, member_id, reason).await
    }

    async fn mark_failed(
        &self,
        alert_id: &str,
        member_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.sql.fail(alert_id, member_id, reason, now).await
    }

    async fn complete_finished(&self, now: Timestamp) -> Result<Vec<String>, StoreError> {
        let from = AlertState::Sending;
        let to = from
            .apply(AlertAction::Complete)
            .map_err(transition_conflict)?;
        self.sql.complete(from, to, now).await
    }

    async fn count_events(&self, keys: &[EventKey]) -> Result<Vec<usize>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.provider.to_string(), k.provider_event_id.clone()))
            .collect();
        let mut marked: HashSet<(String, String)> = self
            .sql
            .count_events(&pairs, self.clock.now())
            .await?
            .into_iter()
            .collect();
        Ok(pairs
            .into_iter()
            .enumerate()
            .filter(|(_, pair)| marked.remove(pair))
            .map(|(i, _)| i)
            .collect())
    }

    async fn timeline(&self, id: &str) -> Result<EventTimeline, StoreError> {
        let bucket = match self.sql.event_span(id).await? {
            (Some(first), Some(last)) => TimeBucket::for_span(last.saturating_sub(first)),
            _ => {
                return Ok(EventTimeline {
                    bucket: TimeBucket::Minute,
                    counts: Vec::new(),
                })
            }
        };
        let counts = self
            .sql
            .event_buckets(id, stored_width(bucket).millis(), bucket.millis())
            .await?
            .into_iter()
            .map(|(start, event_type, count)| TimelineCount {
                bucket_start: Timestamp(start),
                event_type,
                count: count.max(0) as u64,
            })
            .collect();
        Ok(EventTimeline { bucket, counts })
    }

    async fn prune_send_log(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.sql
            .prune_send_log(before, i64::from(limit.clamp(1, MAX_PRUNE)))
            .await
    }

    async fn received_by_member(
        &self,
        member_id: &str,
        limit: u32,
    ) -> Result<Vec<ReceivedAlert>, StoreError> {
        Ok(self
            .sql
            .received_by_member(member_id, i64::from(limit.clamp(1, MAX_RECEIVED)))
            .await?
            .into_iter()
            .map(
                |(alert_id, name, subject, sent_at, possible_duplicate)| ReceivedAlert {
                    alert_id,
                    name,
                    subject,
                    sent_at: Timestamp(sent_at),
                    possible_duplicate,
                },
            )
            .collect())
    }
}

/// The rules every draft's content follows, on create and on every edit.
fn validate(content: &NewBrandAlert) -> Result<(), StoreError> {
    let invalid =
        |field: &'static str, message: String| StoreError::InvalidInput { field, message };
    check_text("name", &content.name, MAX_NAME_CHARS)?;
    check_text("subject", &content.subject, MAX_SUBJECT_CHARS)?;
    if content.template_id.trim().is_empty() {
        return Err(invalid("template_id", "must not be empty".into()));
    }
    let threshold = content.affinity_threshold;
    if !threshold.is_finite() || !(AffinityScore::MIN..=AffinityScore::MAX).contains(&threshold) {
        return Err(invalid(
            "affinity_threshold",
            format!(
                "must be a number from {} to {} like the affinity scores, not {threshold}",
                AffinityScore::MIN,
                AffinityScore::MAX
            ),
        ));
    }
    if content
        .transport
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(invalid(
            "transport",
            "must name a configured transport, or be left out for the default".into(),
        ));
    }
    if content.sale_ids.is_empty() {
        return Err(invalid("sale_ids", "list at least one sale".into()));
    }
    if content.sale_ids.len() > MAX_SALES {
        return Err(invalid(
            "sale_ids",
            format!(
                "lists {} sales; an alert may list at most {MAX_SALES}",
                content.sale_ids.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, sale_id) in content.sale_ids.iter().enumerate() {
        if sale_id.is_empty() {
            return Err(invalid("sale_ids", format!("sale_ids[{i}] is empty")));
        }
        if !seen.insert(sale_id.as_str()) {
            return Err(invalid(
                "sale_ids",
                format!("sale_ids[{i}] repeats the sale {sale_id:?}"),
            ));
        }
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), StoreError> {
    if value.trim().is_empty() {
        return Err(StoreError::InvalidInput {
            field,
            message: "must not be empty".into(),
        });
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(StoreError::InvalidInput {
            field,
            message: format!("is {chars} characters long; at most {max_chars} are allowed"),
        });
    }
    Ok(())
}

fn missing_reference(missing: MissingReference, content: &NewBrandAlert) -> StoreError {
    match missing {
        MissingReference::Template => StoreError::InvalidInput {
            field: "template_id",
            message: format!("no template has the id {:?}", content.template_id),
        },
        MissingReference::Sale(i) => StoreError::InvalidInput {
            field: "sale_ids",
            message: format!(
                "no sale has the id {:?} given at sale_ids[{i}]",
                content
                    .sale_ids
                    .get(i)
                    .map(String::as_str)
                    .unwrap_or_default()
            ),
        },
    }
}

fn patched(current: &BrandAlert, patch: &BrandAlertPatch) -> NewBrandAlert {
    NewBrandAlert {
        name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
        subject: patch
            .subject
            .clone()
            .unwrap_or_else(|| current.subject.clone()),
        template_id: patch
            .template_id
            .clone()
            .unwrap_or_else(|| current.template_id.clone()),
        send_at: patch.send_at.unwrap_or(current.send_at),
        affinity_threshold: patch
            .affinity_threshold
            .unwrap_or(current.affinity_threshold),
        transport: patch
            .transport
            .clone()
            .unwrap_or_else(|| current.transport.clone()),
        sale_ids: patch
            .sale_ids
            .clone()
            .unwrap_or_else(|| current.sale_ids.clone()),
    }
}

/// A list cursor is `<send_at>:<id>` of the last alert of the page before.
fn parse_cursor(cursor: &str) -> Result<(i64, &str), StoreError> {
    cursor
        .split_once(':')
        .and_then(|(send_at, id)| Some((send_at.parse().ok()?, id)))
        .ok_or_else(|| StoreError::InvalidInput {
            field: "cursor",
            message: "is not a cursor this list returned".into(),
        })
}

/// The ids in their first-seen order, each once.
fn without_repeats(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// A count as the database stores it; no real count reaches `i64::MAX`.
pub(crate) fn db_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("brand alert {id}"),
    }
}

fn transition_conflict(e: TransitionError) -> StoreError {
    StoreError::Conflict {
        what: e.to_string(),
    }
}

fn stale_version(id: &str, expected: i64, current: i64) -> StoreError {
    StoreError::Conflict {
        what: format!(
            "brand alert {id} changed since version {expected}; it is at version {current} now: \
             read it again and retry"
        ),
    }
}

fn changed_concurrently(id: &str) -> StoreError {
    StoreError::Conflict {
        what: format!("brand alert {id} kept changing while this change was tried; retry"),
    }
}
