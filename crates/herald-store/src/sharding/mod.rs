//! Sharding events and customer placements.
//!
//! Every accepted event is appended to `sharding_events`; the customer's
//! row in `customer_placements` follows herald-core's state machine
//! ([`Placement::apply`]) in the same transaction. The rules, all here:
//!
//! - A batch is applied in order, all or nothing: one refused event stores
//!   none of the batch ([`ShardingError`] names its index).
//! - An illegal transition is refused naming the customer's current state,
//!   and recorded nowhere.
//! - The same event id twice is one event: the repeat (with the same
//!   content) answers with the original outcome and changes nothing; the
//!   same id with other content is refused.
//! - The latest event decides: an event that happened before the
//!   customer's latest applied event is recorded as `superseded` and leaves
//!   the placement alone (an older event arriving late must not undo a
//!   newer one).
//! - Every shard an accepted event names joins the list of known shards,
//!   which broadcast routes send to.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::routing::CustomerState;
use herald_core::sharding::{
    CustomerId, Placement, ShardId, ShardingEvent, ShardingEventId, ShardingEventKind,
    TransitionError,
};
use herald_core::{Clock, Timestamp};

use crate::page::{Page, PageRequest};
use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// The most events one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// What an accepted event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The event moved the customer's placement.
    Applied,
    /// The event happened before the customer's latest applied event, so it
    /// is kept in the history and changed nothing.
    Superseded,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Superseded => "superseded",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "applied" => Some(EventOutcome::Applied),
            "superseded" => Some(EventOutcome::Superseded),
            _ => None,
        }
    }
}

/// One event of the log, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Position in the log; later events have larger ones.
    pub seq: i64,
    pub event: ShardingEvent,
    pub recorded_at: Timestamp,
    pub outcome: EventOutcome,
    /// The customer's placement right after this event.
    pub placement: Placement,
    /// When the event ended a migration: the shard the held events go to.
    pub release_to: Option<ShardId>,
}

/// The answer for one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub record: RecordedEvent,
    /// The id was already recorded: nothing changed, `record` is the
    /// original.
    pub duplicate: bool,
}

/// A customer's placement and the event that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerPlacement {
    pub customer: CustomerId,
    pub placement: Placement,
    /// `None` while the customer is unknown.
    pub last_event_id: Option<ShardingEventId>,
    pub last_occurred_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardingError {
    /// The state machine refused an event; nothing of the batch is stored.
    #[error("sharding event {index} ({id}) for customer {customer}: {refusal}")]
    Rejected {
        index: usize,
        id: ShardingEventId,
        customer: CustomerId,
        /// The state machine's answer, naming the customer's state.
        refusal: Box<TransitionError>,
    },
    /// The id was recorded before for a different event.
    #[error("sharding event {index}: id {id} was already recorded for another event ({existing}); use a new id")]
    IdReused {
        index: usize,
        id: ShardingEventId,
        existing: String,
    },
    #[error("a batch holds at most {MAX_BATCH} sharding events; this one has {0}")]
    TooMany(usize),
    #[error("a batch needs at least one sharding event")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait ShardingStore: Send + Sync {
    /// Records `events` in order in one transaction: all or nothing.
    async fn record(&self, events: &[ShardingEvent]) -> Result<Vec<Recorded>, ShardingError>;

    /// The customer's placement; unknown customers get [`Placement::Unknown`].
    async fn placement(&self, customer: &CustomerId) -> Result<CustomerPlacement, StoreError>;

    /// The customer's events in the order they were recorded.
    async fn history(
        &self,
        customer: &CustomerId,
        page: &PageRequest,
    ) -> Result<Page<RecordedEvent>, StoreError>;

    /// Every shard an accepted event has named, in id order.
    async fn shards(&self) -> Result<Vec<ShardId>, StoreError>;

    /// What a router needs to decide for each customer, in one query: the
    /// placement and whether `route` holds events of the customer.
    /// Customers missing from the answer are unknown with no hold.
    async fn routing_states(
        &self,
        route: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, CustomerState>, StoreError>;
}

/// The statements one dialect runs. `record` runs [`plan`] inside a
/// transaction that no other `record` for the same customers can
/// interleave with.
#[async_trait]
pub(crate) trait ShardingSql: Send + Sync + 'static {
    async fn record(
        &self,
        events: &[ShardingEvent],
        now: Timestamp,
    ) -> Result<Vec<Recorded>, ShardingError>;
    async fn placement(&self, customer: &CustomerId) -> Result<Option<PlacementRow>, StoreError>;
    async fn history(
        &self,
        customer: &CustomerId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError>;
    async fn shards(&self) -> Result<Vec<String>, StoreError>;
    async fn routing_states(
        &self,
        route: &str,
        customers: &[String],
    ) -> Result<Vec<RoutingRow>, StoreError>;
}

pub(crate) struct Sharding<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: ShardingSql> Sharding<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }
}

#[async_trait]
impl<S: ShardingSql> ShardingStore for Sharding<S> {
    async fn record(&self, events: &[ShardingEvent]) -> Result<Vec<Recorded>, ShardingError> {
        if events.is_empty() {
            return Err(ShardingError::Empty);
        }
        if events.len() > MAX_BATCH {
            return Err(ShardingError::TooMany(events.len()));
        }
        self.sql.record(events, self.clock.now()).await
    }

    async fn placement(&self, customer: &CustomerId) -> Result<CustomerPlacement, StoreError> {
        Ok(match self.sql.placement(customer).await? {
            Some(row) => row.into_customer_placement()?,
            None => CustomerPlacement {
                customer: customer.clone(),
                placement: Placement::Unknown,
                last_event_id: None,
                last_occurred_at: None,
                updated_at: None,
            },
        })
    }

    async fn history(
        &self,
        customer: &CustomerId,
        page: &PageRequest,
    ) -> Result<Page<RecordedEvent>, StoreError> {
        let after = match &page.after {
            None => 0,
            Some(cursor) => cursor
                .parse::<i64>()
                .map_err(|_| StoreError::InvalidInput {
                    field: "cursor",
                    message: format!("{cursor:?} is not a cursor this list gave out"),
                })?,
        };
        let limit = page.effective_limit();
        let rows = self.sql.history(customer, after, limit + 1).await?;
        let events = rows
            .into_iter()
            .map(EventRow::into_recorded)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(events, limit, |e| e.seq.to_string()))
    }

    async fn shards(&self) -> Result<Vec<ShardId>, StoreError> {
        self.sql
            .shards()
            .await?
            .into_iter()
            .map(|id| parse_shard(&id))
            .collect()
    }

    async fn routing_states(
        &self,
        route: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, CustomerState>, StoreError> {
        if customers.is_empty() {
            return Ok(HashMap::new());
        }
        let unique: BTreeSet<&str> = customers.iter().map(CustomerId::as_str).collect();
        let keys: Vec<String> = unique.into_iter().map(str::to_owned).collect();
        let rows = self.sql.routing_states(route, &keys).await?;
        rows.into_iter()
            .map(|row| {
                let customer = parse_customer(&row.customer)?;
                let placement = match row.state {
                    Some(state) => placement_of(
                        &state,
                        row.shard.as_deref(),
                        row.from_shard.as_deref(),
                        row.to_shard.as_deref(),
                    )?,
                    None => Placement::Unknown,
                };
                Ok((
                    customer,
                    CustomerState {
                        placement,
                        hold_nonempty: row.held,
                    },
                ))
            })
            .collect()
    }
}

/// What [`plan`] asks a dialect to write.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Answers in the batch's order; new events carry `seq` 0 until written.
    pub answers: Vec<Recorded>,
    /// Indexes into `answers` of the events to insert, in order.
    pub inserts: Vec<usize>,
    /// The final placement of each customer the batch moved.
    pub placements: Vec<PlacementWrite>,
    pub shards: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct PlacementWrite {
    pub customer: String,
    pub placement: Placement,
    pub last_event_id: String,
    pub last_occurred_at: i64,
}

/// Judges a batch against what is stored: `existing` holds the recorded
/// events with the batch's ids, `placements` the rows of its customers.
pub(crate) fn plan(
    events: &[ShardingEvent],
    existing: Vec<EventRow>,
    placements: Vec<PlacementRow>,
    now: Timestamp,
) -> Result<Plan, ShardingError> {
    let mut seen: HashMap<ShardingEventId, RecordedEvent> = HashMap::new();
    for row in existing {
        let recorded = row.into_recorded()?;
        seen.insert(recorded.event.id.clone(), recorded);
    }
    // Each customer's placement and the time of its latest applied event.
    let mut current: HashMap<CustomerId, (Placement, Option<Timestamp>)> = HashMap::new();
    for row in placements {
        let placement = row.clone().into_customer_placement()?;
        current.insert(
            placement.customer,
            (placement.placement, placement.last_occurred_at),
        );
    }
    let mut plan = Plan::default();
    let mut moved: Vec<(CustomerId, String, i64)> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        if let Some(original) = seen.get(&event.id) {
            if original.event != *event {
                return Err(ShardingError::IdReused {
                    index,
                    id: event.id.clone(),
                    existing: format!(
                        "{} of customer {} at {} ms",
                        original.event.kind, original.event.customer, original.event.occurred_at.0
                    ),
                });
            }
            plan.answers.push(Recorded {
                record: original.clone(),
                duplicate: true,
            });
            continue;
        }
        let (placement, last) = current
            .entry(event.customer.clone())
            .or_insert((Placement::Unknown, None));
        let record = if last.is_some_and(|last| event.occurred_at < last) {
            RecordedEvent {
                seq: 0,
                event: event.clone(),
                recorded_at: now,
                outcome: EventOutcome::Superseded,
                placement: placement.clone(),
                release_to: None,
            }
        } else {
            let transition =
                placement
                    .apply(&event.kind)
                    .map_err(|refusal| ShardingError::Rejected {
                        index,
                        id: event.id.clone(),
                        customer: event.customer.clone(),
                        refusal: Box::new(refusal),
                    })?;
            *placement = transition.placement.clone();
            *last = Some(event.occurred_at);
            moved.retain(|(c, _, _)| *c != event.customer);
            moved.push((
                event.customer.clone(),
                event.id.as_str().to_owned(),
                event.occurred_at.0,
            ));
            for shard in shards_named(&event.kind) {
                plan.shards.insert(shard.as_str().to_owned());
            }
            RecordedEvent {
                seq: 0,
                event: event.clone(),
                recorded_at: now,
                outcome: EventOutcome::Applied,
                placement: transition.placement,
                release_to: transition.release_to,
            }
        };
        seen.insert(event.id.clone(), record.clone());
        plan.inserts.push(plan.answers.len());
        plan.answers.push(Recorded {
            record,
            duplicate: false,
        });
    }
    for (customer, last_event_id, last_occurred_at) in moved {
        let placement = current
            .get(&customer)
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        plan.placements.push(PlacementWrite {
            customer: customer.as_str().to_owned(),
            placement,
            last_event_id,
            last_occurred_at,
        });
    }
    Ok(plan)
}

impl Plan {
    /// Stamps the log positions the database gave the inserted events, and
    /// gives a repeat within the batch its original's position too.
    pub(crate) fn finish(mut self, seqs: Vec<i64>) -> Vec<Recorded> {
        let mut by_id: HashMap<ShardingEventId, i64> = HashMap::new();
        for (index, seq) in self.inserts.iter().zip(seqs) {
            let answer = &mut self.answers[*index];
            answer.record.seq = seq;
            by_id.insert(answer.record.event.id.clone(), seq);
        }
        for answer in &mut self.answers {
            if answer.record.seq == 0 {
                if let Some(seq) = by_id.get(&answer.record.event.id) {
                    answer.record.seq = *seq;
                }
            }
        }
        self.answers
    }
}

fn shards_named(kind: &ShardingEventKind) -> Vec<&ShardId> {
    match kind {
        ShardingEventKind::Assigned { shard } | ShardingEventKind::MigrationSucceeded { shard } => {
            vec![shard]
        }
        ShardingEventKind::MigrationStarted { from, to } => vec![from, to],
        ShardingEventKind::MigrationFailed => vec![],
    }
}

/// A placement as columns: state, shard, from, to.
pub(crate) fn placement_columns(
    placement: &Placement,
) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
    match placement {
        Placement::Unknown => ("unknown", None, None, None),
        Placement::Stable { shard } => ("stable", Some(shard.as_str()), None, None),
        Placement::Migrating { from, to } => {
            ("migrating", None, Some(from.as_str()), Some(to.as_str()))
        }
    }
}

/// An event's kind as columns: kind, shard, from, to.
pub(crate) fn kind_columns(
    kind: &ShardingEventKind,
) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
    match kind {
        ShardingEventKind::Assigned { shard } | ShardingEventKind::MigrationSucceeded { shard } => {
            (kind.name(), Some(shard.as_str()), None, None)
        }
        ShardingEventKind::MigrationStarted { from, to } => {
            (kind.name(), None, Some(from.as_str()), Some(to.as_str()))
        }
        ShardingEventKind::MigrationFailed => (kind.name(), None, None, None),
    }
}

fn corrupt(what: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        backend: "store",
        what,
        message: message.into(),
    }
}

fn parse_shard(id: &str) -> Result<ShardId, StoreError> {
    ShardId::parse(id).map_err(|e| corrupt("shard id", e.to_string()))
}

fn parse_customer(id: &str) -> Result<CustomerId, StoreError> {
    CustomerId::parse(id).map_err(|e| corrupt("customer id", e.to_string()))
}

fn required_shard(what: &'static str, id: Option<&str>) -> Result<ShardId, StoreError> {
    parse_shard(id.ok_or_else(|| corrupt(what, "a shard column is empty"))?)
}

fn placement_of(
    state: &str,
    shard: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Placement, StoreError> {
    Ok(match state {
        "unknown" => Placement::Unknown,
        "stable" => Placement::Stable {
            shard: required_shard("placement", shard)?,
        },
        "migrating" => Placement::Migrating {
            from: required_shard("placement", from)?,
            to: required_shard("placement", to)?,
        },
        other => return Err(corrupt("placement", format!("unknown state {other:?}"))),
    })
}

fn kind_of(
    kind: &str,
    shard: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<ShardingEventKind, StoreError> {
    Ok(match kind {
        "assigned" => ShardingEventKind::Assigned {
            shard: required_shard("sharding event", shard)?,
        },
        "migration_started" => ShardingEventKind::MigrationStarted {
            from: required_shard("sharding event", from)?,
            to: required_shard("sharding event", to)?,
        },
        "migration_succeeded" => ShardingEventKind::MigrationSucceeded {
            shard: required_shard("sharding event", shard)?,
        },
        "migration_failed" => ShardingEventKind::MigrationFailed,
        other => return Err(corrupt("sharding event", format!("unknown kind {other:?}"))),
    })
}

pub(crate) const EVENT_COLUMNS: &str = "seq, id, customer, kind, shard, from_shard, to_shard, \
     occurred_at, recorded_at, outcome, placement_state, placement_shard, placement_from, \
     placement_to, release_to";

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    id: String,
    customer: String,
    kind: String,
    shard: Option<String>,
    from_shard: Option<String>,
    to_shard: Option<String>,
    occurred_at: i64,
    recorded_at: i64,
    outcome: String,
    placement_state: String,
    placement_shard: Option<String>,
    placement_from: Option<String>,
    placement_to: Option<String>,
    release_to: Option<String>,
}

impl EventRow {
    fn into_recorded(self) -> Result<RecordedEvent, StoreError> {
        Ok(RecordedEvent {
            seq: self.seq,
            event: ShardingEvent {
                id: ShardingEventId::parse(self.id)
                    .map_err(|e| corrupt("sharding event id", e.to_string()))?,
                customer: parse_customer(&self.customer)?,
                kind: kind_of(
                    &self.kind,
                    self.shard.as_deref(),
                    self.from_shard.as_deref(),
                    self.to_shard.as_deref(),
                )?,
                occurred_at: Timestamp(self.occurred_at),
            },
            recorded_at: Timestamp(self.recorded_at),
            outcome: EventOutcome::parse(&self.outcome).ok_or_else(|| {
                corrupt(
                    "sharding event",
                    format!("unknown outcome {:?}", self.outcome),
                )
            })?,
            placement: placement_of(
                &self.placement_state,
                self.placement_shard.as_deref(),
                self.placement_from.as_deref(),
                self.placement_to.as_deref(),
            )?,
            release_to: self.release_to.as_deref().map(parse_shard).transpose()?,
        })
    }
}

pub(crate) const PLACEMENT_COLUMNS: &str =
    "customer, state, shard, from_shard, to_shard, last_event_id, last_occurred_at, updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PlacementRow {
    customer: String,
    state: String,
    shard: Option<String>,
    from_shard: Option<String>,
    to_shard: Option<String>,
    last_event_id: String,
    last_occurred_at: i64,
    updated_at: i64,
}

impl PlacementRow {
    fn into_customer_placement(self) -> Result<CustomerPlacement, StoreError> {
        Ok(CustomerPlacement {
            customer: parse_customer(&self.customer)?,
            placement: placement_of(
                &self.state,
                self.shard.as_deref(),
                self.from_shard.as_deref(),
                self.to_shard.as_deref(),
            )?,
            last_event_id: Some(
                ShardingEventId::parse(self.last_event_id)
                    .map_err(|e| corrupt("sharding event id", e.to_string()))?,
            ),
            last_occurred_at: Some(Timestamp(self.last_occurred_at)),
            updated_at: Some(Timestamp(self.updated_at)),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RoutingRow {
    pub(crate) customer: String,
    pub(crate) state: Option<String>,
    pub(crate) shard: Option<String>,
    pub(crate) from_shard: Option<String>,
    pub(crate) to_shard: Option<String>,
    pub(crate) held: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, customer: &str, kind: ShardingEventKind, at: i64) -> ShardingEvent {
        ShardingEvent {
            id: ShardingEventId::parse(id).unwrap(),
            customer: CustomerId::parse(customer).unwrap(),
            kind,
            occurred_at: Timestamp(at),
        }
    }

    fn assigned(shard: &str) -> ShardingEventKind {
        ShardingEventKind::Assigned {
            shard: ShardId::parse(shard).unwrap(),
        }
    }

    #[test]
    fn a_batch_is_judged_in_order_and_repeats_answer_the_original() {
        let events = [
            event("e1", "c", assigned("a"), 10),
            event("e2", "c", assigned("b"), 20),
            event("e1", "c", assigned("a"), 10),
            event("e3", "c", assigned("z"), 15),
        ];
        let plan = plan(&events, vec![], vec![], Timestamp(99)).unwrap();
        assert_eq!(plan.inserts, vec![0, 1, 3]);
        assert!(plan.answers[2].duplicate);
        assert_eq!(plan.answers[3].record.outcome, EventOutcome::Superseded);
        assert_eq!(plan.placements.len(), 1);
        assert_eq!(
            plan.placements[0].placement,
            Placement::Stable {
                shard: ShardId::parse("b").unwrap()
            }
        );
        assert_eq!(plan.placements[0].last_event_id, "e2");
        assert_eq!(
            plan.shards.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let answers = plan.finish(vec![7, 8, 9]);
        assert_eq!(
            answers.iter().map(|a| a.record.seq).collect::<Vec<_>>(),
            [7, 8, 7, 9]
        );
    }

    #[test]
    fn a_reused_id_and_an_illegal_step_name_their_index() {
        let err = plan(
            &[
                event("e1", "c", assigned("a"), 10),
                event("e1", "c", assigned("b"), 10),
            ],
            vec![],
            vec![],
            Timestamp(0),
        )
        .unwrap_err();
        assert!(
            matches!(err, ShardingError::IdReused { index: 1, .. }),
            "{err}"
        );
        let err = plan(
            &[
                event("e1", "c", assigned("a"), 10),
                event("e2", "c", ShardingEventKind::MigrationFailed, 11),
            ],
            vec![],
            vec![],
            Timestamp(0),
        )
        .unwrap_err();
        assert!(
            matches!(err, ShardingError::Rejected { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("stable(a)"), "{err}");
    }
}
