//! The one shape every provider's delivery events are parsed into, so that
//! storage, routing and suppression never look at a provider's own format.
//! The provider's event is kept whole in [`EmailEvent::raw`] for anything the
//! common shape leaves out.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::Timestamp;

/// Who sent an event. Generic senders are told apart by the `{source}` of
/// the URL they post to, so two in-house systems never share event ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    SendGrid,
    SparkPost,
    Generic(SourceName),
}

impl Provider {
    const GENERIC_PREFIX: &'static str = "generic:";
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::SendGrid => f.write_str("sendgrid"),
            Provider::SparkPost => f.write_str("sparkpost"),
            Provider::Generic(source) => write!(f, "{}{source}", Self::GENERIC_PREFIX),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("unknown provider {0:?}; expected sendgrid, sparkpost or generic:<source>")]
    Unknown(String),
    #[error(transparent)]
    Source(#[from] SourceNameError),
}

impl FromStr for Provider {
    type Err = ProviderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sendgrid" => Ok(Provider::SendGrid),
            "sparkpost" => Ok(Provider::SparkPost),
            _ => match s.strip_prefix(Self::GENERIC_PREFIX) {
                Some(source) => Ok(Provider::Generic(SourceName::parse(source)?)),
                None => Err(ProviderError::Unknown(s.to_owned())),
            },
        }
    }
}

impl Serialize for Provider {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The `{source}` of a generic webhook: `[A-Za-z0-9_-]{1,64}`, so it is safe
/// in a URL path segment and in the provider column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source name {name:?} is not valid: use 1 to {max} letters, digits, '_' or '-'", max = SourceName::MAX_LEN)]
pub struct SourceNameError {
    pub name: String,
}

impl SourceName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(name: impl Into<String>) -> Result<Self, SourceNameError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if valid {
            Ok(Self(name))
        } else {
            Err(SourceNameError { name })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened to a message, in the vocabulary common to all providers.
///
/// A provider event with no common meaning (SendGrid's `group_resubscribe`,
/// SparkPost's `relay_delivery`, ...) becomes [`EventType::Other`] holding the
/// provider's name instead of failing the batch: one new event kind at a
/// provider must not make it retry every batch forever. `Other` never holds
/// one of the common names; build values with [`EventType::from_name`].
///
/// [`FromStr`] is strict and accepts only the common names, for places where
/// a typo must be caught (route filters, generic senders).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Processed,
    Delivered,
    Deferred,
    Bounce,
    Dropped,
    Open,
    Click,
    SpamReport,
    Unsubscribe,
    Other(String),
}

impl EventType {
    /// Every common type, in pipeline order.
    pub const COMMON: [EventType; 9] = [
        EventType::Processed,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounce,
        EventType::Dropped,
        EventType::Open,
        EventType::Click,
        EventType::SpamReport,
        EventType::Unsubscribe,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            EventType::Processed => "processed",
            EventType::Delivered => "delivered",
            EventType::Deferred => "deferred",
            EventType::Bounce => "bounce",
            EventType::Dropped => "dropped",
            EventType::Open => "open",
            EventType::Click => "click",
            EventType::SpamReport => "spam_report",
            EventType::Unsubscribe => "unsubscribe",
            EventType::Other(name) => name,
        }
    }

    /// The common type of that name, or `Other(name)`.
    pub fn from_name(name: &str) -> EventType {
        name.parse()
            .unwrap_or_else(|_| EventType::Other(name.to_owned()))
    }

    pub fn is_common(&self) -> bool {
        !matches!(self, EventType::Other(_))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {name:?}; expected one of processed, delivered, deferred, bounce, dropped, open, click, spam_report, unsubscribe")]
pub struct UnknownEventType {
    pub name: String,
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::COMMON
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType { name: s.to_owned() })
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EventType::from_name(&String::deserialize(d)?))
    }
}

/// Whether a bounce is permanent (suppress the address) or temporary.
/// Set only on bounces whose provider data says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    Hard,
    Soft,
}

impl FromStr for BounceClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hard" => Ok(BounceClass::Hard),
            "soft" => Ok(BounceClass::Soft),
            _ => Err(format!("unknown bounce class {s:?}; expected hard or soft")),
        }
    }
}

/// One delivery event from any provider.
///
/// Serialised, this is the document published on the `email-events` topic;
/// route keys and filters are JSON pointers into it (for example
/// `/custom_args/customer_id` or `/raw/smtp-id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailEvent {
    pub provider: Provider,
    /// Unique per provider; the store deduplicates on (provider, this id).
    pub provider_event_id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The recipient address, as the provider reported it.
    pub address: String,
    pub occurred_at: Timestamp,
    /// The id the provider gave the message when it was sent, if reported.
    pub message_id: Option<String>,
    pub bounce: Option<BounceClass>,
    /// SendGrid categories, SparkPost recipient tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What the sender attached to the message (alert, member, customer).
    #[serde(default)]
    pub custom_args: Map<String, Value>,
    /// The provider's event exactly as received.
    pub raw: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names_round_trip_and_parse_strictly() {
        for t in EventType::COMMON {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            assert_eq!(EventType::from_name(t.as_str()), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
        assert_eq!(
            serde_json::to_string(&EventType::SpamReport).unwrap(),
            "\"spam_report\""
        );
        let err = "bounced".parse::<EventType>().unwrap_err();
        assert!(err.to_string().contains("\"bounced\""), "{err}");
        assert!(err.to_string().contains("spam_report"), "{err}");
    }

    #[test]
    fn unknown_names_become_other_when_lenient() {
        let t = EventType::from_name("group_resubscribe");
        assert_eq!(t, EventType::Other("group_resubscribe".into()));
        assert!(!t.is_common());
        assert_eq!(
            serde_json::from_str::<EventType>("\"relay_delivery\"").unwrap(),
            EventType::Other("relay_delivery".into())
        );
        assert_eq!(
            serde_json::to_string(&EventType::Other("x_y".into())).unwrap(),
            "\"x_y\""
        );
    }

    #[test]
    fn provider_string_form_round_trips() {
        let generic = Provider::Generic(SourceName::parse("billing-v2").unwrap());
        for p in [Provider::SendGrid, Provider::SparkPost, generic] {
            assert_eq!(p.to_string().parse::<Provider>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Provider>(&json).unwrap(), p);
        }
        assert_eq!(
            Provider::Generic(SourceName::parse("crm").unwrap()).to_string(),
            "generic:crm"
        );
        assert!(matches!(
            "mailgun".parse::<Provider>(),
            Err(ProviderError::Unknown(_))
        ));
        assert!(matches!(
            "generic:a/b".parse::<Provider>(),
            Err(ProviderError::Source(_))
        ));
    }

    #[test]
    fn source_names_are_checked() {
        assert!(SourceName::parse("crm_1-a").is_ok());
        assert!(SourceName::parse("x".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            let err = SourceName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("not valid"), "{err}");
        }
    }

    #[test]
    fn bounce_class_parses() {
        assert_eq!("hard".parse::<BounceClass>(), Ok(BounceClass::Hard));
        assert_eq!("soft".parse::<BounceClass>(), Ok(BounceClass::Soft));
        assert!("permanent".parse::<BounceClass>().is_err());
    }

    #[test]
    fn serialised_event_exposes_pointer_paths() {
        let event = EmailEvent {
            provider: Provider::SendGrid,
            provider_event_id: "ev-1".into(),
            event_type: EventType::Bounce,
            address: "a@example.com".into(),
            occurred_at: Timestamp(1_000),
            message_id: Some("m-1".into()),
            bounce: Some(BounceClass::Hard),
            tags: vec!["brand-alert".into()],
            custom_args: serde_json::from_str(r#"{"customer_id":"c-1"}"#).unwrap(),
            raw: serde_json::json!({"smtp-id": "<x@y>"}),
        };
        let doc = serde_json::to_value(&event).unwrap();
        assert_eq!(doc.pointer("/type").unwrap(), "bounce");
        assert_eq!(doc.pointer("/provider").unwrap(), "sendgrid");
        assert_eq!(doc.pointer("/custom_args/customer_id").unwrap(), "c-1");
        assert_eq!(doc.pointer("/raw/smtp-id").unwrap(), "<x@y>");
        assert_eq!(doc.pointer("/bounce").unwrap(), "hard");
        let back: EmailEvent = serde_json::from_value(doc).unwrap();
        assert_eq!(back, event);
    }
}
