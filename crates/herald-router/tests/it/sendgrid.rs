//! SendGrid Signed Event Webhook: every shared fixture case, then payloads
//! signed here with the fixtures' private key.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use herald_core::email_event::{BounceClass, EmailEvent, EventType, Provider};
use herald_core::providers::sendgrid;
use herald_core::Timestamp;
use herald_router::verify::{
    SendGridSigner, SendGridVerifier, Webhook, SENDGRID_SIGNATURE_HEADER, SENDGRID_TIMESTAMP_HEADER,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::fixtures;

/// The fixtures are signed at 1795000060; with a replay window the receiver's
/// clock must be near it.
const FIXTURE_NOW: Timestamp = Timestamp(1_795_000_060_000);

fn verifier() -> SendGridVerifier {
    SendGridVerifier::new(&fixtures::text("sendgrid/public_key.b64"))
        .expect("fixture public key loads")
}

fn signer() -> SendGridSigner {
    SendGridSigner::from_pkcs8_pem(&fixtures::text("sendgrid/private_key.pem"))
        .expect("fixture private key loads")
}

/// What a receiver does: verify, then parse. `Err` holds the failure's code
/// and message.
fn receive(
    verifier: &SendGridVerifier,
    headers: HeaderMap,
    body: Vec<u8>,
    now: Timestamp,
) -> Result<Vec<EmailEvent>, (&'static str, String)> {
    let verified = Webhook::new(headers, Bytes::from(body))
        .verify(verifier, now)
        .map_err(|e| (e.code(), e.to_string()))?;
    sendgrid::parse(verified.body()).map_err(|e| (e.code(), e.to_string()))
}

fn signed_headers(timestamp: &str, signature: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        SENDGRID_TIMESTAMP_HEADER,
        HeaderValue::from_str(timestamp).unwrap(),
    );
    h.insert(
        SENDGRID_SIGNATURE_HEADER,
        HeaderValue::from_str(signature).unwrap(),
    );
    h
}

fn sign(timestamp: &str, body: &[u8]) -> HeaderMap {
    signed_headers(timestamp, &signer().sign(timestamp, body))
}

struct Case {
    headers: HeaderMap,
    body: Vec<u8>,
    expect: String,
    reason: Option<String>,
}

fn load_case(name: &str) -> Case {
    let case = fixtures::json(&format!("sendgrid/{name}/case.json"));
    let mut headers = HeaderMap::new();
    for (key, value) in case["headers"]
        .as_object()
        .expect("case.json has a headers object")
    {
        headers.insert(
            HeaderName::from_bytes(key.as_bytes()).unwrap(),
            HeaderValue::from_str(value.as_str().expect("header values are strings")).unwrap(),
        );
    }
    Case {
        headers,
        body: fixtures::bytes(&format!("sendgrid/{name}/body.json")),
        expect: case["expect"]
            .as_str()
            .expect("case.json has expect")
            .to_owned(),
        reason: case
            .get("reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// Runs one fixture case and checks its verdict; `code` is the failure this
/// suite expects for a rejected case, and a `reason` in case.json, when
/// present, must match the failure's code or appear in its message.
fn run_case(name: &str, code: Option<&str>) -> Vec<EmailEvent> {
    let case = load_case(name);
    let outcome = receive(&verifier(), case.headers, case.body, FIXTURE_NOW);
    match (case.expect.as_str(), outcome) {
        ("accept", Ok(events)) => {
            assert_eq!(
                code, None,
                "{name}: accepted, but this suite expected {code:?}"
            );
            events
        }
        ("reject", Err((got, message))) => {
            if let Some(code) = code {
                assert_eq!(got, code, "{name}: {message}");
            }
            if let Some(reason) = case.reason {
                assert!(
                    got == reason || message.contains(&reason),
                    "{name}: expected {reason:?}, got {got}: {message}"
                );
            }
            Vec::new()
        }
        (expect, outcome) => panic!("{name}: fixture expects {expect}, receiver gave {outcome:?}"),
    }
}

/// The cases this file has a test for; a fixture case missing here fails
/// `index_lists_only_tested_cases`.
const TESTED_CASES: &[&str] = &[
    "valid_batch",
    "tampered_body",
    "tampered_timestamp",
    "wrong_key",
    "garbage_signature",
    "missing_signature",
    "missing_timestamp",
    "malformed_json",
    "not_an_array",
    "empty_array",
    "duplicate_of_valid_batch",
];

#[test]
fn index_lists_only_tested_cases() {
    let index = fixtures::json("sendgrid/index.json");
    let listed: BTreeSet<&str> = index["cases"]
        .as_array()
        .expect("index.json has a cases array")
        .iter()
        .map(|c| c.as_str().expect("case names are strings"))
        .collect();
    let tested: BTreeSet<&str> = TESTED_CASES.iter().copied().collect();
    assert_eq!(
        listed, tested,
        "every case in sendgrid/index.json needs a test here"
    );
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures::dir().join("sendgrid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().map(str::to_owned).collect();
    assert_eq!(
        on_disk, listed,
        "every case folder must be listed in index.json"
    );
}

#[test]
fn every_case_in_the_index_meets_its_verdict() {
    let index = fixtures::json("sendgrid/index.json");
    for name in index["cases"].as_array().unwrap() {
        run_case(name.as_str().unwrap(), None);
    }
}

#[test]
fn case_valid_batch() {
    let events = run_case("valid_batch", None);
    let types: Vec<EventType> = events.iter().map(|e| e.event_type.clone()).collect();
    assert_eq!(
        types,
        [
            EventType::Processed,
            EventType::Delivered,
            EventType::Open,
            EventType::Click,
            EventType::Bounce,
            EventType::Dropped,
            EventType::Deferred,
            EventType::SpamReport,
            EventType::Unsubscribe,
            EventType::Unsubscribe,
            EventType::Delivered,
            EventType::Open,
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.provider, Provider::SendGrid);
        assert_eq!(e.provider_event_id, format!("shared-ev-{:06}", i + 1));
        assert_eq!(e.address, format!("member{}@example.com", i + 1));
        assert_eq!(e.occurred_at, Timestamp((1_795_000_001 + i as i64) * 1000));
        let keys: Vec<&str> = e.custom_args.keys().map(String::as_str).collect();
        assert_eq!(keys, ["alert_id", "customer_id", "member_id"], "event {i}");
        assert_eq!(e.custom_args["member_id"], format!("m-{}", i + 1));
        assert_eq!(e.raw["sg_event_id"], e.provider_event_id.as_str());
        assert!(
            e.message_id.as_deref().unwrap().starts_with("shared-msg-"),
            "{:?}",
            e.message_id
        );
    }
    assert_eq!(events[0].message_id.as_deref(), Some("shared-msg-000000"));
    assert_eq!(events[4].bounce, Some(BounceClass::Hard));
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| i == 4 || e.bounce.is_none()));
    assert_eq!(events[10].tags, ["transactional"]);
    assert_eq!(events[0].tags, ["brand-alert"]);
    assert_eq!(events[0].custom_args["customer_id"], "c-1001");
}

#[test]
fn case_tampered_body() {
    run_case("tampered_body", Some("bad_signature"));
}

#[test]
fn case_tampered_timestamp() {
    run_case("tampered_timestamp", Some("bad_signature"));
}

#[test]
fn case_wrong_key() {
    run_case("wrong_key", Some("bad_signature"));
}

#[test]
fn case_garbage_signature() {
    run_case("garbage_signature", Some("malformed_signature"));
}

#[test]
fn case_missing_signature() {
    run_case("missing_signature", Some("missing_signature"));
}

#[test]
fn case_missing_timestamp() {
    run_case("missing_timestamp", Some("missing_timestamp"));
}

#[test]
fn case_malformed_json() {
    run_case("malformed_json", Some("invalid_json"));
}

#[test]
fn case_not_an_array() {
    run_case("not_an_array", Some("wrong_shape"));
}

#[test]
fn case_empty_array() {
    assert_eq!(run_case("empty_array", None), Vec::new());
}

#[test]
fn case_duplicate_of_valid_batch() {
    let first = run_case("valid_batch", None);
    let again = run_case("duplicate_of_valid_batch", None);
    assert_eq!(
        again, first,
        "a re-post parses to the same events, ids included, for the store to dedupe"
    );
}

fn valid_body() -> Vec<u8> {
    fixtures::bytes("sendgrid/valid_batch/body.json")
}

#[test]
fn freshly_signed_payload_is_accepted() {
    let body = valid_body();
    let events = receive(&verifier(), sign("1800000000", &body), body, FIXTURE_NOW).unwrap();
    assert_eq!(events.len(), 12);
}

#[test]
fn tampering_after_signing_is_caught() {
    let body = valid_body();
    let headers = sign("1795000100", &body);

    let mut changed = body.clone();
    let at = changed.windows(6).position(|w| w == b"c-1001").unwrap();
    changed[at + 5] = b'2';
    assert_eq!(
        receive(&verifier(), headers.clone(), changed, FIXTURE_NOW)
            .unwrap_err()
            .0,
        "bad_signature"
    );

    let mut moved = headers.clone();
    moved.insert(
        SENDGRID_TIMESTAMP_HEADER,
        HeaderValue::from_static("1795000101"),
    );
    assert_eq!(
        receive(&verifier(), moved, body.clone(), FIXTURE_NOW)
            .unwrap_err()
            .0,
        "bad_signature"
    );

    let mut extra = body.clone();
    extra.push(b'\n');
    assert_eq!(
        receive(&verifier(), headers, extra, FIXTURE_NOW)
            .unwrap_err()
            .0,
        "bad_signature"
    );
}

#[test]
fn a_key_other_than_the_configured_one_is_refused() {
    let stranger =
        SendGridSigner::from_key(p256::ecdsa::SigningKey::from_bytes(&[9u8; 32].into()).unwrap());
    let body = valid_body();
    let headers = signed_headers("1795000060", &stranger.sign("1795000060", &body));
    assert_eq!(
        receive(&verifier(), headers.clone(), body.clone(), FIXTURE_NOW)
            .unwrap_err()
            .0,
        "bad_signature"
    );
    let theirs = SendGridVerifier::new(&stranger.public_key_b64()).unwrap();
    assert!(receive(&theirs, headers, body, FIXTURE_NOW).is_ok());
}

#[test]
fn replay_window_off_accepts_old_requests() {
    let body = valid_body();
    let a_year_later = Timestamp(FIXTURE_NOW.millis() + 365 * 86_400_000);
    assert!(receive(&verifier(), sign("1795000060", &body), body, a_year_later).is_ok());
}

#[test]
fn replay_window_on_refuses_old_and_future_requests() {
    let window = verifier().with_replay_window(Duration::from_secs(300));
    let body = valid_body();
    let headers = sign("1795000060", &body);
    let at = |offset_secs: i64| Timestamp(FIXTURE_NOW.millis() + offset_secs * 1000);

    for inside in [-300, -1, 0, 299, 300] {
        assert!(
            receive(&window, headers.clone(), body.clone(), at(inside)).is_ok(),
            "{inside}"
        );
    }
    let (code, message) = receive(&window, headers.clone(), body.clone(), at(301)).unwrap_err();
    assert_eq!(code, "stale_timestamp");
    assert_eq!(
        message,
        "the request was signed 301s ago; requests older than 300s are refused"
    );
    assert_eq!(
        receive(&window, headers, body, at(-301)).unwrap_err().0,
        "future_timestamp"
    );

    let fixture = load_case("valid_batch");
    assert!(receive(
        &window,
        fixture.headers.clone(),
        fixture.body.clone(),
        FIXTURE_NOW
    )
    .is_ok());
    assert_eq!(
        receive(&window, fixture.headers, fixture.body, at(86_400))
            .unwrap_err()
            .0,
        "stale_timestamp"
    );
}

#[test]
fn replay_window_does_not_excuse_a_bad_signature() {
    let window = verifier().with_replay_window(Duration::from_secs(300));
    let body = valid_body();
    let headers = sign("1795000060", b"[]");
    assert_eq!(
        receive(&window, headers, body, FIXTURE_NOW).unwrap_err().0,
        "bad_signature"
    );
}

#[test]
fn a_non_numeric_timestamp_is_refused() {
    let body = valid_body();
    let (code, message) = receive(&verifier(), sign("soon", &body), body, FIXTURE_NOW).unwrap_err();
    assert_eq!(code, "bad_timestamp");
    assert!(message.contains(SENDGRID_TIMESTAMP_HEADER), "{message}");
}

fn event(i: usize) -> Value {
    json!({
        "email": format!("member{i}@example.com"),
        "timestamp": 1_795_000_000 + i,
        "event": "delivered",
        "sg_event_id": format!("bulk-{i}"),
        "sg_message_id": format!("msg-{i}.filter0001"),
        "customer_id": format!("c-{}", i % 97),
        "alert_id": "alert-42",
        "member_id": format!("m-{i}"),
        "response": "250 OK",
    })
}

#[test]
fn a_huge_batch_verifies_and_parses_whole() {
    let count = 25_000;
    let body = serde_json::to_vec(&(0..count).map(event).collect::<Vec<_>>()).unwrap();
    assert!(body.len() > 5 << 20, "{} bytes", body.len());
    let events = receive(&verifier(), sign("1795000060", &body), body, FIXTURE_NOW).unwrap();
    assert_eq!(events.len(), count);
    assert_eq!(
        events[count - 1].provider_event_id,
        format!("bulk-{}", count - 1)
    );
    assert_eq!(
        events[count - 1].custom_args["customer_id"],
        format!("c-{}", (count - 1) % 97)
    );
}

#[test]
fn a_truncated_body_fails_the_signature_or_the_parse() {
    let body = valid_body();
    let half = body[..body.len() / 2].to_vec();
    assert_eq!(
        receive(
            &verifier(),
            sign("1795000060", &body),
            half.clone(),
            FIXTURE_NOW
        )
        .unwrap_err()
        .0,
        "bad_signature"
    );
    let (code, message) =
        receive(&verifier(), sign("1795000060", &half), half, FIXTURE_NOW).unwrap_err();
    assert_eq!(code, "invalid_json");
    assert!(message.starts_with("body is not valid JSON"), "{message}");
}

#[test]
fn a_signed_non_array_is_refused_by_shape() {
    let body = serde_json::to_vec(&event(1)).unwrap();
    let (code, message) =
        receive(&verifier(), sign("1795000060", &body), body, FIXTURE_NOW).unwrap_err();
    assert_eq!(code, "wrong_shape");
    assert_eq!(
        message,
        "body must be a JSON array of events, found an object"
    );
}

#[test]
fn duplicate_events_are_both_kept_with_their_provider_id() {
    let body = serde_json::to_vec(&json!([event(5), event(6), event(5)])).unwrap();
    let events = receive(&verifier(), sign("1795000060", &body), body, FIXTURE_NOW).unwrap();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e.provider_event_id.as_str())
        .collect();
    assert_eq!(ids, ["bulk-5", "bulk-6", "bulk-5"]);
    assert_eq!(events[0], events[2]);
}

#[test]
fn a_signed_batch_with_a_bad_event_names_it() {
    let mut bad = event(3);
    bad.as_object_mut().unwrap().remove("email");
    let body = serde_json::to_vec(&json!([event(0), event(1), event(2), bad])).unwrap();
    let (code, message) =
        receive(&verifier(), sign("1795000060", &body), body, FIXTURE_NOW).unwrap_err();
    assert_eq!(code, "missing_field");
    assert_eq!(message, "event 3: field `email` is missing");
}
