//! SparkPost webhook bodies: a JSON array of `{"msys": {"<class>": {...}}}`
//! where the class is `message_event`, `track_event`, `gen_event`,
//! `unsubscribe_event`, ... and the event's `type` says what happened.
//! Custom data travels in `rcpt_meta`, tags in `rcpt_tags`.

use serde_json::{Map, Value};

use super::{event_objects, kind_of, parse_json, Fields, ParseError};
use crate::email_event::{BounceClass, EmailEvent, EventType, Provider};

/// What a SparkPost request carried.
#[derive(Debug, Clone, PartialEq)]
pub enum SparkPostBatch {
    /// The request SparkPost sends when a webhook is created or tested
    /// (`[{"msys": {}}]`): answer 2xx, store nothing.
    Ping,
    Events(Vec<EmailEvent>),
}

/// Parses a SparkPost batch.
pub fn parse(body: &[u8]) -> Result<SparkPostBatch, ParseError> {
    let doc = parse_json(body)?;
    let Value::Array(items) = &doc else {
        return Err(ParseError::BodyShape {
            expected: "a JSON array of events",
            found: kind_of(&doc),
        });
    };
    if let [only] = items.as_slice() {
        if only
            .get("msys")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            return Ok(SparkPostBatch::Ping);
        }
    }
    event_objects(items)
        .map(|item| item.and_then(|(index, obj)| event(index, obj)))
        .collect::<Result<_, _>>()
        .map(SparkPostBatch::Events)
}

/// SparkPost's event `type` → the common type.
pub fn event_type(name: &str) -> EventType {
    match name {
        "injection" => EventType::Processed,
        "delivery" => EventType::Delivered,
        "delay" => EventType::Deferred,
        "bounce" | "out_of_band" => EventType::Bounce,
        "policy_rejection" | "generation_failure" | "generation_rejection" => EventType::Dropped,
        "open" | "initial_open" | "amp_open" | "amp_initial_open" => EventType::Open,
        "click" | "amp_click" => EventType::Click,
        "spam_complaint" => EventType::SpamReport,
        "list_unsubscribe" | "link_unsubscribe" => EventType::Unsubscribe,
        other => EventType::from_name(other),
    }
}

fn event(index: usize, item: &Map<String, Value>) -> Result<EmailEvent, ParseError> {
    let outer = Fields::new(index, item);
    let msys = outer
        .opt_object("msys")?
        .ok_or_else(|| outer.missing("msys"))?;
    let (class, inner) = match msys.iter().collect::<Vec<_>>().as_slice() {
        [] => {
            return Err(outer.invalid(
                "msys",
                "is empty; expected one event class such as `message_event`",
            ))
        }
        [(class, inner)] => (class.as_str(), *inner),
        several => {
            let names: Vec<&str> = several.iter().map(|(k, _)| k.as_str()).collect();
            return Err(outer.invalid(
                "msys",
                format!(
                    "has {} event classes ({}); expected one",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
    };
    let path = format!("msys.{class}");
    let inner = inner.as_object().ok_or_else(|| ParseError::WrongType {
        index,
        field: path.clone(),
        expected: "an object",
        found: kind_of(inner),
    })?;
    let f = Fields::nested(index, path, inner);
    let event_type = event_type(f.str("type")?);
    let bounce = if event_type == EventType::Bounce {
        bounce_class(&f)?
    } else {
        None
    };
    Ok(EmailEvent {
        provider: Provider::SparkPost,
        provider_event_id: f.str("event_id")?.to_owned(),
        address: f.address("rcpt_to")?,
        occurred_at: f.unix_seconds("timestamp", true)?,
        message_id: f.opt_str("message_id")?.map(str::to_owned),
        bounce,
        tags: f.string_list("rcpt_tags")?,
        custom_args: f.opt_object("rcpt_meta")?.cloned().unwrap_or_default(),
        raw: Value::Object(inner.clone()),
        event_type,
    })
}

/// SparkPost's bounce classification: classes 10, 30 and 90 are hard;
/// 20–24, 40, 60, 70 and 100 soft. Blocks, admin and undetermined classes
/// say nothing about the address itself, so they stay unclassified.
fn bounce_class(f: &Fields<'_>) -> Result<Option<BounceClass>, ParseError> {
    let code = match f.get("bounce_class") {
        None => return Ok(None),
        Some(Value::String(s)) => s
            .parse::<u32>()
            .map_err(|_| f.invalid("bounce_class", format!("must be a number, found {s:?}")))?,
        Some(Value::Number(n)) => {
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    f.invalid("bounce_class", format!("must be a class number, found {n}"))
                })?
        }
        Some(other) => return Err(f.wrong_type("bounce_class", "a class number", other)),
    };
    Ok(match code {
        10 | 30 | 90 => Some(BounceClass::Hard),
        20..=24 | 40 | 60 | 70 | 100 => Some(BounceClass::Soft),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use serde_json::json;

    fn message_event(kind: &str, extra: Value) -> Value {
        let mut inner = json!({
            "type": kind,
            "event_id": "sp-1",
            "message_id": "spmsg-1",
            "rcpt_to": "m1@example.com",
            "rcpt_meta": {"customer_id": "c-2001", "member_id": "m-1"},
            "rcpt_tags": ["brand-alert"],
            "timestamp": "1795000101",
        });
        for (k, v) in extra.as_object().unwrap() {
            inner[k] = v.clone();
        }
        json!({"msys": {"message_event": inner}})
    }

    fn events(v: Value) -> Vec<EmailEvent> {
        match parse(&serde_json::to_vec(&v).unwrap()).unwrap() {
            SparkPostBatch::Events(events) => events,
            SparkPostBatch::Ping => panic!("not a ping"),
        }
    }

    #[test]
    fn parses_a_message_event() {
        let e = &events(json!([message_event("delivery", json!({}))]))[0];
        assert_eq!(e.provider, Provider::SparkPost);
        assert_eq!(e.provider_event_id, "sp-1");
        assert_eq!(e.event_type, EventType::Delivered);
        assert_eq!(e.address, "m1@example.com");
        assert_eq!(e.occurred_at, Timestamp(1_795_000_101_000));
        assert_eq!(e.message_id.as_deref(), Some("spmsg-1"));
        assert_eq!(e.tags, vec!["brand-alert"]);
        assert_eq!(e.custom_args["customer_id"], "c-2001");
        assert_eq!(e.raw["type"], "delivery");
    }

    #[test]
    fn numeric_timestamps_are_accepted_too() {
        let e = &events(json!([message_event(
            "delivery",
            json!({"timestamp": 1_795_000_101})
        )]))[0];
        assert_eq!(e.occurred_at, Timestamp(1_795_000_101_000));
    }

    #[test]
    fn maps_every_sparkpost_type() {
        let cases = [
            ("injection", EventType::Processed),
            ("delivery", EventType::Delivered),
            ("delay", EventType::Deferred),
            ("bounce", EventType::Bounce),
            ("out_of_band", EventType::Bounce),
            ("policy_rejection", EventType::Dropped),
            ("generation_failure", EventType::Dropped),
            ("generation_rejection", EventType::Dropped),
            ("open", EventType::Open),
            ("initial_open", EventType::Open),
            ("amp_open", EventType::Open),
            ("click", EventType::Click),
            ("amp_click", EventType::Click),
            ("spam_complaint", EventType::SpamReport),
            ("list_unsubscribe", EventType::Unsubscribe),
            ("link_unsubscribe", EventType::Unsubscribe),
            ("relay_delivery", EventType::Other("relay_delivery".into())),
        ];
        for (name, expected) in cases {
            assert_eq!(
                events(json!([message_event(name, json!({}))]))[0].event_type,
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn classifies_bounces() {
        let cases = [
            (json!("10"), Some(BounceClass::Hard)),
            (json!(30), Some(BounceClass::Hard)),
            (json!("90"), Some(BounceClass::Hard)),
            (json!("21"), Some(BounceClass::Soft)),
            (json!("100"), Some(BounceClass::Soft)),
            (json!("50"), None),
            (json!("1"), None),
        ];
        for (class, expected) in cases {
            let e = &events(json!([message_event(
                "bounce",
                json!({"bounce_class": class})
            )]))[0];
            assert_eq!(e.bounce, expected, "{class}");
        }
        let err = parse(
            &serde_json::to_vec(&json!([message_event(
                "bounce",
                json!({"bounce_class": "ten"})
            )]))
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 0: field `msys.message_event.bounce_class` must be a number, found \"ten\""
        );
    }

    #[test]
    fn detects_the_ping() {
        assert_eq!(parse(br#"[{"msys": {}}]"#).unwrap(), SparkPostBatch::Ping);
    }

    #[test]
    fn empty_msys_inside_a_real_batch_is_an_error() {
        let batch = json!([message_event("delivery", json!({})), {"msys": {}}]);
        let err = parse(&serde_json::to_vec(&batch).unwrap()).unwrap_err();
        assert_eq!(err.index(), Some(1));
        assert!(err.to_string().contains("field `msys` is empty"), "{err}");
    }

    #[test]
    fn rejects_wrong_shapes() {
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"msys": {}}"#,
                "body must be a JSON array of events, found an object",
            ),
            (br#"[1]"#, "event 0 must be a JSON object, found a number"),
            (br#"[{"foo": 1}]"#, "event 0: field `msys` is missing"),
            (
                br#"[{"msys": []}]"#,
                "event 0: field `msys` must be an object, found an array",
            ),
            (
                br#"[{"msys": {"message_event": 3}}]"#,
                "event 0: field `msys.message_event` must be an object, found a number",
            ),
            (
                br#"[{"msys": {"a_event": {}, "b_event": {}}}]"#,
                "event 0: field `msys` has 2 event classes (a_event, b_event); expected one",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(parse(body).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn names_nested_fields_at_fault() {
        let mut e = message_event("open", json!({}));
        e["msys"]["message_event"]
            .as_object_mut()
            .unwrap()
            .remove("rcpt_to");
        let err = parse(&serde_json::to_vec(&json!([e])).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 0: field `msys.message_event.rcpt_to` is missing"
        );
        assert_eq!(err.field(), Some("msys.message_event.rcpt_to"));

        let e = message_event("open", json!({"rcpt_meta": "c-1"}));
        let err = parse(&serde_json::to_vec(&json!([e])).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 0: field `msys.message_event.rcpt_meta` must be an object, found a string"
        );
    }
}
