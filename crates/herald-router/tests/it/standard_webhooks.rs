//! Standard Webhooks HMAC: the spec's published vector, then sign/verify
//! round trips and the ways a request goes wrong.

use std::time::Duration;

use bytes::Bytes;
use herald_core::email_event::{EventType, Provider, SourceName};
use herald_core::providers::generic;
use herald_core::Timestamp;
use herald_router::verify::{
    StandardWebhooks, VerifyError, Webhook, WebhookSecret, WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER,
};
use http::{HeaderMap, HeaderValue};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SIGNED_AT: i64 = 1_795_000_000;
const NOW: Timestamp = Timestamp(SIGNED_AT * 1000);

fn hooks(secret: &str) -> StandardWebhooks {
    StandardWebhooks::new(WebhookSecret::parse(secret).unwrap())
}

fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(WEBHOOK_ID_HEADER, HeaderValue::from_str(id).unwrap());
    h.insert(
        WEBHOOK_TIMESTAMP_HEADER,
        HeaderValue::from_str(timestamp).unwrap(),
    );
    h.insert(
        WEBHOOK_SIGNATURE_HEADER,
        HeaderValue::from_str(signature).unwrap(),
    );
    h
}

fn check(
    v: &StandardWebhooks,
    headers: HeaderMap,
    body: &[u8],
    now: Timestamp,
) -> Result<Bytes, VerifyError> {
    Webhook::new(headers, Bytes::copy_from_slice(body))
        .verify(v, now)
        .map(|w| w.into_parts().1)
}

const BODY: &[u8] = br#"{"id":"evt_1","type":"bounce","email":"a@example.com","occurred_at":1795000000,"bounce":"hard","custom_args":{"customer_id":"c-9"}}"#;

fn signed(v: &StandardWebhooks, id: &str, at: i64, body: &[u8]) -> HeaderMap {
    headers(id, &at.to_string(), &v.sign(id, at, body))
}

#[test]
fn published_test_vector() {
    let v = hooks(SECRET);
    let body = br#"{"test": 2432232314}"#;
    let signature = v.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    let h = headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", &signature);
    assert!(check(&v, h, body, Timestamp(1_614_265_330_000)).is_ok());
}

#[test]
fn sign_verify_parse_round_trip() {
    let v = hooks(SECRET);
    let body = check(&v, signed(&v, "msg_1", SIGNED_AT, BODY), BODY, NOW).unwrap();
    let source = SourceName::parse("crm").unwrap();
    let events = generic::parse(&source, &body).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].provider, Provider::Generic(source));
    assert_eq!(events[0].event_type, EventType::Bounce);
    assert_eq!(events[0].custom_args["customer_id"], "c-9");
}

#[test]
fn tampered_body_id_or_timestamp_fail() {
    let v = hooks(SECRET);
    let h = signed(&v, "msg_1", SIGNED_AT, BODY);
    let mut tampered = BODY.to_vec();
    tampered[BODY.len() - 4] = b'8';
    assert_eq!(
        check(&v, h.clone(), &tampered, NOW),
        Err(VerifyError::BadSignature)
    );

    let mut other_id = h.clone();
    other_id.insert(WEBHOOK_ID_HEADER, HeaderValue::from_static("msg_2"));
    assert_eq!(
        check(&v, other_id, BODY, NOW),
        Err(VerifyError::BadSignature)
    );

    let mut other_time = h;
    other_time.insert(
        WEBHOOK_TIMESTAMP_HEADER,
        HeaderValue::from_str(&(SIGNED_AT + 1).to_string()).unwrap(),
    );
    assert_eq!(
        check(&v, other_time, BODY, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn wrong_secret_fails() {
    let sender = hooks(SECRET);
    let receiver = StandardWebhooks::new(WebhookSecret::from_bytes(vec![42; 32]).unwrap());
    assert_eq!(
        check(
            &receiver,
            signed(&sender, "msg_1", SIGNED_AT, BODY),
            BODY,
            NOW
        ),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn timestamps_outside_the_tolerance_fail() {
    let v = hooks(SECRET);
    let at = |offset: i64| signed(&v, "msg_1", SIGNED_AT + offset, BODY);
    assert!(check(&v, at(-300), BODY, NOW).is_ok());
    assert!(check(&v, at(300), BODY, NOW).is_ok());
    assert_eq!(
        check(&v, at(-301), BODY, NOW).unwrap_err().code(),
        "stale_timestamp"
    );
    assert_eq!(
        check(&v, at(-86_400), BODY, NOW).unwrap_err().code(),
        "stale_timestamp"
    );
    assert_eq!(
        check(&v, at(301), BODY, NOW).unwrap_err().code(),
        "future_timestamp"
    );

    let lenient = hooks(SECRET).with_tolerance(Duration::from_secs(3600));
    assert!(check(&lenient, at(-3600), BODY, NOW).is_ok());
    assert_eq!(
        check(&lenient, at(-3601), BODY, NOW).unwrap_err().code(),
        "stale_timestamp"
    );
}

#[test]
fn any_matching_v1_signature_in_the_list_passes() {
    let v = hooks(SECRET);
    let good = v.sign("msg_1", SIGNED_AT, BODY);
    let old_secret = StandardWebhooks::new(WebhookSecret::from_bytes(vec![1; 24]).unwrap());
    let stale = old_secret.sign("msg_1", SIGNED_AT, BODY);
    let ts = SIGNED_AT.to_string();
    for list in [
        format!("{stale} {good}"),
        format!("{good} {stale}"),
        format!("v1a,c29tZXRoaW5n {good}"),
        format!("v1,not-base64!! {good}"),
        format!("  {good}  "),
    ] {
        assert!(
            check(&v, headers("msg_1", &ts, &list), BODY, NOW).is_ok(),
            "{list}"
        );
    }
    assert_eq!(
        check(
            &v,
            headers("msg_1", &ts, &format!("{stale} v1,AAAA")),
            BODY,
            NOW
        ),
        Err(VerifyError::BadSignature)
    );
    let only_other_versions =
        check(&v, headers("msg_1", &ts, "v1a,AAAA v2,BBBB"), BODY, NOW).unwrap_err();
    assert_eq!(only_other_versions.code(), "malformed_signature");
    assert!(
        only_other_versions.to_string().contains("no v1 signature"),
        "{only_other_versions}"
    );
    let bare = good.trim_start_matches("v1,").to_owned();
    assert_eq!(
        check(&v, headers("msg_1", &ts, &bare), BODY, NOW)
            .unwrap_err()
            .code(),
        "malformed_signature"
    );
}

#[test]
fn missing_and_malformed_headers_have_codes() {
    let v = hooks(SECRET);
    let full = signed(&v, "msg_1", SIGNED_AT, BODY);
    for (name, code) in [
        (WEBHOOK_ID_HEADER, "missing_webhook_id"),
        (WEBHOOK_TIMESTAMP_HEADER, "missing_timestamp"),
        (WEBHOOK_SIGNATURE_HEADER, "missing_signature"),
    ] {
        let mut h = full.clone();
        h.remove(name);
        let err = check(&v, h, BODY, NOW).unwrap_err();
        assert_eq!(err.code(), code);
        assert!(err.to_string().contains(name), "{err}");
    }
    let mut h = full;
    h.insert(
        WEBHOOK_TIMESTAMP_HEADER,
        HeaderValue::from_static("2026-11-23T09:00:00Z"),
    );
    assert_eq!(check(&v, h, BODY, NOW).unwrap_err().code(), "bad_timestamp");
}
