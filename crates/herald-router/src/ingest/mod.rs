//! Storing a verified, parsed webhook batch and publishing its new events to
//! the `email-events` topic, atomically, before the sender gets its 2xx.
//!
//! "Stored" and "published" must never disagree: an event stored but not
//! published would never reach a shard, one published but not stored would
//! be published again on the provider's retry. So each store+bus pairing
//! that can do both in one transaction gets an [`EventSink`]:
//!
//! - SQLite store + embedded bus ([`EmbeddedSink`]): one SQLite transaction
//!   on the store's writer connection.
//! - PostgreSQL store + PostgreSQL bus ([`PostgresSink`]): one PostgreSQL
//!   transaction; a concurrent duplicate batch waits on the unique key and
//!   then finds its events stored.
//!
//! A pairing without such a path (a store and a bus in different systems)
//! needs an outbox and is refused at start-up by the binary. Only events the
//! store had not seen are published, so a retried batch publishes nothing.

mod sinks;

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_bus::{
    Bus, BusError, Condition, FilterPolicy, OutgoingMessage, QueueConfig, Subscription,
};
use herald_core::email_event::{BounceClass, EmailEvent, EventType, Provider};
use herald_core::{QueueName, Timestamp, TopicName};
use herald_store::email_events::{alert_id, JsonColumns, ALERT_ID_ARG};
use herald_store::StoreError;
use serde::Serialize;

pub use sinks::{EmbeddedSink, PostgresSink, WriterStats};

/// The topic every stored email event is published to.
pub const EMAIL_EVENTS_TOPIC: &str = "email-events";
/// Herald's own subscription that feeds the suppression list.
pub const SUPPRESSIONS_QUEUE: &str = "herald.suppressions";
/// Herald's own subscription that feeds per-alert statistics.
pub const STATS_QUEUE: &str = "herald.stats";

/// Event types the suppression subscriber acts on (whether a bounce is hard
/// and a drop is for a bounced address is decided on the event itself).
pub const SUPPRESSION_TYPES: [EventType; 4] = [
    EventType::Bounce,
    EventType::Dropped,
    EventType::SpamReport,
    EventType::Unsubscribe,
];

/// Event types counted per brand alert.
pub const STATS_TYPES: [EventType; 4] = [
    EventType::Delivered,
    EventType::Open,
    EventType::Click,
    EventType::Bounce,
];

pub fn email_events_topic() -> TopicName {
    TopicName::parse(EMAIL_EVENTS_TOPIC).expect("a valid topic name")
}

pub fn suppressions_queue() -> QueueName {
    QueueName::parse(SUPPRESSIONS_QUEUE).expect("a valid queue name")
}

pub fn stats_queue() -> QueueName {
    QueueName::parse(STATS_QUEUE).expect("a valid queue name")
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the event writer has stopped")]
    Stopped,
}

/// What storing one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events stored (and published) now, per type.
    pub stored: BTreeMap<String, u64>,
    /// Events of the batch that were stored before (or repeated inside it).
    pub duplicates: u64,
}

impl IngestOutcome {
    pub fn stored_total(&self) -> u64 {
        self.stored.values().sum()
    }

    fn of(events: &[EmailEvent], new: &[usize]) -> Self {
        let mut stored = BTreeMap::new();
        for &i in new {
            *stored
                .entry(events[i].event_type.as_str().to_owned())
                .or_insert(0) += 1;
        }
        Self {
            stored,
            duplicates: (events.len() - new.len()) as u64,
        }
    }
}

/// Stores a batch of events and publishes the new ones, all or nothing.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Returns only once the batch is durable and published; on an error
    /// nothing of it is stored or published.
    async fn ingest(&self, events: Vec<EmailEvent>) -> Result<IngestOutcome, IngestError>;
}

/// The bus message for one event: the event's JSON and the attributes
/// subscriptions filter on.
///
/// It carries no dedup key: a sink publishes only the events its insert
/// stored, in the insert's transaction, so the unique key of the events
/// table already keeps a provider event to one publication, for longer than
/// any dedup window would, and the copies save a dedup record each.
pub fn event_message(event: &EmailEvent) -> Result<OutgoingMessage, IngestError> {
    let body = serde_json::to_vec(event).map_err(body_error)?;
    Ok(message_of(event, body))
}

/// As [`event_message`], for an event whose JSON columns the store has
/// already serialized: they are the last fields of the event's JSON, so the
/// body reuses them instead of serializing them (most of the body) again.
/// The body is byte for byte the one [`event_message`] builds.
pub fn event_message_with(
    event: &EmailEvent,
    json: JsonColumns<'_>,
) -> Result<OutgoingMessage, IngestError> {
    Ok(message_of(event, event_body(event, json)?))
}

fn body_error(e: serde_json::Error) -> IngestError {
    IngestError::Bus(BusError::InvalidArgument {
        field: "body",
        message: e.to_string(),
    })
}

fn message_of(event: &EmailEvent, body: Vec<u8>) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(body)
        .attribute("provider", event.provider.to_string())
        .attribute("type", event.event_type.as_str());
    if let Some(alert) = alert_id(event) {
        message = message.attribute(ALERT_ID_ARG, alert);
    }
    message
}

/// The fields of [`EmailEvent`] before `tags`, `custom_args` and `raw`, in
/// its order and serialized as it serializes them.
#[derive(Serialize)]
struct EventHead<'a> {
    provider: &'a Provider,
    provider_event_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a EventType,
    address: &'a str,
    occurred_at: Timestamp,
    message_id: Option<&'a str>,
    bounce: Option<BounceClass>,
}

fn event_body(event: &EmailEvent, json: JsonColumns<'_>) -> Result<Vec<u8>, IngestError> {
    let tail = [
        ("tags", json.tags),
        ("custom_args", json.custom_args),
        ("raw", json.raw),
    ];
    let mut body = Vec::with_capacity(
        160 + event.provider_event_id.len()
            + event.address.len()
            + tail.iter().map(|(_, v)| v.len() + 16).sum::<usize>(),
    );
    let head = EventHead {
        provider: &event.provider,
        provider_event_id: &event.provider_event_id,
        event_type: &event.event_type,
        address: &event.address,
        occurred_at: event.occurred_at,
        message_id: event.message_id.as_deref(),
        bounce: event.bounce,
    };
    serde_json::to_writer(&mut body, &head).map_err(body_error)?;
    // An object always ends with its closing brace; the tail goes before it.
    let closing = body.pop();
    debug_assert_eq!(closing, Some(b'}'));
    for (key, value) in tail {
        body.extend_from_slice(b",\"");
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(b"\":");
        body.extend_from_slice(value.as_bytes());
    }
    body.push(b'}');
    Ok(body)
}

/// Creates the `email-events` topic and Herald's own subscriber queues,
/// unless they exist. Every process calls it at start, whatever its roles,
/// so that no batch is published before its subscribers exist.
pub async fn ensure_topology(bus: &dyn Bus, queue_config: QueueConfig) -> Result<(), BusError> {
    let topic = email_events_topic();
    bus.ensure_topic(&topic).await?;
    let names = |types: &[EventType]| types.iter().map(|t| t.as_str().to_owned()).collect();
    let subscriptions = [
        (
            suppressions_queue(),
            FilterPolicy::any().with("type", Condition::Equals(names(&SUPPRESSION_TYPES))),
        ),
        (
            stats_queue(),
            FilterPolicy::any()
                .with("type", Condition::Equals(names(&STATS_TYPES)))
                .with(ALERT_ID_ARG, Condition::Exists(true)),
        ),
    ];
    for (queue, filter) in subscriptions {
        bus.ensure_queue(&queue, queue_config.clone()).await?;
        bus.subscribe(Subscription {
            topic: topic.clone(),
            queue,
            filter,
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use herald_core::email_event::Provider;
    use herald_core::Timestamp;
    use serde_json::json;

    use super::*;

    /// Each copy of a dedup key would cost a dedup record per subscriber
    /// queue; the events table's unique key already publishes an event once.
    #[test]
    fn event_messages_carry_filter_attributes_and_no_dedup_key() {
        let event = EmailEvent {
            provider: Provider::SendGrid,
            provider_event_id: "ev-1".into(),
            event_type: EventType::Open,
            address: "a@example.com".into(),
            occurred_at: Timestamp(1_795_000_000_000),
            message_id: None,
            bounce: None,
            tags: vec![],
            custom_args: json!({"alert_id": "alert-7"}).as_object().unwrap().clone(),
            raw: json!({"sg_event_id": "ev-1"}),
        };
        let message = event_message(&event).unwrap();
        assert_eq!(message.dedup_key, None);
        assert_eq!(message.attributes["provider"], "sendgrid");
        assert_eq!(message.attributes["type"], "open");
        assert_eq!(message.attributes[ALERT_ID_ARG], "alert-7");
        let body: EmailEvent = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(body, event);
    }

    /// The spliced body must stay the event's own JSON, whatever the event
    /// holds; a field added to `EmailEvent` fails this until the head has it.
    #[test]
    fn bodies_spliced_from_the_store_columns_are_the_event_json() {
        let plain = EmailEvent {
            provider: Provider::SendGrid,
            provider_event_id: "ev-\"1\"\u{e9}".into(),
            event_type: EventType::Open,
            address: "A@Example.com".into(),
            occurred_at: Timestamp(1_795_000_000_000),
            message_id: None,
            bounce: None,
            tags: vec![],
            custom_args: Default::default(),
            raw: json!({}),
        };
        let full = EmailEvent {
            provider: Provider::Generic(
                herald_core::email_event::SourceName::parse("src").unwrap(),
            ),
            event_type: EventType::from_name("group_resubscribe"),
            message_id: Some("m<1>".into()),
            bounce: Some(herald_core::email_event::BounceClass::Soft),
            tags: vec!["a".into(), "b\n".into()],
            custom_args: json!({"alert_id": 7, "x": [1, {"y": null}]})
                .as_object()
                .unwrap()
                .clone(),
            raw: json!({"z": 1, "a": "\u{1F600}", "n": 1.5}),
            ..plain.clone()
        };
        let bounce = EmailEvent {
            event_type: EventType::Bounce,
            bounce: Some(herald_core::email_event::BounceClass::Hard),
            ..full.clone()
        };
        for event in [plain, full, bounce] {
            let rows =
                herald_store::email_events::EventRows::of(std::slice::from_ref(&event)).unwrap();
            let spliced = event_message_with(&event, rows.json(0).unwrap()).unwrap();
            let whole = event_message(&event).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&spliced.body),
                String::from_utf8_lossy(&whole.body)
            );
            assert_eq!(spliced.attributes, whole.attributes);
        }
    }
}
