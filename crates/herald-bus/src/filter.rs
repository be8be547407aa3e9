//! Subscription filter policies, SNS style: a map from attribute name to a
//! [`Condition`]; a message matches when every condition holds.
//!
//! The serde form reads well in JSON and TOML:
//!
//! ```json
//! {"type": ["bounce", "dropped"], "provider": {"prefix": "send"},
//!  "alert_id": {"exists": true}, "x": {"anything_but": ["a"]}}
//! ```
//!
//! A bare array (or a bare string) means [`Condition::Equals`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Attributes;

/// What one attribute must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Present and equal to one of these values.
    Equals(Vec<String>),
    /// Present and starting with this prefix.
    Prefix(String),
    /// Present and equal to none of these values.
    AnythingBut(Vec<String>),
    /// Present (`true`) or absent (`false`).
    Exists(bool),
}

impl Condition {
    pub fn matches(&self, value: Option<&str>) -> bool {
        match self {
            Condition::Equals(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Condition::Prefix(prefix) => value.is_some_and(|v| v.starts_with(prefix.as_str())),
            Condition::AnythingBut(values) => value.is_some_and(|v| values.iter().all(|x| x != v)),
            Condition::Exists(wanted) => value.is_some() == *wanted,
        }
    }
}

/// Attribute name → condition; every condition must hold. The empty policy
/// matches every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FilterPolicy(pub BTreeMap<String, Condition>);

impl FilterPolicy {
    /// The policy that matches everything.
    pub fn any() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the condition on `attribute`.
    pub fn with(mut self, attribute: impl Into<String>, condition: Condition) -> Self {
        self.0.insert(attribute.into(), condition);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, attrs: &Attributes) -> bool {
        self.0
            .iter()
            .all(|(name, condition)| condition.matches(attrs.get(name).map(String::as_str)))
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Condition::Equals(values) => values.serialize(s),
            Condition::Prefix(prefix) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("prefix", prefix)?;
                map.end()
            }
            Condition::AnythingBut(values) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("anything_but", values)?;
                map.end()
            }
            Condition::Exists(wanted) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("exists", wanted)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ConditionVisitor)
    }
}

struct ConditionVisitor;

impl<'de> Visitor<'de> for ConditionVisitor {
    type Value = Condition;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a list of values, a value, or one of {\"prefix\": ..}, \
             {\"anything_but\": [..]}, {\"exists\": true|false}",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Condition, E> {
        Ok(Condition::Equals(vec![v.to_owned()]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Condition, A::Error> {
        let values = Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        if values.is_empty() {
            return Err(de::Error::custom(
                "an empty list of values can never match; give at least one value",
            ));
        }
        Ok(Condition::Equals(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Condition, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                "an empty condition; use one of prefix, anything_but or exists",
            ));
        };
        let condition = match key.as_str() {
            "prefix" => Condition::Prefix(map.next_value()?),
            "anything_but" => Condition::AnythingBut(map.next_value::<OneOrMany>()?.0),
            "exists" => Condition::Exists(map.next_value()?),
            other => {
                return Err(de::Error::custom(format!(
                    "unknown condition {other:?}; use one of prefix, anything_but or exists"
                )))
            }
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "a condition has exactly one operator; found {key:?} and {extra:?}"
            )));
        }
        Ok(condition)
    }
}

/// `"a"` or `["a", "b"]`.
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OneOrMany, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(json: &str) -> FilterPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn empty_policy_matches_everything() {
        assert!(FilterPolicy::any().matches(&attrs(&[])));
        assert!(FilterPolicy::any().matches(&attrs(&[("type", "open")])));
    }

    #[test]
    fn equals_matches_any_listed_value() {
        let p = policy(r#"{"type": ["bounce", "dropped"]}"#);
        assert!(p.matches(&attrs(&[("type", "bounce")])));
        assert!(p.matches(&attrs(&[("type", "dropped")])));
        assert!(!p.matches(&attrs(&[("type", "open")])));
        assert!(
            !p.matches(&attrs(&[("other", "bounce")])),
            "absent never equals"
        );
        assert!(!p.matches(&attrs(&[("type", "Bounce")])), "case-sensitive");
    }

    #[test]
    fn prefix_requires_presence() {
        let p = policy(r#"{"provider": {"prefix": "send"}}"#);
        assert!(p.matches(&attrs(&[("provider", "sendgrid")])));
        assert!(p.matches(&attrs(&[("provider", "send")])));
        assert!(!p.matches(&attrs(&[("provider", "sparkpost")])));
        assert!(!p.matches(&attrs(&[])));
    }

    #[test]
    fn anything_but_requires_presence_and_no_listed_value() {
        let p = policy(r#"{"x": {"anything_but": ["a", "b"]}}"#);
        assert!(p.matches(&attrs(&[("x", "c")])));
        assert!(!p.matches(&attrs(&[("x", "a")])));
        assert!(!p.matches(&attrs(&[("x", "b")])));
        assert!(!p.matches(&attrs(&[])), "absent is not anything-but");
        let single = policy(r#"{"x": {"anything_but": "a"}}"#);
        assert_eq!(single.0["x"], Condition::AnythingBut(vec!["a".into()]));
    }

    #[test]
    fn exists_true_and_false() {
        let yes = policy(r#"{"alert_id": {"exists": true}}"#);
        let no = policy(r#"{"alert_id": {"exists": false}}"#);
        let with = attrs(&[("alert_id", "")]);
        let without = attrs(&[("other", "1")]);
        assert!(yes.matches(&with));
        assert!(!yes.matches(&without));
        assert!(!no.matches(&with));
        assert!(no.matches(&without));
    }

    #[test]
    fn every_condition_must_hold() {
        let p = policy(
            r#"{"type": ["bounce", "dropped"], "provider": {"prefix": "send"},
                "alert_id": {"exists": true}, "x": {"anything_but": ["a"]}}"#,
        );
        let all = attrs(&[
            ("type", "bounce"),
            ("provider", "sendgrid"),
            ("alert_id", "7"),
            ("x", "b"),
        ]);
        assert!(p.matches(&all));
        for drop in ["type", "provider", "alert_id", "x"] {
            let mut partial = all.clone();
            partial.remove(drop);
            assert!(!p.matches(&partial), "matched without {drop}");
        }
        let mut wrong = all.clone();
        wrong.insert("x".into(), "a".into());
        assert!(!p.matches(&wrong));
    }

    #[test]
    fn bare_string_means_equals() {
        let p = policy(r#"{"type": "bounce"}"#);
        assert_eq!(p.0["type"], Condition::Equals(vec!["bounce".into()]));
    }

    #[test]
    fn json_round_trip_keeps_every_kind() {
        let p = FilterPolicy::any()
            .with("a", Condition::Equals(vec!["1".into(), "2".into()]))
            .with("b", Condition::Prefix("pre".into()))
            .with("c", Condition::AnythingBut(vec!["x".into()]))
            .with("d", Condition::Exists(false));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"a":["1","2"],"b":{"prefix":"pre"},"c":{"anything_but":["x"]},"d":{"exists":false}}"#
        );
        assert_eq!(serde_json::from_str::<FilterPolicy>(&json).unwrap(), p);
    }

    #[test]
    fn toml_form_reads_the_same() {
        #[derive(Deserialize)]
        struct Route {
            filter: FilterPolicy,
        }
        let route: Route = toml::from_str(
            r#"
            [filter]
            type = ["bounce", "spamreport"]
            provider = { prefix = "send" }
            alert_id = { exists = true }
            "#,
        )
        .unwrap();
        assert_eq!(
            route.filter,
            FilterPolicy::any()
                .with(
                    "type",
                    Condition::Equals(vec!["bounce".into(), "spamreport".into()])
                )
                .with("provider", Condition::Prefix("send".into()))
                .with("alert_id", Condition::Exists(true))
        );
    }

    #[test]
    fn malformed_conditions_are_rejected_with_the_reason() {
        let cases = [
            (
                r#"{"t": {"prefixx": "a"}}"#,
                "unknown condition \"prefixx\"",
            ),
            (
                r#"{"t": {"prefix": "a", "exists": true}}"#,
                "exactly one operator",
            ),
            (r#"{"t": {}}"#, "empty condition"),
            (r#"{"t": []}"#, "empty list"),
            (r#"{"t": [1]}"#, "invalid type"),
            (r#"{"t": {"exists": "yes"}}"#, "invalid type"),
            (r#"{"t": 5}"#, "a list of values"),
        ];
        for (json, needle) in cases {
            let err = serde_json::from_str::<FilterPolicy>(json).unwrap_err();
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }
}
