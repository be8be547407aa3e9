//! Parsers from each provider's webhook body (raw bytes, already verified)
//! to [`EmailEvent`](crate::email_event::EmailEvent)s.
//!
//! A batch parses whole or not at all: the first bad event fails it with an
//! error naming the event's index and the field, and the receiver answers 4xx
//! so nothing of a half-understood batch is stored. Duplicate events inside a
//! batch are kept; deduplication on the provider event id is the store's job.

pub mod generic;
pub mod sendgrid;
pub mod sparkpost;

use serde_json::{Map, Value};

use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("body must be {expected}, found {found}")]
    BodyShape {
        expected: &'static str,
        found: &'static str,
    },
    #[error("event {index} must be a JSON object, found {found}")]
    EventShape { index: usize, found: &'static str },
    #[error("event {index}: field `{field}` is missing")]
    MissingField { index: usize, field: String },
    #[error("event {index}: field `{field}` must be {expected}, found {found}")]
    WrongType {
        index: usize,
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("event {index}: field `{field}` {problem}")]
    InvalidValue {
        index: usize,
        field: String,
        problem: String,
    },
}

impl ParseError {
    /// A stable machine-readable code for API error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::InvalidJson { .. } => "invalid_json",
            ParseError::BodyShape { .. } | ParseError::EventShape { .. } => "wrong_shape",
            ParseError::MissingField { .. } => "missing_field",
            ParseError::WrongType { .. } => "wrong_type",
            ParseError::InvalidValue { .. } => "invalid_value",
        }
    }

    /// The index of the offending event in the batch, when one is to blame.
    pub fn index(&self) -> Option<usize> {
        match self {
            ParseError::InvalidJson { .. } | ParseError::BodyShape { .. } => None,
            ParseError::EventShape { index, .. }
            | ParseError::MissingField { index, .. }
            | ParseError::WrongType { index, .. }
            | ParseError::InvalidValue { index, .. } => Some(*index),
        }
    }

    /// The offending field, dotted for nested ones (`msys.message_event.rcpt_to`).
    pub fn field(&self) -> Option<&str> {
        match self {
            ParseError::MissingField { field, .. }
            | ParseError::WrongType { field, .. }
            | ParseError::InvalidValue { field, .. } => Some(field),
            _ => None,
        }
    }
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ParseError> {
    serde_json::from_slice(body).map_err(|e| ParseError::InvalidJson {
        detail: e.to_string(),
    })
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The latest Unix time in seconds accepted (the last second of year 9999):
/// anything later is a unit mistake, not a date.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// Typed access to one event object's fields, producing errors that name the
/// event index and the field's full path.
pub(crate) struct Fields<'a> {
    index: usize,
    prefix: String,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(index: usize, obj: &'a Map<String, Value>) -> Self {
        Self {
            index,
            prefix: String::new(),
            obj,
        }
    }

    /// Fields of a nested object, named `<prefix>.<field>` in errors.
    pub(crate) fn nested(index: usize, prefix: String, obj: &'a Map<String, Value>) -> Self {
        Self { index, prefix, obj }
    }

    pub(crate) fn path(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    pub(crate) fn missing(&self, field: &str) -> ParseError {
        ParseError::MissingField {
            index: self.index,
            field: self.path(field),
        }
    }

    pub(crate) fn wrong_type(
        &self,
        field: &str,
        expected: &'static str,
        found: &Value,
    ) -> ParseError {
        ParseError::WrongType {
            index: self.index,
            field: self.path(field),
            expected,
            found: kind_of(found),
        }
    }

    pub(crate) fn invalid(&self, field: &str, problem: impl Into<String>) -> ParseError {
        ParseError::InvalidValue {
            index: self.index,
            field: self.path(field),
            problem: problem.into(),
        }
    }

    /// A present, non-null value.
    pub(crate) fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    pub(crate) fn required(&self, field: &str) -> Result<&'a Value, ParseError> {
        self.get(field).ok_or_else(|| self.missing(field))
    }

    /// A required, non-empty string.
    pub(crate) fn str(&self, field: &str) -> Result<&'a str, ParseError> {
        let value = self.required(field)?;
        let s = value
            .as_str()
            .ok_or_else(|| self.wrong_type(field, "a string", value))?;
        if s.is_empty() {
            return Err(self.invalid(field, "is empty"));
        }
        Ok(s)
    }

    /// A string if present; absent, null and empty all read as `None`.
    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ParseError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    pub(crate) fn opt_object(
        &self,
        field: &str,
    ) -> Result<Option<&'a Map<String, Value>>, ParseError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(self.wrong_type(field, "an object", other)),
        }
    }

    /// An array of strings, or a single string standing for a one-element
    /// array (SendGrid sends `category` both ways).
    pub(crate) fn string_list(&self, field: &str) -> Result<Vec<String>, ParseError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.wrong_type(&format!("{field}[{i}]"), "a string", item))
                })
                .collect(),
            Some(other) => Err(self.wrong_type(field, "an array of strings", other)),
        }
    }

    /// A recipient address: one `@` between a non-empty local part and
    /// domain, no whitespace, at most 254 characters. Deliverability is the
    /// provider's business; this only refuses what cannot be an address.
    pub(crate) fn address(&self, field: &str) -> Result<String, ParseError> {
        let s = self.str(field)?;
        let plausible = s.len() <= 254
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && s.rsplit_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if plausible {
            Ok(s.to_owned())
        } else {
            Err(self.invalid(field, format!("is not an email address: {s:?}")))
        }
    }

    /// Unix time in whole seconds, as a JSON integer or, when
    /// `allow_string`, a string of digits (SparkPost's form).
    pub(crate) fn unix_seconds(
        &self,
        field: &str,
        allow_string: bool,
    ) -> Result<Timestamp, ParseError> {
        let value = self.required(field)?;
        let expected = if allow_string {
            "Unix seconds (an integer or a string of digits)"
        } else {
            "Unix seconds (an integer)"
        };
        let seconds = match value {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| self.invalid(field, format!("must be {expected}, found {n}")))?,
            Value::String(s) if allow_string => s
                .parse::<i64>()
                .map_err(|_| self.invalid(field, format!("must be {expected}, found {s:?}")))?,
            other => return Err(self.wrong_type(field, expected, other)),
        };
        seconds_to_timestamp(seconds).ok_or_else(|| {
            self.invalid(
                field,
                format!("is out of range: {seconds} is not a Unix time in seconds"),
            )
        })
    }
}

pub(crate) fn seconds_to_timestamp(seconds: i64) -> Option<Timestamp> {
    (0..=MAX_UNIX_SECONDS)
        .contains(&seconds)
        .then(|| Timestamp(seconds * 1000))
}

/// The objects of a top-level JSON array, each checked to be an object.
pub(crate) fn event_objects(
    items: &[Value],
) -> impl Iterator<Item = Result<(usize, &Map<String, Value>), ParseError>> {
    items.iter().enumerate().map(|(index, item)| {
        item.as_object()
            .map(|obj| (index, obj))
            .ok_or(ParseError::EventShape {
                index,
                found: kind_of(item),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn errors_name_index_and_field() {
        let o = obj(json!({"email": 5, "blank": "", "ts": "12"}));
        let f = Fields::new(3, &o);
        let err = f.str("missing").unwrap_err();
        assert_eq!(err.to_string(), "event 3: field `missing` is missing");
        assert_eq!(err.code(), "missing_field");
        assert_eq!(err.index(), Some(3));
        assert_eq!(err.field(), Some("missing"));
        assert_eq!(
            f.str("email").unwrap_err().to_string(),
            "event 3: field `email` must be a string, found a number"
        );
        assert_eq!(
            f.str("blank").unwrap_err().to_string(),
            "event 3: field `blank` is empty"
        );
        assert_eq!(f.opt_str("blank").unwrap(), None);
        assert!(f.unix_seconds("ts", false).is_err());
        assert_eq!(f.unix_seconds("ts", true).unwrap(), Timestamp(12_000));
    }

    #[test]
    fn nested_fields_are_named_by_path() {
        let o = obj(json!({}));
        let f = Fields::nested(0, "msys.track_event".into(), &o);
        assert_eq!(
            f.str("rcpt_to").unwrap_err().to_string(),
            "event 0: field `msys.track_event.rcpt_to` is missing"
        );
    }

    #[test]
    fn addresses_must_be_plausible() {
        let o = obj(json!({
            "ok": "a.b+c@example.com",
            "none": "example.com",
            "no_local": "@example.com",
            "no_domain": "a@",
            "space": "a b@example.com",
            "long": format!("{}@example.com", "a".repeat(250)),
        }));
        let f = Fields::new(0, &o);
        assert_eq!(f.address("ok").unwrap(), "a.b+c@example.com");
        for bad in ["none", "no_local", "no_domain", "space", "long"] {
            let err = f.address(bad).unwrap_err();
            assert!(err.to_string().contains("is not an email address"), "{err}");
        }
    }

    #[test]
    fn unix_seconds_are_range_checked() {
        let o = obj(json!({
            "neg": -1, "float": 1.5, "huge": 999_999_999_999_i64, "text": "soon", "ok": 1_795_000_001
        }));
        let f = Fields::new(1, &o);
        assert_eq!(
            f.unix_seconds("ok", false).unwrap(),
            Timestamp(1_795_000_001_000)
        );
        for bad in ["neg", "float", "huge"] {
            assert_eq!(
                f.unix_seconds(bad, true).unwrap_err().code(),
                "invalid_value"
            );
        }
        assert_eq!(
            f.unix_seconds("text", false).unwrap_err().code(),
            "wrong_type"
        );
        assert_eq!(
            f.unix_seconds("text", true).unwrap_err().code(),
            "invalid_value"
        );
    }

    #[test]
    fn string_lists_accept_a_single_string() {
        let o = obj(json!({"one": "a", "many": ["a", "b"], "bad": ["a", 1], "obj": {}}));
        let f = Fields::new(0, &o);
        assert_eq!(f.string_list("one").unwrap(), vec!["a"]);
        assert_eq!(f.string_list("many").unwrap(), vec!["a", "b"]);
        assert_eq!(f.string_list("absent").unwrap(), Vec::<String>::new());
        assert_eq!(
            f.string_list("bad").unwrap_err().to_string(),
            "event 0: field `bad[1]` must be a string, found a number"
        );
        assert_eq!(f.string_list("obj").unwrap_err().code(), "wrong_type");
    }

    #[test]
    fn invalid_json_reports_position() {
        let err = parse_json(b"[{\"a\":").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(err.index(), None);
    }
}
