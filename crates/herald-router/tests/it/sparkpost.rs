//! SparkPost: the shared batch and ping, behind basic auth or a bearer token.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use herald_core::email_event::{BounceClass, EventType, Provider};
use herald_core::providers::sparkpost::{self, SparkPostBatch};
use herald_core::Timestamp;
use herald_router::verify::{SharedSecretAuth, Webhook};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

use crate::fixtures;

const NOW: Timestamp = Timestamp(1_795_000_200_000);

fn configured_auth() -> (String, String) {
    let index = fixtures::json("sparkpost/index.json");
    assert_eq!(index["auth"]["type"], "basic");
    (
        index["auth"]["username"].as_str().unwrap().to_owned(),
        index["auth"]["password"].as_str().unwrap().to_owned(),
    )
}

fn basic_header(user: &str, password: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let value = format!("Basic {}", BASE64.encode(format!("{user}:{password}")));
    h.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
    h
}

fn receive(
    auth: &SharedSecretAuth,
    headers: HeaderMap,
    file: &str,
) -> Result<SparkPostBatch, &'static str> {
    let verified = Webhook::new(headers, Bytes::from(fixtures::bytes(file)))
        .verify(auth, NOW)
        .map_err(|e| e.code())?;
    sparkpost::parse(verified.body()).map_err(|e| e.code())
}

#[test]
fn batch_parses_with_types_and_custom_args() {
    let (user, password) = configured_auth();
    let auth = SharedSecretAuth::basic(&user, &password).unwrap();
    let Ok(SparkPostBatch::Events(events)) = receive(
        &auth,
        basic_header(&user, &password),
        "sparkpost/batch.json",
    ) else {
        panic!("batch.json should verify and parse to events");
    };
    let types: Vec<EventType> = events.iter().map(|e| e.event_type.clone()).collect();
    assert_eq!(
        types,
        [
            EventType::Processed,
            EventType::Delivered,
            EventType::Open,
            EventType::Click,
            EventType::Bounce,
            EventType::Deferred,
            EventType::SpamReport,
            EventType::Unsubscribe,
            EventType::Unsubscribe,
            EventType::Dropped,
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.provider, Provider::SparkPost);
        assert_eq!(e.provider_event_id, format!("shared-sp-{:06}", i + 1));
        assert_eq!(e.address, format!("member{}@example.com", i + 1));
        assert_eq!(e.occurred_at, Timestamp((1_795_000_101 + i as i64) * 1000));
        assert_eq!(e.custom_args["member_id"], format!("m-{}", i + 1));
        assert_eq!(e.custom_args["alert_id"], "alert-42");
        assert_eq!(e.custom_args.len(), 3);
        assert_eq!(e.tags, ["brand-alert"]);
        assert_eq!(e.raw["campaign_id"], "brand-alert-42");
    }
    assert_eq!(events[0].custom_args["customer_id"], "c-2001");
    assert_eq!(events[9].custom_args["customer_id"], "c-2006");
    assert_eq!(events[4].bounce, Some(BounceClass::Hard));
    assert_eq!(events[3].message_id.as_deref(), Some("shared-spmsg-00002"));
}

#[test]
fn ping_is_detected() {
    let (user, password) = configured_auth();
    let auth = SharedSecretAuth::basic(&user, &password).unwrap();
    assert_eq!(
        receive(&auth, basic_header(&user, &password), "sparkpost/ping.json"),
        Ok(SparkPostBatch::Ping)
    );
}

#[test]
fn wrong_or_missing_credentials_are_refused() {
    let (user, password) = configured_auth();
    let auth = SharedSecretAuth::basic(&user, &password).unwrap();
    let cases = [
        (basic_header(&user, "wrong"), "bad_auth"),
        (basic_header("someone", &password), "bad_auth"),
        (basic_header(&user, &format!("{password} ")), "bad_auth"),
        (HeaderMap::new(), "missing_auth"),
    ];
    for (headers, code) in cases {
        assert_eq!(
            receive(&auth, headers.clone(), "sparkpost/batch.json"),
            Err(code),
            "{headers:?}"
        );
        assert_eq!(receive(&auth, headers, "sparkpost/ping.json"), Err(code));
    }
}

#[test]
fn bearer_token_authenticates_too() {
    let auth = SharedSecretAuth::bearer("sp-oauth-token").unwrap();
    let bearer = |token: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    };
    assert!(matches!(
        receive(&auth, bearer("sp-oauth-token"), "sparkpost/batch.json"),
        Ok(SparkPostBatch::Events(events)) if events.len() == 10
    ));
    assert_eq!(
        receive(&auth, bearer("sp-oauth-token2"), "sparkpost/batch.json"),
        Err("bad_auth")
    );
    let (user, password) = configured_auth();
    assert_eq!(
        receive(
            &auth,
            basic_header(&user, &password),
            "sparkpost/batch.json"
        ),
        Err("bad_auth")
    );
}
