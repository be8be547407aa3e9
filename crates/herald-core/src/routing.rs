//! Routing functions: which shard queue an event goes to, given where its
//! customer lives.
//!
//! A route is configuration (TOML):
//!
//! ```toml
//! [[routes]]
//! name = "shards"
//! source = "email-events"                 # topic the route consumes
//! key = "/custom_args/customer_id"        # JSON pointer into the event document
//! target = "shard-{shard}.email-events"   # queue per shard
//! unknown = "queue:unroutable"            # or "shard:<id>" or "drop"
//! migrating = "park"                      # or "delay:5m"
//! filter = { types = ["bounce", "spam_report"], attributes = { "/provider" = "sendgrid" } }
//!
//! [[routes]]
//! name = "fanout"
//! source = "email-events"
//! target = "shard-{shard}.email-events"
//! broadcast = true                        # every shard queue gets every event
//! ```
//!
//! The event document is an [`EmailEvent`](crate::email_event::EmailEvent)
//! as serialised on the topic. A worker asks [`Route::matches`], then
//! [`Route::customer_key`], loads that customer's [`CustomerState`] (or
//! uses [`CustomerState::unknown`] when the event has no usable key), and
//! acts on [`Route::decide`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::email_event::EventType;
use crate::names::{NameError, QueueName, TopicName};
use crate::sharding::{CustomerId, IdError, Placement, ShardId};

/// An RFC 6901 JSON pointer: empty, or `/`-separated segments where `~` is
/// only ever `~0` or `~1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyPointer(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("JSON pointer {0:?} must start with '/'")]
    NoLeadingSlash(String),
    #[error("JSON pointer {0:?} has a '~' not followed by 0 or 1")]
    BadEscape(String),
}

impl KeyPointer {
    pub fn parse(pointer: impl Into<String>) -> Result<Self, PointerError> {
        let pointer = pointer.into();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(PointerError::NoLeadingSlash(pointer));
        }
        let mut chars = pointer.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(PointerError::BadEscape(pointer));
            }
        }
        Ok(Self(pointer))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        doc.pointer(&self.0)
    }
}

impl fmt::Display for KeyPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyPointer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A queue name with one or more `{shard}` placeholders, such as
/// `shard-{shard}.email-events`. Checked when parsed against the longest
/// possible shard id, so expanding it with any valid [`ShardId`] gives a
/// valid [`QueueName`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TargetTemplate(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "target template {0:?} has no {{shard}} placeholder, so every shard would share one queue"
    )]
    NoPlaceholder(String),
    #[error("target template {template:?} has an unknown placeholder {{{name}}}; only {{shard}} is supported")]
    UnknownPlaceholder { template: String, name: String },
    #[error("target template {0:?} has an unmatched brace")]
    UnmatchedBrace(String),
    #[error("target template {template:?} does not give a valid queue name: {source}")]
    InvalidQueueName {
        template: String,
        #[source]
        source: NameError,
    },
}

impl TargetTemplate {
    const PLACEHOLDER: &'static str = "{shard}";

    pub fn parse(template: impl Into<String>) -> Result<Self, TemplateError> {
        let template = template.into();
        let mut rest = template.as_str();
        let mut placeholders = 0;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(TemplateError::UnmatchedBrace(template));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .filter(|&close| !after[..close].contains('{'))
                .ok_or_else(|| TemplateError::UnmatchedBrace(template.clone()))?;
            let name = &after[..close];
            if name != "shard" {
                return Err(TemplateError::UnknownPlaceholder {
                    name: name.to_owned(),
                    template,
                });
            }
            placeholders += 1;
            rest = &after[close + 1..];
        }
        if placeholders == 0 {
            return Err(TemplateError::NoPlaceholder(template));
        }
        let longest = ShardId::parse("x".repeat(ShardId::MAX_LEN))
            .expect("a run of 'x' up to MAX_LEN is a valid shard id");
        let checked = Self(template);
        match checked.expand(&longest) {
            Ok(_) => Ok(checked),
            Err(source) => Err(TemplateError::InvalidQueueName {
                template: checked.0,
                source,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn expand(&self, shard: &ShardId) -> Result<QueueName, NameError> {
        QueueName::parse(self.0.replace(Self::PLACEHOLDER, shard.as_str()))
    }
}

impl fmt::Display for TargetTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TargetTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown-customer policy {0:?} is not valid; use queue:<name>, shard:<id> or drop")]
    UnknownPolicy(String),
    #[error("migrating policy {0:?} is not valid; use park or delay:<duration> (e.g. delay:5m)")]
    MigratingPolicy(String),
    #[error("policy {policy:?}: {source}")]
    Queue {
        policy: String,
        #[source]
        source: NameError,
    },
    #[error("policy {policy:?}: {source}")]
    Shard {
        policy: String,
        #[source]
        source: IdError,
    },
    #[error("policy {policy:?}: {detail}")]
    Duration { policy: String, detail: String },
}

/// What happens to an event whose customer has no placement (or whose key
/// is missing): `queue:<name>` (default `queue:unroutable`), `shard:<id>`
/// or `drop`, which must be chosen explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownPolicy {
    Queue(QueueName),
    Shard(ShardId),
    Drop,
}

impl Default for UnknownPolicy {
    fn default() -> Self {
        UnknownPolicy::Queue(QueueName::parse("unroutable").expect("a valid queue name"))
    }
}

impl FromStr for UnknownPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "drop" {
            return Ok(UnknownPolicy::Drop);
        }
        if let Some(name) = s.strip_prefix("queue:") {
            return QueueName::parse(name)
                .map(UnknownPolicy::Queue)
                .map_err(|source| PolicyError::Queue {
                    policy: s.to_owned(),
                    source,
                });
        }
        if let Some(id) = s.strip_prefix("shard:") {
            return ShardId::parse(id)
                .map(UnknownPolicy::Shard)
                .map_err(|source| PolicyError::Shard {
                    policy: s.to_owned(),
                    source,
                });
        }
        Err(PolicyError::UnknownPolicy(s.to_owned()))
    }
}

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownPolicy::Queue(q) => write!(f, "queue:{q}"),
            UnknownPolicy::Shard(s) => write!(f, "shard:{s}"),
            UnknownPolicy::Drop => f.write_str("drop"),
        }
    }
}

/// What happens to an event whose customer is migrating: `park` (default:
/// held, released in order when the migration ends) or `delay:<duration>`
/// (re-checked after the duration, the seed design's behaviour).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MigratingPolicy {
    #[default]
    Park,
    Delay(Duration),
}

impl FromStr for MigratingPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "park" {
            return Ok(MigratingPolicy::Park);
        }
        let Some(text) = s.strip_prefix("delay:") else {
            return Err(PolicyError::MigratingPolicy(s.to_owned()));
        };
        let duration =
            humantime::parse_duration(text.trim()).map_err(|e| PolicyError::Duration {
                policy: s.to_owned(),
                detail: e.to_string(),
            })?;
        if duration.is_zero() {
            return Err(PolicyError::Duration {
                policy: s.to_owned(),
                detail: "the delay must be longer than zero".to_owned(),
            });
        }
        Ok(MigratingPolicy::Delay(duration))
    }
}

impl fmt::Display for MigratingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigratingPolicy::Park => f.write_str("park"),
            MigratingPolicy::Delay(d) => write!(f, "delay:{}", humantime::format_duration(*d)),
        }
    }
}

macro_rules! serde_via_str {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_via_str!(UnknownPolicy);
serde_via_str!(MigratingPolicy);

/// Which events a route takes. Empty parts match everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Common event types (`bounce`, `spam_report`, ...); a name outside the
    /// common set is a configuration error.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "common_event_types"
    )]
    pub types: Vec<EventType>,
    /// JSON pointer → the exact value (a string, or a number or boolean
    /// written as text) the event must hold there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<KeyPointer, String>,
}

fn common_event_types<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<EventType>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| name.parse().map_err(serde::de::Error::custom))
        .collect()
}

impl Filter {
    pub fn matches(&self, event: &Value) -> bool {
        let type_ok = self.types.is_empty()
            || event
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| self.types.iter().any(|want| want.as_str() == t));
        type_ok
            && self
                .attributes
                .iter()
                .all(|(pointer, want)| match pointer.resolve(event) {
                    Some(Value::String(s)) => s == want,
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                        serde_json::from_str::<Value>(want).is_ok_and(|w| w == *v)
                    }
                    _ => false,
                })
    }
}

/// How a route picks its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMode {
    /// One shard per event, by the customer found at `key`.
    Keyed {
        key: KeyPointer,
        unknown: UnknownPolicy,
        migrating: MigratingPolicy,
    },
    /// Every shard queue gets every event (the original multicast design,
    /// kept for comparison).
    Broadcast,
}

/// A validated route. Built from TOML or JSON through serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RouteConfig", into = "RouteConfig")]
pub struct Route {
    pub name: String,
    pub source: TopicName,
    pub filter: Filter,
    pub target: TargetTemplate,
    pub mode: RouteMode,
}

/// The configuration form of a [`Route`], as written in `herald.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub source: TopicName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyPointer>,
    #[serde(default)]
    pub filter: Filter,
    pub target: TargetTemplate,
    #[serde(default)]
    pub broadcast: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<UnknownPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating: Option<MigratingPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route name {0:?} is not valid: use 1 to 64 letters, digits, '_', '-' or '.'")]
    Name(String),
    #[error("route {route}: `key` is required unless `broadcast = true`")]
    MissingKey { route: String },
    #[error("route {route}: `{field}` does not apply to a broadcast route")]
    NotForBroadcast { route: String, field: &'static str },
}

impl TryFrom<RouteConfig> for Route {
    type Error = RouteError;

    fn try_from(c: RouteConfig) -> Result<Self, Self::Error> {
        let name_ok = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
        if !name_ok {
            return Err(RouteError::Name(c.name));
        }
        let mode = if c.broadcast {
            let extra = [
                ("key", c.key.is_some()),
                ("unknown", c.unknown.is_some()),
                ("migrating", c.migrating.is_some()),
            ];
            if let Some((field, _)) = extra.into_iter().find(|(_, set)| *set) {
                return Err(RouteError::NotForBroadcast {
                    route: c.name,
                    field,
                });
            }
            RouteMode::Broadcast
        } else {
            RouteMode::Keyed {
                key: c.key.ok_or_else(|| RouteError::MissingKey {
                    route: c.name.clone(),
                })?,
                unknown: c.unknown.unwrap_or_default(),
                migrating: c.migrating.unwrap_or_default(),
            }
        };
        Ok(Route {
            name: c.name,
            source: c.source,
            filter: c.filter,
            target: c.target,
            mode,
        })
    }
}

impl From<Route> for RouteConfig {
    fn from(r: Route) -> Self {
        let (key, unknown, migrating, broadcast) = match r.mode {
            RouteMode::Keyed {
                key,
                unknown,
                migrating,
            } => (Some(key), Some(unknown), Some(migrating), false),
            RouteMode::Broadcast => (None, None, None, true),
        };
        RouteConfig {
            name: r.name,
            source: r.source,
            key,
            filter: r.filter,
            target: r.target,
            broadcast,
            unknown,
            migrating,
        }
    }
}

/// Why an event has no usable customer key; such events are routed as
/// belonging to an unknown customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the event has no value at {pointer}")]
    Missing { pointer: KeyPointer },
    #[error("the value at {pointer} must be a string or an integer, found {found}")]
    WrongType {
        pointer: KeyPointer,
        found: &'static str,
    },
    #[error("the value at {pointer} is not a customer id: {source}")]
    Invalid {
        pointer: KeyPointer,
        #[source]
        source: IdError,
    },
}

/// What the store knows about a customer when an event arrives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerState {
    pub placement: Placement,
    /// Whether any of the customer's events are parked; a new event must
    /// then queue behind them so events of one customer never overtake.
    pub hold_nonempty: bool,
}

impl CustomerState {
    pub fn unknown() -> Self {
        Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingDecision {
    Deliver {
        queue: QueueName,
    },
    /// One copy per queue; empty when no shard is known yet.
    Broadcast {
        queues: Vec<QueueName>,
    },
    /// Append to the back of the customer's hold.
    Hold,
    /// Look at the event again after this long.
    Delay {
        recheck_after: Duration,
    },
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route}: the target for shard {shard} is not a valid queue name: {source}")]
pub struct RoutingError {
    pub route: String,
    pub shard: ShardId,
    #[source]
    pub source: NameError,
}

impl Route {
    pub fn matches(&self, event: &Value) -> bool {
        self.filter.matches(event)
    }

    /// The customer an event concerns; `Ok(None)` for broadcast routes,
    /// which do not look at customers.
    pub fn customer_key(&self, event: &Value) -> Result<Option<CustomerId>, KeyError> {
        let RouteMode::Keyed { key, .. } = &self.mode else {
            return Ok(None);
        };
        let text = match key.resolve(event) {
            None | Some(Value::Null) => {
                return Err(KeyError::Missing {
                    pointer: key.clone(),
                })
            }
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(KeyError::WrongType {
                    pointer: key.clone(),
                    found: crate::providers::kind_of(other),
                })
            }
        };
        CustomerId::parse(text)
            .map(Some)
            .map_err(|source| KeyError::Invalid {
                pointer: key.clone(),
                source,
            })
    }

    /// Where an event goes. `customer` is ignored by broadcast routes and
    /// `shards` (every known shard) by keyed ones.
    pub fn decide(
        &self,
        customer: &CustomerState,
        shards: &[ShardId],
    ) -> Result<RoutingDecision, RoutingError> {
        let (unknown, migrating) = match &self.mode {
            RouteMode::Broadcast => {
                let queues = shards
                    .iter()
                    .map(|shard| self.queue_for(shard))
                    .collect::<Result<_, _>>()?;
                return Ok(RoutingDecision::Broadcast { queues });
            }
            RouteMode::Keyed {
                unknown, migrating, ..
            } => (unknown, migrating),
        };
        if customer.hold_nonempty {
            return Ok(RoutingDecision::Hold);
        }
        Ok(match &customer.placement {
            Placement::Stable { shard } => RoutingDecision::Deliver {
                queue: self.queue_for(shard)?,
            },
            Placement::Migrating { .. } => match migrating {
                MigratingPolicy::Park => RoutingDecision::Hold,
                MigratingPolicy::Delay(d) => RoutingDecision::Delay { recheck_after: *d },
            },
            Placement::Unknown => match unknown {
                UnknownPolicy::Queue(queue) => RoutingDecision::Deliver {
                    queue: queue.clone(),
                },
                UnknownPolicy::Shard(shard) => RoutingDecision::Deliver {
                    queue: self.queue_for(shard)?,
                },
                UnknownPolicy::Drop => RoutingDecision::Drop,
            },
        })
    }

    /// The route's queue for one shard; held events are released here too.
    pub fn queue_for(&self, shard: &ShardId) -> Result<QueueName, RoutingError> {
        self.target.expand(shard).map_err(|source| RoutingError {
            route: self.name.clone(),
            shard: shard.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Config {
        routes: Vec<Route>,
    }

    fn routes(toml_text: &str) -> Result<Vec<Route>, String> {
        toml::from_str::<Config>(toml_text)
            .map(|c| c.routes)
            .map_err(|e| e.to_string())
    }

    fn route(extra: &str) -> Route {
        let text = format!(
            "[[routes]]\nname = \"shards\"\nsource = \"email-events\"\nkey = \"/custom_args/customer_id\"\ntarget = \"shard-{{shard}}.email-events\"\n{extra}"
        );
        routes(&text).unwrap_or_else(|e| panic!("{e}")).remove(0)
    }

    fn s(id: &str) -> ShardId {
        ShardId::parse(id).unwrap()
    }

    fn q(name: &str) -> QueueName {
        QueueName::parse(name).unwrap()
    }

    fn at(placement: Placement, hold_nonempty: bool) -> CustomerState {
        CustomerState {
            placement,
            hold_nonempty,
        }
    }

    fn stable(id: &str) -> Placement {
        Placement::Stable { shard: s(id) }
    }

    fn migrating() -> Placement {
        Placement::Migrating {
            from: s("1"),
            to: s("2"),
        }
    }

    #[test]
    fn parses_a_full_route_from_toml() {
        let r = route(
            "unknown = \"shard:0\"\nmigrating = \"delay:5m\"\nfilter = { types = [\"bounce\", \"spam_report\"], attributes = { \"/provider\" = \"sendgrid\" } }",
        );
        assert_eq!(r.name, "shards");
        assert_eq!(r.source.as_str(), "email-events");
        assert_eq!(
            r.mode,
            RouteMode::Keyed {
                key: KeyPointer::parse("/custom_args/customer_id").unwrap(),
                unknown: UnknownPolicy::Shard(s("0")),
                migrating: MigratingPolicy::Delay(Duration::from_secs(300)),
            }
        );
        assert_eq!(
            r.filter.types,
            vec![EventType::Bounce, EventType::SpamReport]
        );

        let back: Route = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn policies_default_to_unroutable_and_park() {
        let r = route("");
        let RouteMode::Keyed {
            unknown, migrating, ..
        } = &r.mode
        else {
            panic!("keyed")
        };
        assert_eq!(unknown, &UnknownPolicy::Queue(q("unroutable")));
        assert_eq!(migrating, &MigratingPolicy::Park);
    }

    #[test]
    fn bad_route_configs_are_refused_clearly() {
        let base =
            "[[routes]]\nname = \"r\"\nsource = \"email-events\"\ntarget = \"shard-{shard}.q\"\n";
        let cases = [
            ("", "`key` is required unless `broadcast = true`"),
            (
                "broadcast = true\nkey = \"/a\"",
                "`key` does not apply to a broadcast route",
            ),
            (
                "broadcast = true\nmigrating = \"park\"",
                "`migrating` does not apply",
            ),
            ("key = \"a\"", "must start with '/'"),
            ("key = \"/a~2\"", "'~' not followed by 0 or 1"),
            (
                "key = \"/a\"\nunknown = \"queue\"",
                "use queue:<name>, shard:<id> or drop",
            ),
            (
                "key = \"/a\"\nunknown = \"queue:no spaces\"",
                "only letters",
            ),
            ("key = \"/a\"\nunknown = \"shard:a.b\"", "shard id"),
            (
                "key = \"/a\"\nmigrating = \"hold\"",
                "use park or delay:<duration>",
            ),
            ("key = \"/a\"\nmigrating = \"delay:soon\"", "delay:soon"),
            ("key = \"/a\"\nmigrating = \"delay:0s\"", "longer than zero"),
            (
                "key = \"/a\"\nfilter = { types = [\"bounced\"] }",
                "unknown event type \"bounced\"",
            ),
            (
                "key = \"/a\"\nfilter = { kinds = [] }",
                "unknown field `kinds`",
            ),
            ("key = \"/a\"\ncolour = \"red\"", "unknown field `colour`"),
        ];
        for (extra, message) in cases {
            let err = routes(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(message), "{extra}: {err}");
        }
        let err = routes(
            "[[routes]]\nname = \"a b\"\nsource = \"t\"\nkey = \"/a\"\ntarget = \"{shard}\"",
        )
        .unwrap_err();
        assert!(err.contains("route name \"a b\" is not valid"), "{err}");
    }

    #[test]
    fn template_errors() {
        let cases = [
            ("shard.email-events", "no {shard} placeholder"),
            ("shard-{id}.q", "unknown placeholder {id}"),
            ("shard-{shard.q", "unmatched brace"),
            ("shard-shard}.q", "unmatched brace"),
            ("shard-{{shard}}.q", "unmatched brace"),
            ("shard {shard}", "does not give a valid queue name"),
            (
                &format!("{}-{{shard}}", "q".repeat(48)),
                "does not give a valid queue name",
            ),
        ];
        for (template, message) in cases {
            let err = TargetTemplate::parse(template).unwrap_err();
            assert!(err.to_string().contains(message), "{template}: {err}");
        }
        let ok = TargetTemplate::parse(format!("{}-{{shard}}", "q".repeat(47))).unwrap();
        assert_eq!(
            ok.expand(&s("x")).unwrap().as_str(),
            format!("{}-x", "q".repeat(47))
        );
        let twice = TargetTemplate::parse("{shard}.in.{shard}").unwrap();
        assert_eq!(twice.expand(&s("7")).unwrap().as_str(), "7.in.7");
    }

    #[test]
    fn policies_print_as_they_parse() {
        for text in ["queue:unroutable", "shard:eu-1", "drop"] {
            assert_eq!(text.parse::<UnknownPolicy>().unwrap().to_string(), text);
        }
        for text in ["park", "delay:5m", "delay:1h 30m"] {
            assert_eq!(text.parse::<MigratingPolicy>().unwrap().to_string(), text);
        }
        assert_eq!(
            "delay:90s".parse::<MigratingPolicy>().unwrap(),
            MigratingPolicy::Delay(Duration::from_secs(90))
        );
    }

    #[test]
    fn stable_customers_go_to_their_shard() {
        let r = route("");
        assert_eq!(
            r.decide(&at(stable("3"), false), &[]).unwrap(),
            RoutingDecision::Deliver {
                queue: q("shard-3.email-events")
            }
        );
    }

    #[test]
    fn a_nonempty_hold_is_joined_whatever_the_state() {
        for extra in ["", "migrating = \"delay:1m\"", "unknown = \"drop\""] {
            let r = route(extra);
            for placement in [stable("3"), migrating(), Placement::Unknown] {
                assert_eq!(
                    r.decide(&at(placement.clone(), true), &[]).unwrap(),
                    RoutingDecision::Hold,
                    "{extra} / {placement}"
                );
            }
        }
    }

    #[test]
    fn migrating_customers_are_parked_or_delayed() {
        assert_eq!(
            route("").decide(&at(migrating(), false), &[]).unwrap(),
            RoutingDecision::Hold
        );
        assert_eq!(
            route("migrating = \"delay:2m\"")
                .decide(&at(migrating(), false), &[])
                .unwrap(),
            RoutingDecision::Delay {
                recheck_after: Duration::from_secs(120)
            }
        );
    }

    #[test]
    fn unknown_customers_follow_the_policy() {
        let unknown = CustomerState::unknown();
        let cases = [
            (
                "",
                RoutingDecision::Deliver {
                    queue: q("unroutable"),
                },
            ),
            (
                "unknown = \"queue:lost-events\"",
                RoutingDecision::Deliver {
                    queue: q("lost-events"),
                },
            ),
            (
                "unknown = \"shard:0\"",
                RoutingDecision::Deliver {
                    queue: q("shard-0.email-events"),
                },
            ),
            ("unknown = \"drop\"", RoutingDecision::Drop),
        ];
        for (extra, expected) in cases {
            assert_eq!(
                route(extra).decide(&unknown, &[]).unwrap(),
                expected,
                "{extra}"
            );
        }
    }

    #[test]
    fn broadcast_sends_to_every_shard_queue() {
        let r = routes(
            "[[routes]]\nname = \"fanout\"\nsource = \"email-events\"\ntarget = \"shard-{shard}.email-events\"\nbroadcast = true",
        )
        .unwrap()
        .remove(0);
        assert_eq!(r.mode, RouteMode::Broadcast);
        let decision = r
            .decide(&at(migrating(), true), &[s("1"), s("2"), s("3")])
            .unwrap();
        assert_eq!(
            decision,
            RoutingDecision::Broadcast {
                queues: vec![
                    q("shard-1.email-events"),
                    q("shard-2.email-events"),
                    q("shard-3.email-events")
                ]
            }
        );
        assert_eq!(
            r.decide(&CustomerState::unknown(), &[]).unwrap(),
            RoutingDecision::Broadcast { queues: vec![] }
        );
        assert_eq!(r.customer_key(&json!({})).unwrap(), None);
    }

    #[test]
    fn customer_keys_come_from_the_pointer() {
        let r = route("");
        let key = |doc: Value| r.customer_key(&doc);
        assert_eq!(
            key(json!({"custom_args": {"customer_id": "c-1"}})).unwrap(),
            Some(CustomerId::parse("c-1").unwrap())
        );
        assert_eq!(
            key(json!({"custom_args": {"customer_id": 1001}})).unwrap(),
            Some(CustomerId::parse("1001").unwrap())
        );
        assert!(matches!(
            key(json!({"custom_args": {}})),
            Err(KeyError::Missing { .. })
        ));
        assert!(matches!(
            key(json!({"custom_args": {"customer_id": null}})),
            Err(KeyError::Missing { .. })
        ));
        let err = key(json!({"custom_args": {"customer_id": {"id": 1}}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the value at /custom_args/customer_id must be a string or an integer, found an object"
        );
        assert!(matches!(
            key(json!({"custom_args": {"customer_id": 1.5}})),
            Err(KeyError::WrongType { .. })
        ));
        assert!(matches!(
            key(json!({"custom_args": {"customer_id": "a b"}})),
            Err(KeyError::Invalid { .. })
        ));
    }

    #[test]
    fn escaped_pointer_segments_resolve() {
        let p = KeyPointer::parse("/raw/a~1b/c~0d").unwrap();
        assert_eq!(
            p.resolve(&json!({"raw": {"a/b": {"c~d": "x"}}})).unwrap(),
            "x"
        );
    }

    #[test]
    fn filters_match_type_and_attributes() {
        let r = route("filter = { types = [\"bounce\"], attributes = { \"/provider\" = \"sendgrid\", \"/raw/asm_group_id\" = \"7\" } }");
        let event = |t: &str, provider: &str| json!({"type": t, "provider": provider, "raw": {"asm_group_id": 7}});
        assert!(r.matches(&event("bounce", "sendgrid")));
        assert!(!r.matches(&event("open", "sendgrid")));
        assert!(!r.matches(&event("bounce", "sparkpost")));
        assert!(!r.matches(&json!({"type": "bounce", "provider": "sendgrid"})));
        assert!(route("").matches(&json!({})));
    }
}
