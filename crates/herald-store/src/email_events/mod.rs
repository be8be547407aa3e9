//! Email events: the provider delivery events the webhook ingest received,
//! one row per (provider, provider event id). Storing a batch keeps only the
//! events not stored before and says which those were, so a provider's
//! retried batch stores (and publishes) nothing twice.
//!
//! The ingest stores a batch in the same transaction as it publishes the new
//! events to the bus; for that the dialect modules expose
//! [`sqlite::insert_new`] and [`postgres::insert_new`], which run on a
//! connection the caller holds. [`EmailEventStore`] is everything else:
//! storing outside a publishing transaction, reading, counting, and the
//! statistics subscriber's once-only mark.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::email_event::{BounceClass, EmailEvent, EventType, Provider};
use herald_core::{Clock, Timestamp};
use serde_json::{Map, Value};

use crate::StoreError;

pub mod postgres;
pub mod sqlite;

/// The custom arg that names the brand alert a message belongs to.
pub const ALERT_ID_ARG: &str = "alert_id";

/// Most events one query returns.
pub const MAX_LIST: u32 = 1000;
/// The most events one prune call deletes.
pub const MAX_PRUNE: u32 = 10_000;

/// The brand alert an event belongs to: its `alert_id` custom arg, when that
/// is a non-empty string or a number.
pub fn alert_id(event: &EmailEvent) -> Option<String> {
    match event.custom_args.get(ALERT_ID_ARG)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An address as the events table keys it: trimmed and lower-cased, as the
/// suppression list compares addresses.
pub fn normalize_address(address: &str) -> String {
    address.trim().to_lowercase()
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEmailEvent {
    /// Store order: later-received events have larger numbers.
    pub seq: i64,
    /// As received, but with the address normalized.
    pub event: EmailEvent,
    pub alert_id: Option<String>,
    pub received_at: Timestamp,
}

/// Identifies one provider event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub provider: Provider,
    pub provider_event_id: String,
}

impl EventKey {
    pub fn of(event: &EmailEvent) -> Self {
        Self {
            provider: event.provider.clone(),
            provider_event_id: event.provider_event_id.clone(),
        }
    }
}

#[async_trait]
pub trait EmailEventStore: Send + Sync {
    /// Stores the events not stored before, in one transaction; returns the
    /// indexes (into `events`) of those it stored. An event repeated inside
    /// the batch counts once, at its first index.
    async fn insert(&self, events: &[EmailEvent]) -> Result<Vec<usize>, StoreError>;

    async fn get(&self, key: &EventKey) -> Result<Option<StoredEmailEvent>, StoreError>;

    /// The latest events (by occurrence) for an address, compared
    /// normalized; at most `limit` (clamped to [`MAX_LIST`]).
    async fn recent_for_address(
        &self,
        address: &str,
        limit: u32,
    ) -> Result<Vec<StoredEmailEvent>, StoreError>;

    /// The latest events (by occurrence) of a brand alert.
    async fn recent_for_alert(
        &self,
        alert_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredEmailEvent>, StoreError>;

    /// The latest received events across all alerts, newest first, of one
    /// type or (with `None`) all; at most `limit` (clamped to [`MAX_LIST`]).
    async fn latest(
        &self,
        event_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredEmailEvent>, StoreError>;

    /// How many events are stored.
    async fn count(&self) -> Result<u64, StoreError>;

    /// Stored events by type, for one brand alert or (with `None`) all.
    async fn counts_by_type(
        &self,
        alert_id: Option<&str>,
    ) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Deletes at most `limit` (up to [`MAX_PRUNE`]) of the events received
    /// before `before`, oldest first; returns how many. Callers repeat until
    /// fewer than `limit` go, so no single delete holds the writer long.
    async fn prune_received_before(&self, before: Timestamp, limit: u32)
        -> Result<u64, StoreError>;
}

/// The width of the time buckets a [`EventTimeline`] counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBucket {
    Minute,
    Hour,
    Day,
}

impl TimeBucket {
    /// Longest span counted by the minute: two hours is at most 121 points.
    pub const MINUTE_SPAN_MILLIS: i64 = 2 * 3_600_000;
    /// Longest span counted by the hour: four days is at most 97 points.
    pub const HOUR_SPAN_MILLIS: i64 = 4 * 86_400_000;

    /// The finest bucket that keeps a span of `span_millis` to about a
    /// hundred points, so a chart of it stays readable.
    pub fn for_span(span_millis: i64) -> Self {
        if span_millis <= Self::MINUTE_SPAN_MILLIS {
            Self::Minute
        } else if span_millis <= Self::HOUR_SPAN_MILLIS {
            Self::Hour
        } else {
            Self::Day
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// How many events of one type occurred in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCount {
    /// The bucket's start: a multiple of the bucket width since the epoch.
    pub bucket_start: Timestamp,
    pub event_type: String,
    pub count: u64,
}

/// A brand alert's counted events over time
/// ([`crate::BrandAlertStore::timeline`]); `counts` only holds non-empty
/// buckets, ordered by bucket start, then type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeline {
    pub bucket: TimeBucket,
    pub counts: Vec<TimelineCount>,
}

/// One event flattened into the columns both dialects insert.
pub(crate) struct EventColumns {
    pub provider: String,
    pub provider_event_id: String,
    pub event_type: String,
    pub address: String,
    pub occurred_at: i64,
    pub message_id: Option<String>,
    pub alert_id: Option<String>,
    pub bounce: Option<&'static str>,
    pub tags: String,
    pub custom_args: String,
    pub raw: String,
}

impl EventColumns {
    pub(crate) fn of(event: &EmailEvent) -> Result<Self, StoreError> {
        let json = |what: &'static str, value: Result<String, serde_json::Error>| {
            value.map_err(|e| StoreError::InvalidInput {
                field: what,
                message: e.to_string(),
            })
        };
        Ok(Self {
            provider: event.provider.to_string(),
            provider_event_id: event.provider_event_id.clone(),
            event_type: event.event_type.as_str().to_owned(),
            address: normalize_address(&event.address),
            occurred_at: event.occurred_at.millis(),
            message_id: event.message_id.clone(),
            alert_id: alert_id(event),
            bounce: event.bounce.map(bounce_name),
            tags: json("tags", serde_json::to_string(&event.tags))?,
            custom_args: json("custom_args", serde_json::to_string(&event.custom_args))?,
            raw: json("raw", serde_json::to_string(&event.raw))?,
        })
    }
}

/// An event's JSON columns: `serde_json` text of its `tags`, `custom_args`
/// and `raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonColumns<'a> {
    pub tags: &'a str,
    pub custom_args: &'a str,
    pub raw: &'a str,
}

/// A batch of events flattened into the columns the store writes. Building
/// it serializes every event's JSON columns, which costs more than the
/// insert itself, so a caller with a single writer builds it before taking
/// the writer ([`sqlite::insert_rows`]).
pub struct EventRows {
    rows: Vec<EventColumns>,
}

impl EventRows {
    /// Fails, as the insert would, on an event without an id.
    pub fn of(events: &[EmailEvent]) -> Result<Self, StoreError> {
        check_events(events)?;
        Ok(Self {
            rows: events
                .iter()
                .map(EventColumns::of)
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The JSON columns of row `i`, as serialized for the insert.
    pub fn json(&self, i: usize) -> Option<JsonColumns<'_>> {
        self.rows.get(i).map(|row| JsonColumns {
            tags: &row.tags,
            custom_args: &row.custom_args,
            raw: &row.raw,
        })
    }

    /// The indexes of the rows whose keys are in `inserted`: the first
    /// occurrence of each key.
    fn first_indexes(&self, inserted: Vec<(String, String)>) -> Vec<usize> {
        let mut inserted: HashSet<(String, String)> = inserted.into_iter().collect();
        let mut new = Vec::with_capacity(inserted.len());
        for (i, row) in self.rows.iter().enumerate() {
            if inserted.is_empty() {
                break;
            }
            // Removing the key makes a repeat of it inside the batch count
            // once, at its first index.
            if inserted.remove(&(row.provider.clone(), row.provider_event_id.clone())) {
                new.push(i);
            }
        }
        new
    }
}

fn bounce_name(class: BounceClass) -> &'static str {
    match class {
        BounceClass::Hard => "hard",
        BounceClass::Soft => "soft",
    }
}

/// Checks a batch before it is written: ids must be non-empty.
pub(crate) fn check_events(events: &[EmailEvent]) -> Result<(), StoreError> {
    if let Some(i) = events.iter().position(|e| e.provider_event_id.is_empty()) {
        return Err(StoreError::InvalidInput {
            field: "provider_event_id",
            message: format!("event {i} has an empty provider event id"),
        });
    }
    Ok(())
}

/// The indexes of `events` that were stored, given the keys the insert
/// returned: the first occurrence of each returned key.
pub(crate) fn first_indexes(events: &[EmailEvent], inserted: Vec<(String, String)>) -> Vec<usize> {
    let mut inserted: HashSet<(String, String)> = inserted.into_iter().collect();
    if inserted.is_empty() {
        return Vec::new();
    }
    let mut new = Vec::with_capacity(inserted.len());
    let mut provider_names: HashMap<&Provider, String> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let provider = provider_names
            .entry(&event.provider)
            .or_insert_with(|| event.provider.to_string())
            .clone();
        if inserted.remove(&(provider, event.provider_event_id.clone())) {
            new.push(i);
        }
    }
    new
}

/// The columns every read selects, in [`EventRow`]'s order; JSON as text.
pub(crate) const COLUMNS: &str = "seq, provider, provider_event_id, event_type, address, \
     occurred_at, message_id, alert_id, bounce, CAST(tags AS TEXT) AS tags, \
     CAST(custom_args AS TEXT) AS custom_args, CAST(raw AS TEXT) AS raw, received_at";

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    provider: String,
    provider_event_id: String,
    event_type: String,
    address: String,
    occurred_at: i64,
    message_id: Option<String>,
    alert_id: Option<String>,
    bounce: Option<String>,
    tags: String,
    custom_args: String,
    raw: String,
    received_at: i64,
}

impl EventRow {
    pub(crate) fn into_stored(self, backend: &'static str) -> Result<StoredEmailEvent, StoreError> {
        let corrupt = |what: &'static str, message: String| StoreError::Corrupt {
            backend,
            what,
            message,
        };
        let provider: Provider =
            self.provider
                .parse()
                .map_err(|e: herald_core::email_event::ProviderError| {
                    corrupt("email event provider", e.to_string())
                })?;
        let bounce = self
            .bounce
            .map(|b| b.parse::<BounceClass>())
            .transpose()
            .map_err(|e| corrupt("email event bounce class", e))?;
        let tags: Vec<String> = serde_json::from_str(&self.tags)
            .map_err(|e| corrupt("email event tags", e.to_string()))?;
        let custom_args: Map<String, Value> = serde_json::from_str(&self.custom_args)
            .map_err(|e| corrupt("email event custom args", e.to_string()))?;
        let raw: Value = serde_json::from_str(&self.raw)
            .map_err(|e| corrupt("raw email event", e.to_string()))?;
        Ok(StoredEmailEvent {
            seq: self.seq,
            event: EmailEvent {
                provider,
                provider_event_id: self.provider_event_id,
                event_type: EventType::from_name(&self.event_type),
                address: self.address,
                occurred_at: Timestamp(self.occurred_at),
                message_id: self.message_id,
                bounce,
                tags,
                custom_args,
                raw,
            },
            alert_id: self.alert_id,
            received_at: Timestamp(self.received_at),
        })
    }
}

/// The statements one dialect runs; [`EmailEvents`] holds the rules, once.
#[async_trait]
pub(crate) trait EmailEventSql: Send + Sync + 'static {
    const BACKEND: &'static str;

    async fn insert(
        &self,
        events: &[EmailEvent],
        received_at: Timestamp,
    ) -> Result<Vec<usize>, StoreError>;
    async fn by_key(&self, provider: &str, id: &str) -> Result<Option<EventRow>, StoreError>;
    async fn by_address(&self, address: &str, limit: i64) -> Result<Vec<EventRow>, StoreError>;
    async fn by_alert(&self, alert_id: &str, limit: i64) -> Result<Vec<EventRow>, StoreError>;
    async fn latest(
        &self,
        event_type: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError>;
    async fn count(&self) -> Result<i64, StoreError>;
    async fn counts_by_type(
        &self,
        alert_id: Option<&str>,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// Deletes the `limit` oldest events received before `before`.
    async fn delete_received_before(
        &self,
        before: Timestamp,
        limit: i64,
    ) -> Result<u64, StoreError>;
}

pub(crate) struct EmailEvents<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: EmailEventSql> EmailEvents<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }

    fn stored(&self, rows: Vec<EventRow>) -> Result<Vec<StoredEmailEvent>, StoreError> {
        rows.into_iter()
            .map(|row| row.into_stored(S::BACKEND))
            .collect()
    }
}

fn list_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_LIST))
}

#[async_trait]
impl<S: EmailEventSql> EmailEventStore for EmailEvents<S> {
    async fn insert(&self, events: &[EmailEvent]) -> Result<Vec<usize>, StoreError> {
        check_events(events)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.sql.insert(events, self.clock.now()).await
    }

    async fn get(&self, key: &EventKey) -> Result<Option<StoredEmailEvent>, StoreError> {
        self.sql
            .by_key(&key.provider.to_string(), &key.provider_event_id)
            .await?
            .map(|row| row.into_stored(S::BACKEND))
            .transpose()
    }

    async fn recent_for_address(
        &self,
        address: &str,
        limit: u32,
    ) -> Result<Vec<StoredEmailEvent>, StoreError> {
        let rows = self
            .sql
            .by_address(&normalize_address(address), list_limit(limit))
            .await?;
        self.stored(rows)
    }

    async fn recent_for_alert(
        &self,
        alert_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredEmailEvent>, StoreError> {
        let rows = self.sql.by_alert(alert_id, list_limit(limit)).await?;
        self.stored(rows)
    }

    async fn latest(
        &self,
        event_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredEmailEvent>, StoreError> {
        let rows = self.sql.latest(event_type, list_limit(limit)).await?;
        self.stored(rows)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.sql.count().await?.max(0) as u64)
    }

    async fn counts_by_type(
        &self,
        alert_id: Option<&str>,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .sql
            .counts_by_type(alert_id)
            .await?
            .into_iter()
            .map(|(t, n)| (t, n.max(0) as u64))
            .collect())
    }

    async fn prune_received_before(
        &self,
        before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.sql
            .delete_received_before(before, i64::from(limit.clamp(1, MAX_PRUNE)))
            .await
    }
}
