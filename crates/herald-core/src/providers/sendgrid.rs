//! SendGrid Event Webhook bodies: a JSON array of flat event objects.
//!
//! SendGrid copies a message's custom args into each of its events as
//! top-level keys, so every key that is not one of SendGrid's own is kept as
//! a custom arg.

use serde_json::{Map, Value};

use super::{kind_of, parse_json, Fields, ParseError};
use crate::email_event::{BounceClass, EmailEvent, EventType, Provider};

/// SendGrid's own event keys (documented event fields); everything else on
/// an event is a custom arg.
const STANDARD_KEYS: &[&str] = &[
    "asm_group_id",
    "attempt",
    "bounce_classification",
    "category",
    "cert_err",
    "email",
    "event",
    "ip",
    "marketing_campaign_id",
    "marketing_campaign_name",
    "marketing_campaign_split_id",
    "marketing_campaign_version",
    "mc_auto_id",
    "mc_pod_id",
    "mc_stats",
    "newsletter",
    "phase_id",
    "pool",
    "reason",
    "response",
    "send_at",
    "sg_content_type",
    "sg_event_id",
    "sg_machine_open",
    "sg_message_id",
    "sg_template_id",
    "sg_template_name",
    "sg_user_id",
    "singlesend_id",
    "singlesend_name",
    "smtp-id",
    "status",
    "template_hash",
    "template_id",
    "template_version_id",
    "timestamp",
    "tls",
    "type",
    "url",
    "url_offset",
    "useragent",
    "variation_id",
];

/// Parses a SendGrid event batch. Each event object is moved into its
/// event's `raw`, not copied: a batch holds thousands of them.
pub fn parse(body: &[u8]) -> Result<Vec<EmailEvent>, ParseError> {
    let items = match parse_json(body)? {
        Value::Array(items) => items,
        doc => {
            return Err(ParseError::BodyShape {
                expected: "a JSON array of events",
                found: kind_of(&doc),
            })
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(obj) => event(index, obj),
            other => Err(ParseError::EventShape {
                index,
                found: kind_of(&other),
            }),
        })
        .collect()
}

/// SendGrid's event name → the common type.
pub fn event_type(name: &str) -> EventType {
    match name {
        "processed" => EventType::Processed,
        "delivered" => EventType::Delivered,
        "deferred" => EventType::Deferred,
        "bounce" => EventType::Bounce,
        "dropped" => EventType::Dropped,
        "open" => EventType::Open,
        "click" => EventType::Click,
        "spamreport" => EventType::SpamReport,
        "unsubscribe" | "group_unsubscribe" => EventType::Unsubscribe,
        other => EventType::from_name(other),
    }
}

fn event(index: usize, obj: Map<String, Value>) -> Result<EmailEvent, ParseError> {
    let f = Fields::new(index, &obj);
    let event_type = event_type(f.str("event")?);
    let bounce = if event_type == EventType::Bounce {
        bounce_class(&f)?
    } else {
        None
    };
    let event = EmailEvent {
        provider: Provider::SendGrid,
        provider_event_id: f.str("sg_event_id")?.to_owned(),
        address: f.address("email")?,
        occurred_at: f.unix_seconds("timestamp", false)?,
        message_id: f.opt_str("sg_message_id")?.map(message_id),
        bounce,
        tags: f.string_list("category")?,
        custom_args: obj
            .iter()
            .filter(|(key, _)| !STANDARD_KEYS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        raw: Value::Null,
        event_type,
    };
    Ok(EmailEvent {
        raw: Value::Object(obj),
        ..event
    })
}

/// `sg_message_id` is the `X-Message-Id` SendGrid returned at send time
/// followed by `.filter…` routing detail; the part the sender knows is kept.
fn message_id(sg_message_id: &str) -> String {
    match sg_message_id.find(".filter") {
        Some(end) if end > 0 => sg_message_id[..end].to_owned(),
        _ => sg_message_id.to_owned(),
    }
}

/// SendGrid marks a bounce `type: bounce` (permanent) or `type: blocked`
/// (temporary); without `type`, the SMTP enhanced status class decides.
fn bounce_class(f: &Fields<'_>) -> Result<Option<BounceClass>, ParseError> {
    match f.opt_str("type")? {
        Some("bounce") => return Ok(Some(BounceClass::Hard)),
        Some("blocked") => return Ok(Some(BounceClass::Soft)),
        _ => {}
    }
    Ok(match f.opt_str("status")?.and_then(|s| s.chars().next()) {
        Some('5') => Some(BounceClass::Hard),
        Some('4') => Some(BounceClass::Soft),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn one(extra: Value) -> Value {
        let mut e = json!({
            "email": "m1@example.com",
            "timestamp": 1_795_000_001,
            "smtp-id": "<a@b>",
            "event": "delivered",
            "category": ["brand-alert"],
            "sg_event_id": "ev-1",
            "sg_message_id": "msg-1.filter0001.123.0",
            "customer_id": "c-1",
            "alert_id": "alert-42",
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    }

    #[test]
    fn parses_common_fields_and_keeps_custom_args() {
        let events = parse(&body(json!([one(json!({"response": "250 OK"}))]))).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.provider, Provider::SendGrid);
        assert_eq!(e.provider_event_id, "ev-1");
        assert_eq!(e.event_type, EventType::Delivered);
        assert_eq!(e.address, "m1@example.com");
        assert_eq!(e.occurred_at, Timestamp(1_795_000_001_000));
        assert_eq!(e.message_id.as_deref(), Some("msg-1"));
        assert_eq!(e.tags, vec!["brand-alert"]);
        assert_eq!(e.bounce, None);
        let keys: Vec<&str> = e.custom_args.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["alert_id", "customer_id"]);
        assert_eq!(e.raw["response"], "250 OK");
        assert_eq!(e.raw["smtp-id"], "<a@b>");
    }

    #[test]
    fn maps_every_sendgrid_event_name() {
        let cases = [
            ("processed", EventType::Processed),
            ("delivered", EventType::Delivered),
            ("deferred", EventType::Deferred),
            ("bounce", EventType::Bounce),
            ("dropped", EventType::Dropped),
            ("open", EventType::Open),
            ("click", EventType::Click),
            ("spamreport", EventType::SpamReport),
            ("unsubscribe", EventType::Unsubscribe),
            ("group_unsubscribe", EventType::Unsubscribe),
            (
                "group_resubscribe",
                EventType::Other("group_resubscribe".into()),
            ),
        ];
        for (name, expected) in cases {
            let events = parse(&body(json!([one(json!({"event": name}))]))).unwrap();
            assert_eq!(events[0].event_type, expected, "{name}");
        }
    }

    #[test]
    fn derives_bounce_class_where_possible() {
        let cases = [
            (
                json!({"type": "bounce", "status": "4.0.0"}),
                Some(BounceClass::Hard),
            ),
            (
                json!({"type": "blocked", "status": "5.0.0"}),
                Some(BounceClass::Soft),
            ),
            (json!({"status": "5.1.1"}), Some(BounceClass::Hard)),
            (json!({"status": "4.2.2"}), Some(BounceClass::Soft)),
            (json!({}), None),
        ];
        for (extra, expected) in cases {
            let mut e = one(extra.clone());
            e["event"] = json!("bounce");
            let events = parse(&body(json!([e]))).unwrap();
            assert_eq!(events[0].bounce, expected, "{extra}");
        }
        let dropped = parse(&body(json!([one(
            json!({"event": "dropped", "status": "5.0.0"})
        )])));
        assert_eq!(dropped.unwrap()[0].bounce, None);
    }

    #[test]
    fn category_may_be_a_single_string() {
        let events = parse(&body(json!([one(json!({"category": "transactional"}))]))).unwrap();
        assert_eq!(events[0].tags, vec!["transactional"]);
    }

    #[test]
    fn message_id_without_filter_suffix_is_kept_whole() {
        let events = parse(&body(json!([one(json!({"sg_message_id": "plain-id"}))]))).unwrap();
        assert_eq!(events[0].message_id.as_deref(), Some("plain-id"));
        let mut e = one(json!({}));
        e.as_object_mut().unwrap().remove("sg_message_id");
        assert_eq!(parse(&body(json!([e]))).unwrap()[0].message_id, None);
    }

    #[test]
    fn empty_batch_is_empty() {
        assert_eq!(parse(b"[]").unwrap(), Vec::new());
    }

    #[test]
    fn duplicates_are_kept_for_the_store_to_dedupe() {
        let events = parse(&body(json!([one(json!({})), one(json!({}))]))).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].provider_event_id, events[1].provider_event_id);
    }

    #[test]
    fn rejects_bad_bodies_with_clear_errors() {
        let err = parse(b"{\"event\":\"open\"}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "body must be a JSON array of events, found an object"
        );
        assert_eq!(err.code(), "wrong_shape");

        let err = parse(b"[{\"email\":\"x@example.com\",").unwrap_err();
        assert_eq!(err.code(), "invalid_json");

        let err = parse(b"").unwrap_err();
        assert_eq!(err.code(), "invalid_json");

        let err = parse(&body(json!([one(json!({})), "nope"]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 1 must be a JSON object, found a string"
        );
    }

    #[test]
    fn names_the_event_and_field_at_fault() {
        let mut missing_email = one(json!({}));
        missing_email.as_object_mut().unwrap().remove("email");
        let batch = json!([
            one(json!({})),
            one(json!({})),
            one(json!({})),
            missing_email
        ]);
        let err = parse(&body(batch)).unwrap_err();
        assert_eq!(err.to_string(), "event 3: field `email` is missing");

        let cases = [
            (
                json!({"email": "nobody"}),
                "event 0: field `email` is not an email address: \"nobody\"",
            ),
            (
                json!({"timestamp": "1795000001"}),
                "event 0: field `timestamp` must be Unix seconds (an integer), found a string",
            ),
            (
                json!({"event": 7}),
                "event 0: field `event` must be a string, found a number",
            ),
            (
                json!({"sg_event_id": null}),
                "event 0: field `sg_event_id` is missing",
            ),
            (
                json!({"sg_event_id": ""}),
                "event 0: field `sg_event_id` is empty",
            ),
            (
                json!({"category": [1]}),
                "event 0: field `category[0]` must be a string, found a number",
            ),
        ];
        for (extra, message) in cases {
            let err = parse(&body(json!([one(extra)]))).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }
}
