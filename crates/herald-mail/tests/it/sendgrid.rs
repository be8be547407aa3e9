//! The SendGrid transport against a local server that checks requests the
//! way SendGrid's v3 Mail Send documents them and answers like it.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::HeaderMap;
use herald_mail::transport::{SendGridConfig, SendGridTransport};
use herald_mail::{OutgoingEmail, SendError, Transport, TransportConfig};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::provider::{MockProvider, Reply};
use crate::support::email;

const KEY: &str = "SG.test-key";

fn error(status: u16, message: &str, field: Option<&str>) -> Reply {
    Reply::json(
        status,
        json!({"errors": [{"message": message, "field": field, "help": null}]}),
    )
}

/// SendGrid's documented request rules, as far as Herald's requests go.
fn sendgrid(n: usize, headers: &HeaderMap, body: &Value) -> Reply {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return error(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
            None,
        );
    }
    let Some(personalizations) = body["personalizations"].as_array() else {
        return error(
            400,
            "The personalizations field is required.",
            Some("personalizations"),
        );
    };
    if personalizations.is_empty() || personalizations.len() > 1000 {
        return error(
            400,
            &format!(
                "The personalization block is limited to 1000 personalizations per API request. You have provided {} personalizations.",
                personalizations.len()
            ),
            Some("personalizations"),
        );
    }
    let mut seen = HashSet::new();
    for (i, p) in personalizations.iter().enumerate() {
        let Some(to) = p["to"].as_array().filter(|t| !t.is_empty()) else {
            return error(
                400,
                "The to array is required.",
                Some(&format!("personalizations.{i}.to")),
            );
        };
        for (j, recipient) in to.iter().enumerate() {
            let field = format!("personalizations.{i}.to.{j}.email");
            let Some(address) = recipient["email"].as_str() else {
                return error(400, "The email parameter is required.", Some(&field));
            };
            if address.ends_with("@rejected.example") {
                return error(400, "Does not contain a valid address.", Some(&field));
            }
            if !seen.insert(address.to_ascii_lowercase()) {
                return error(
                    400,
                    "Each email address in the personalization block should be unique between to, cc, and bcc.",
                    Some(&format!("personalizations.{i}")),
                );
            }
        }
        for key in ["headers", "custom_args"] {
            if let Some(map) = p.get(key) {
                let strings = map
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string));
                if !strings {
                    return error(
                        400,
                        "Invalid type. Expected: object of strings.",
                        Some(&format!("personalizations.{i}.{key}")),
                    );
                }
            }
        }
    }
    if body["from"]["email"].as_str().is_none() {
        return error(
            400,
            "The from object must be provided for every email send.",
            Some("from"),
        );
    }
    if body["subject"].as_str().is_none_or(str::is_empty) {
        return error(400, "The subject is required.", Some("subject"));
    }
    let Some(content) = body["content"].as_array().filter(|c| !c.is_empty()) else {
        return error(
            400,
            "Unless a valid template_id is provided, the content parameter is required.",
            Some("content"),
        );
    };
    for (i, part) in content.iter().enumerate() {
        if part["value"].as_str().is_none_or(str::is_empty) {
            return error(
                400,
                "The content value must be a string at least one character in length.",
                Some(&format!("content.{i}.value")),
            );
        }
        if part["type"] == "text/plain" && i != 0 {
            return error(
                400,
                "If present, text/plain must be first.",
                Some(&format!("content.{i}.type")),
            );
        }
    }
    Reply {
        status: 202,
        headers: vec![("x-message-id", format!("sg-msg-{n}"))],
        body: String::new(),
    }
}

fn transport(base_url: &str) -> SendGridTransport {
    SendGridTransport::new(&SendGridConfig {
        api_key: SecretString::from(KEY),
        base_url: base_url.to_owned(),
        max_batch: 1000,
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

#[tokio::test]
async fn one_message_has_the_documented_shape() {
    let mock = MockProvider::start(sendgrid).await;
    let message = email("ada@example.net", "alert-1", "m1");
    let receipt = transport(&mock.base_url).send(&message).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("sg-msg-1"));

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v3/mail/send");
    assert_eq!(request.headers["content-type"], "application/json");
    let body = &request.body;
    assert_eq!(
        body["personalizations"],
        json!([{
            "to": [{"email": "ada@example.net", "name": "Ada Lovelace"}],
            "headers": {
                "List-Unsubscribe": message.list_unsubscribe.as_ref().unwrap().header_value(),
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            "custom_args": {"alert_id": "alert-1", "member_id": "m1", "customer_key": "cust-m1"},
        }])
    );
    assert_eq!(
        body["from"],
        json!({"email": "alerts@shop.example.com", "name": "Shop Alerts"})
    );
    assert_eq!(body["reply_to"], json!({"email": "care@shop.example.com"}));
    assert_eq!(body["subject"], message.subject);
    assert_eq!(
        body["content"],
        json!([
            {"type": "text/plain", "value": message.text},
            {"type": "text/html", "value": message.html},
        ])
    );
}

/// Emails with identical content: what a template without per-member
/// content produces.
fn same_content(count: usize) -> Vec<OutgoingEmail> {
    let template = email("x@example.net", "alert-1", "x");
    (0..count)
        .map(|i| {
            let mut e = email(
                &format!("member{i}@example.net"),
                "alert-1",
                &format!("m{i}"),
            );
            e.subject = template.subject.clone();
            e.html = template.html.clone();
            e.text = template.text.clone();
            e
        })
        .collect()
}

#[tokio::test]
async fn identical_content_is_batched_up_to_1000_personalizations() {
    let mock = MockProvider::start(sendgrid).await;
    let emails = same_content(2500);
    let results = transport(&mock.base_url).send_batch(&emails).await;
    assert_eq!(results.len(), 2500);

    let requests = mock.requests();
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| r.body["personalizations"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![1000, 1000, 500]);
    for (i, result) in results.iter().enumerate() {
        let expected = format!("sg-msg-{}", i / 1000 + 1);
        assert_eq!(
            result.as_ref().unwrap().provider_message_id.as_deref(),
            Some(expected.as_str())
        );
    }
    // Every message's own recipient and custom args went out exactly once.
    let mut members: Vec<String> = requests
        .iter()
        .flat_map(|r| r.body["personalizations"].as_array().unwrap().clone())
        .map(|p| {
            assert_eq!(p["custom_args"]["alert_id"], "alert-1");
            let member = p["custom_args"]["member_id"].as_str().unwrap().to_owned();
            assert_eq!(
                p["to"][0]["email"],
                format!("member{}@example.net", &member[1..])
            );
            member
        })
        .collect();
    members.sort();
    members.dedup();
    assert_eq!(members.len(), 2500);
}

#[tokio::test]
async fn different_content_and_repeated_addresses_go_in_separate_requests() {
    let mock = MockProvider::start(sendgrid).await;
    let mut emails = same_content(3);
    emails[1].html.push_str("<p>only for member 1</p>");
    let mut again = emails[0].clone();
    again.to = "MEMBER0@example.net".parse().unwrap();
    emails.push(again);
    let results = transport(&mock.base_url).send_batch(&emails).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let sizes: Vec<usize> = mock
        .requests()
        .iter()
        .map(|r| r.body["personalizations"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![2, 1, 1]);
}

#[tokio::test]
async fn a_rejected_address_fails_alone_and_is_suppressed() {
    let mock = MockProvider::start(sendgrid).await;
    let mut emails = same_content(3);
    emails[1].to = "nobody@rejected.example".parse().unwrap();
    let results = transport(&mock.base_url).send_batch(&emails).await;

    // The batch was refused, then each message went alone.
    assert_eq!(mock.requests().len(), 4);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    match &results[1] {
        Err(SendError::Permanent {
            reason,
            suppress_address,
        }) => {
            assert!(*suppress_address);
            assert!(
                reason.contains(
                    "Does not contain a valid address. (field personalizations.0.to.0.email)"
                ),
                "{reason}"
            );
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_key_is_permanent_but_not_the_members_fault() {
    let mock = MockProvider::start(sendgrid).await;
    let config: TransportConfig = toml::from_str(&format!(
        "kind = \"sendgrid\"\napi_key = \"SG.wrong\"\nbase_url = \"{}\"",
        mock.base_url
    ))
    .unwrap();
    let transport = config.build().unwrap();
    assert_eq!(transport.kind(), "sendgrid");
    let emails = same_content(2);
    let results = transport.send_batch(&emails).await;
    for result in &results {
        match result {
            Err(SendError::Permanent {
                reason,
                suppress_address: false,
            }) => assert!(
                reason.contains("401") && reason.contains("authorization grant"),
                "{reason}"
            ),
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }
    assert_eq!(
        mock.requests().len(),
        1,
        "a 401 is not retried message by message"
    );
}

#[tokio::test]
async fn provider_errors_map_to_retry_or_give_up() {
    let mock = MockProvider::start(sendgrid).await;
    let transport = transport(&mock.base_url);
    let message = email("ada@example.net", "a1", "m1");
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let cases: Vec<(Reply, crate::provider::Expect)> = vec![
        (
            error(429, "too many requests", None).with_header("retry-after", "7"),
            |e| matches!(e, SendError::Transient { retry_after: Some(d), .. } if *d == Duration::from_secs(7)),
        ),
        (
            error(429, "too many requests", None)
                .with_header("x-ratelimit-reset", reset.to_string()),
            |e| matches!(e, SendError::Transient { retry_after: Some(d), .. } if *d > Duration::from_secs(500) && *d <= Duration::from_secs(600)),
        ),
        (
            error(500, "internal error", None),
            |e| matches!(e, SendError::Transient { retry_after: None, reason } if reason.contains("internal error")),
        ),
        (
            Reply {
                status: 503,
                headers: vec![],
                body: "<html>upstream down</html>".into(),
            },
            |e| matches!(e, SendError::Transient { reason, .. } if reason.contains("upstream down")),
        ),
        (
            error(413, "Payload Too Large", None),
            |e| matches!(e, SendError::Permanent { suppress_address: false, reason } if reason.contains("413")),
        ),
        (
            error(
                400,
                "The from address does not match a verified Sender Identity.",
                Some("from"),
            ),
            |e| matches!(e, SendError::Permanent { suppress_address: false, reason } if reason.contains("verified Sender Identity")),
        ),
        (error(403, "access forbidden", None), |e| {
            matches!(
                e,
                SendError::Permanent {
                    suppress_address: false,
                    ..
                }
            )
        }),
    ];
    for (reply, expected) in cases {
        let status = reply.status;
        mock.script(reply);
        let err = transport.send(&message).await.unwrap_err();
        assert!(expected(&err), "{status}: {err:?}");
    }
}

#[tokio::test]
async fn an_unreachable_api_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = transport(&format!("http://127.0.0.1:{port}"))
        .send(&email("ada@example.net", "a1", "m1"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
