//! The SparkPost transport against a local server that checks requests the
//! way SparkPost's Transmissions API documents them and answers like it,
//! including its template engine's view of `{{ }}` in the content.

use std::time::Duration;

use axum::http::HeaderMap;
use herald_mail::transport::{SparkPostConfig, SparkPostTransport};
use herald_mail::{SendError, Transport};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::provider::{MockProvider, Reply};
use crate::support::email;

const KEY: &str = "sp-test-key";

fn error(status: u16, message: &str, description: Option<&str>, code: &str) -> Reply {
    let mut item = json!({"message": message, "code": code});
    if let Some(d) = description {
        item["description"] = json!(d);
    }
    Reply::json(status, json!({"errors": [item]}))
}

/// What SparkPost's engine would print for `text`, or the expression it
/// cannot evaluate: Herald sends no substitution data, so only the two
/// brace macros may appear.
fn sparkpost_render(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unterminated {{".to_owned())?;
        match after[..end].trim() {
            "opening_double_curly()" => out.push_str("{{"),
            "closing_double_curly()" => out.push_str("}}"),
            other => return Err(other.to_owned()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn sparkpost(n: usize, headers: &HeaderMap, body: &Value) -> Reply {
    // SparkPost takes the bare API key, with no scheme.
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(KEY) {
        return error(401, "Unauthorized.", None, "1100");
    }
    let Some(recipients) = body["recipients"].as_array().filter(|r| !r.is_empty()) else {
        return error(
            422,
            "required field is missing",
            Some("recipients is required"),
            "1400",
        );
    };
    for r in recipients {
        let Some(address) = r["address"]["email"].as_str() else {
            return error(
                422,
                "required field is missing",
                Some("recipient address.email is required"),
                "1400",
            );
        };
        if address.ends_with("@rejected.example") {
            return error(
                422,
                "invalid data format/type",
                Some("Error while validating recipient address: invalid email address"),
                "1300",
            );
        }
        if r.get("metadata").is_some_and(|m| !m.is_object()) {
            return error(
                422,
                "invalid data format/type",
                Some("metadata must be an object"),
                "1300",
            );
        }
    }
    let content = &body["content"];
    if content["from"]["email"].as_str().is_none() {
        return error(
            422,
            "required field is missing",
            Some("content.from is required"),
            "1400",
        );
    }
    if content["subject"].as_str().is_none_or(str::is_empty) {
        return error(
            422,
            "required field is missing",
            Some("content.subject is required"),
            "1400",
        );
    }
    if content["html"].as_str().is_none() && content["text"].as_str().is_none() {
        return error(
            422,
            "required field is missing",
            Some("content.html or content.text is required"),
            "1400",
        );
    }
    let mut templated: Vec<(&str, &Value)> = vec![
        ("subject", &content["subject"]),
        ("html", &content["html"]),
        ("text", &content["text"]),
    ];
    if let Some(h) = content["headers"].as_object() {
        templated.extend(h.iter().map(|(k, v)| (k.as_str(), v)));
    }
    for (part, value) in templated {
        if let Some(text) = value.as_str() {
            if let Err(expr) = sparkpost_render(text) {
                return error(
                    422,
                    "substitution language syntax error in template content",
                    Some(&format!(
                        "Error while compiling part {part}: cannot evaluate {expr:?}"
                    )),
                    "3000",
                );
            }
        }
    }
    Reply::json(
        200,
        json!({"results": {
            "total_rejected_recipients": 0,
            "total_accepted_recipients": recipients.len(),
            "id": format!("sp-transmission-{n}"),
        }}),
    )
}

fn transport(base_url: &str) -> SparkPostTransport {
    SparkPostTransport::new(&SparkPostConfig {
        api_key: SecretString::from(KEY),
        base_url: base_url.to_owned(),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

#[tokio::test]
async fn one_transmission_has_the_documented_shape() {
    let mock = MockProvider::start(sparkpost).await;
    let message = email("ada@example.net", "alert-1", "m1");
    let receipt = transport(&mock.base_url).send(&message).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("sp-transmission-1")
    );

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/api/v1/transmissions");
    let body = &requests[0].body;
    assert_eq!(
        body["recipients"],
        json!([{
            "address": {"email": "ada@example.net", "name": "Ada Lovelace"},
            "metadata": {"alert_id": "alert-1", "member_id": "m1", "customer_key": "cust-m1"},
        }])
    );
    let content = &body["content"];
    assert_eq!(
        content["from"],
        json!({"email": "alerts@shop.example.com", "name": "Shop Alerts"})
    );
    assert_eq!(content["subject"], message.subject);
    assert_eq!(content["html"], message.html);
    assert_eq!(content["text"], message.text);
    assert_eq!(content["reply_to"], "care@shop.example.com");
    assert_eq!(
        content["headers"],
        json!({
            "List-Unsubscribe": message.list_unsubscribe.as_ref().unwrap().header_value(),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        })
    );
}

#[tokio::test]
async fn literal_double_braces_survive_sparkposts_template_engine() {
    let mock = MockProvider::start(sparkpost).await;
    let mut message = email("ada@example.net", "alert-1", "m1");
    message.subject = "Use code {{SPRING}} today".into();
    message.html = "<p>{{ not a variable }} and {{{ triple }}}</p>".into();
    message.text = "a }} b {{".into();
    transport(&mock.base_url).send(&message).await.unwrap();

    let content = &mock.requests()[0].body["content"];
    for (field, original) in [
        ("subject", &message.subject),
        ("html", &message.html),
        ("text", &message.text),
    ] {
        let sent = content[field].as_str().unwrap();
        assert_ne!(sent, original.as_str(), "{field} was sent unescaped");
        assert_eq!(&sparkpost_render(sent).unwrap(), original, "{field}");
    }
}

#[tokio::test]
async fn send_batch_sends_one_transmission_per_message() {
    let mock = MockProvider::start(sparkpost).await;
    let emails: Vec<_> = (0..3)
        .map(|i| email(&format!("m{i}@example.net"), "alert-1", &format!("m{i}")))
        .collect();
    let results = transport(&mock.base_url).send_batch(&emails).await;
    let ids: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap().provider_message_id.unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "sp-transmission-1",
            "sp-transmission-2",
            "sp-transmission-3"
        ]
    );
    let members: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| r.body["recipients"][0]["metadata"]["member_id"].clone())
        .collect();
    assert_eq!(members, [json!("m0"), json!("m1"), json!("m2")]);
}

#[tokio::test]
async fn provider_errors_map_to_retry_or_give_up() {
    let mock = MockProvider::start(sparkpost).await;
    let good = transport(&mock.base_url);

    let err = good
        .send(&email("nobody@rejected.example", "a1", "m1"))
        .await
        .unwrap_err();
    match &err {
        SendError::Permanent {
            reason,
            suppress_address: true,
        } => assert!(
            reason.contains("validating recipient address") && reason.contains("code 1300"),
            "{reason}"
        ),
        other => panic!("expected a suppressing permanent error, got {other:?}"),
    }

    let wrong_key = SparkPostTransport::new(&SparkPostConfig {
        api_key: SecretString::from("Bearer sp-test-key"),
        base_url: mock.base_url.clone(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let err = wrong_key
        .send(&email("ada@example.net", "a1", "m1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SendError::Permanent { suppress_address: false, reason } if reason.contains("401")),
        "{err:?}"
    );

    let message = email("ada@example.net", "a1", "m1");
    let cases: Vec<(Reply, crate::provider::Expect)> = vec![
        (
            error(420, "Exceed Sending Limit (daily)", None, "2102"),
            |e| matches!(e, SendError::Transient { reason, .. } if reason.contains("Exceed Sending Limit")),
        ),
        (
            error(429, "Too many requests", None, "1000").with_header("retry-after", "3"),
            |e| matches!(e, SendError::Transient { retry_after: Some(d), .. } if *d == Duration::from_secs(3)),
        ),
        (error(500, "internal error", None, "1500"), |e| {
            matches!(e, SendError::Transient { .. })
        }),
        (
            error(
                400,
                "invalid params",
                Some("Unverified sending domain"),
                "7001",
            ),
            |e| matches!(e, SendError::Permanent { suppress_address: false, reason } if reason.contains("Unverified sending domain (code 7001)")),
        ),
        (
            Reply::json(
                200,
                json!({"results": {"total_rejected_recipients": 1, "total_accepted_recipients": 0, "id": "x"}}),
            ),
            |e| {
                matches!(
                    e,
                    SendError::Permanent {
                        suppress_address: true,
                        ..
                    }
                )
            },
        ),
    ];
    for (reply, expected) in cases {
        let status = reply.status;
        mock.script(reply);
        let err = good.send(&message).await.unwrap_err();
        assert!(expected(&err), "{status}: {err:?}");
    }
}
