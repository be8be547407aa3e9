//! Events from in-house senders (`POST /webhooks/generic/{source}`): one
//! event object or an array of them, already in Herald's vocabulary.
//!
//! ```json
//! {"id": "evt_1", "type": "bounce", "email": "a@example.com",
//!  "occurred_at": "2026-11-23T09:00:00Z", "message_id": "m-1",
//!  "bounce": "hard", "tags": ["brand-alert"], "custom_args": {"customer_id": "c-1"}}
//! ```
//!
//! Because Herald owns this format it is strict where the provider formats
//! are lenient: `type` must be a common event type, `occurred_at` an RFC 3339
//! UTC time (`Z`) or Unix seconds, and unknown fields are refused, so a typo
//! in a sender shows up at its first request instead of as missing data.

use std::time::UNIX_EPOCH;

use serde_json::{Map, Value};

use super::{event_objects, kind_of, parse_json, seconds_to_timestamp, Fields, ParseError};
use crate::email_event::{BounceClass, EmailEvent, EventType, Provider, SourceName};
use crate::time::{duration_millis, Timestamp};

const FIELDS: &[&str] = &[
    "id",
    "type",
    "email",
    "occurred_at",
    "message_id",
    "bounce",
    "tags",
    "custom_args",
];

/// Parses the body of a generic webhook from `source`.
pub fn parse(source: &SourceName, body: &[u8]) -> Result<Vec<EmailEvent>, ParseError> {
    let doc = parse_json(body)?;
    let items = match doc {
        Value::Array(items) => items,
        Value::Object(_) => vec![doc],
        other => {
            return Err(ParseError::BodyShape {
                expected: "a JSON event object or an array of them",
                found: kind_of(&other),
            })
        }
    };
    event_objects(&items)
        .map(|item| item.and_then(|(index, obj)| event(source, index, obj)))
        .collect()
}

fn event(
    source: &SourceName,
    index: usize,
    obj: &Map<String, Value>,
) -> Result<EmailEvent, ParseError> {
    let f = Fields::new(index, obj);
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(f.invalid(
            unknown,
            format!("is not allowed; the fields are {}", FIELDS.join(", ")),
        ));
    }
    let event_type: EventType = f
        .str("type")?
        .parse()
        .map_err(|e| f.invalid("type", format!("is not valid: {e}")))?;
    let bounce = match f.opt_str("bounce")? {
        None => None,
        Some(_) if event_type != EventType::Bounce => {
            return Err(f.invalid(
                "bounce",
                format!("is only allowed on bounce events, not {event_type}"),
            ))
        }
        Some(class) => Some(
            class
                .parse::<BounceClass>()
                .map_err(|e| f.invalid("bounce", e))?,
        ),
    };
    Ok(EmailEvent {
        provider: Provider::Generic(source.clone()),
        provider_event_id: f.str("id")?.to_owned(),
        address: f.address("email")?,
        occurred_at: occurred_at(&f)?,
        message_id: f.opt_str("message_id")?.map(str::to_owned),
        bounce,
        tags: f.string_list("tags")?,
        custom_args: f.opt_object("custom_args")?.cloned().unwrap_or_default(),
        raw: Value::Object(obj.clone()),
        event_type,
    })
}

fn occurred_at(f: &Fields<'_>) -> Result<Timestamp, ParseError> {
    const FIELD: &str = "occurred_at";
    match f.required(FIELD)? {
        Value::String(s) => {
            let time = humantime::parse_rfc3339(s).map_err(|e| {
                f.invalid(
                    FIELD,
                    format!("is not an RFC 3339 UTC time like 2026-11-23T09:00:00Z: {e}"),
                )
            })?;
            let since = time
                .duration_since(UNIX_EPOCH)
                .map_err(|_| f.invalid(FIELD, format!("is before 1970: {s:?}")))?;
            Ok(Timestamp(duration_millis(since)))
        }
        Value::Number(n) => n
            .as_i64()
            .and_then(seconds_to_timestamp)
            .ok_or_else(|| f.invalid(FIELD, format!("is not a Unix time in seconds: {n}"))),
        other => Err(f.wrong_type(FIELD, "an RFC 3339 string or Unix seconds", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source() -> SourceName {
        SourceName::parse("crm").unwrap()
    }

    fn event_json(extra: Value) -> Value {
        let mut e = json!({
            "id": "evt_1",
            "type": "delivered",
            "email": "a@example.com",
            "occurred_at": "2026-11-23T09:00:00.250Z",
            "custom_args": {"customer_id": "c-1"},
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    }

    fn parse_value(v: Value) -> Result<Vec<EmailEvent>, ParseError> {
        parse(&source(), &serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn parses_a_single_object_and_an_array() {
        let one = parse_value(event_json(json!({}))).unwrap();
        assert_eq!(one.len(), 1);
        let e = &one[0];
        assert_eq!(e.provider, Provider::Generic(source()));
        assert_eq!(e.provider_event_id, "evt_1");
        assert_eq!(e.event_type, EventType::Delivered);
        assert_eq!(e.occurred_at, Timestamp(1_795_424_400_250));
        assert_eq!(e.custom_args["customer_id"], "c-1");
        assert_eq!(e.message_id, None);

        let many = parse_value(json!([
            event_json(json!({})),
            event_json(json!({"id": "evt_2"}))
        ]))
        .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[1].provider_event_id, "evt_2");
        assert_eq!(parse(&source(), b"[]").unwrap(), Vec::new());
    }

    #[test]
    fn accepts_unix_seconds() {
        let e = &parse_value(event_json(json!({"occurred_at": 1_795_000_000}))).unwrap()[0];
        assert_eq!(e.occurred_at, Timestamp(1_795_000_000_000));
    }

    #[test]
    fn bounce_class_only_on_bounces() {
        let e = &parse_value(event_json(json!({"type": "bounce", "bounce": "soft"}))).unwrap()[0];
        assert_eq!(e.bounce, Some(BounceClass::Soft));
        let err = parse_value(event_json(json!({"bounce": "hard"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 0: field `bounce` is only allowed on bounce events, not delivered"
        );
        let err =
            parse_value(event_json(json!({"type": "bounce", "bounce": "permanent"}))).unwrap_err();
        assert!(err.to_string().contains("expected hard or soft"), "{err}");
    }

    #[test]
    fn is_strict_about_its_own_format() {
        let cases = [
            (event_json(json!({"type": "bounced"})), "event 0: field `type` is not valid: unknown event type \"bounced\""),
            (event_json(json!({"custom_arg": {}})), "event 0: field `custom_arg` is not allowed"),
            (event_json(json!({"occurred_at": "2026-11-23 09:00"})), "event 0: field `occurred_at` is not an RFC 3339 UTC time"),
            (event_json(json!({"occurred_at": true})), "event 0: field `occurred_at` must be an RFC 3339 string or Unix seconds, found a boolean"),
            (event_json(json!({"occurred_at": -5})), "event 0: field `occurred_at` is not a Unix time in seconds: -5"),
            (event_json(json!({"custom_args": ["x"]})), "event 0: field `custom_args` must be an object, found an array"),
            (event_json(json!({"email": "x"})), "event 0: field `email` is not an email address: \"x\""),
        ];
        for (event, message) in cases {
            let err = parse_value(event).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
        }
        let mut no_id = event_json(json!({}));
        no_id.as_object_mut().unwrap().remove("id");
        let err = parse_value(json!([event_json(json!({})), no_id])).unwrap_err();
        assert_eq!(err.to_string(), "event 1: field `id` is missing");
    }

    #[test]
    fn rejects_other_bodies() {
        let err = parse(&source(), b"\"hello\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "body must be a JSON event object or an array of them, found a string"
        );
        assert_eq!(parse(&source(), b"[7]").unwrap_err().code(), "wrong_shape");
        assert_eq!(parse(&source(), b"{").unwrap_err().code(), "invalid_json");
    }
}
