//! SparkPost's Transmissions API (`POST /api/v1/transmissions`), one
//! transmission per message.
//!
//! SparkPost runs its own template language over the subject, headers and
//! both parts of every transmission. Herald's content is already rendered,
//! so literal `{{` and `}}` in it are escaped with SparkPost's
//! `opening_double_curly()` / `closing_double_curly()` macros, and custom
//! args go in the recipient's `metadata`, which SparkPost echoes in its
//! webhook events as `rcpt_meta`.

use std::time::Duration;

use lettre::message::Mailbox;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::message::OutgoingEmail;

use super::http;
use super::{BuildError, SendError, SendReceipt, Transport};

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SparkPostConfig {
    #[serde(serialize_with = "super::mask_secret")]
    pub api_key: SecretString,
    /// `https://api.sparkpost.com`, or `https://api.eu.sparkpost.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://api.sparkpost.com".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug)]
pub struct SparkPostTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: SecretString,
}

impl SparkPostTransport {
    pub fn new(config: &SparkPostConfig) -> Result<Self, BuildError> {
        http::api_key(&config.api_key)?;
        Ok(Self {
            client: http::client(config.timeout)?,
            url: http::endpoint(&config.base_url, "/api/v1/transmissions")?,
            api_key: config.api_key.clone(),
        })
    }
}

#[async_trait::async_trait]
impl Transport for SparkPostTransport {
    fn kind(&self) -> &'static str {
        "sparkpost"
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        email.check()?;
        // SparkPost takes the bare key in Authorization, without a scheme.
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::AUTHORIZATION, self.api_key.expose_secret())
            .json(&request_body(email))
            .send()
            .await
            .map_err(|e| http::network_error("SparkPost", &e))?;
        let reply = http::read("SparkPost", response).await?;
        if !reply.status.is_success() {
            return Err(classify(&reply));
        }
        let results = serde_json::from_slice::<SuccessBody>(&reply.body)
            .map(|b| b.results)
            .unwrap_or_default();
        if results.total_accepted_recipients == Some(0)
            && results.total_rejected_recipients.unwrap_or(0) > 0
        {
            return Err(SendError::permanent(
                "SparkPost rejected the recipient",
                true,
            ));
        }
        Ok(SendReceipt {
            provider_message_id: results.id,
        })
    }
}

fn address(mailbox: &Mailbox) -> Value {
    match &mailbox.name {
        Some(name) => json!({"email": mailbox.email.to_string(), "name": escape(name)}),
        None => json!({"email": mailbox.email.to_string()}),
    }
}

fn request_body(email: &OutgoingEmail) -> Value {
    let headers: serde_json::Map<String, Value> = email
        .list_unsubscribe
        .iter()
        .flat_map(|u| {
            [
                (
                    "List-Unsubscribe".to_owned(),
                    json!(escape(&u.header_value())),
                ),
                (
                    "List-Unsubscribe-Post".to_owned(),
                    json!(crate::message::LIST_UNSUBSCRIBE_POST),
                ),
            ]
        })
        .collect();
    let mut content = json!({
        "from": address(&email.from),
        "subject": escape(&email.subject),
        "html": escape(&email.html),
        "text": escape(&email.text),
    });
    if !headers.is_empty() {
        content["headers"] = Value::Object(headers);
    }
    if let Some(reply_to) = &email.reply_to {
        content["reply_to"] = json!(escape(&reply_to.to_string()));
    }
    json!({
        "recipients": [{
            "address": address(&email.to),
            "metadata": email.custom_args,
        }],
        "content": content,
    })
}

/// Makes literal double braces survive SparkPost's template engine.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push_str("{{opening_double_curly()}}");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push_str("{{closing_double_curly()}}");
            rest = after;
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[derive(Default, serde::Deserialize)]
struct SuccessBody {
    #[serde(default)]
    results: SuccessResults,
}

#[derive(Default, serde::Deserialize)]
struct SuccessResults {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    total_accepted_recipients: Option<u64>,
    #[serde(default)]
    total_rejected_recipients: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(serde::Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// SparkPost's 420: the account's daily, monthly or sandbox sending limit
/// is used up; sending works again once it resets.
const SENDING_LIMIT_EXCEEDED: u16 = 420;

fn classify(reply: &http::Reply) -> SendError {
    let status = reply.status;
    let errors = serde_json::from_slice::<ErrorBody>(&reply.body)
        .map(|b| b.errors)
        .unwrap_or_default();
    let detail = if errors.is_empty() {
        http::snippet(&reply.body)
    } else {
        errors
            .iter()
            .map(|e| {
                let mut s = e.message.clone().unwrap_or_else(|| "error".to_owned());
                if let Some(d) = &e.description {
                    s.push_str(": ");
                    s.push_str(d);
                }
                if let Some(c) = &e.code {
                    s.push_str(&format!(" (code {c})"));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let reason = format!("SparkPost answered {status}: {detail}");
    if status == StatusCode::TOO_MANY_REQUESTS
        || status.as_u16() == SENDING_LIMIT_EXCEEDED
        || status.is_server_error()
    {
        return SendError::Transient {
            retry_after: http::retry_after(&reply.headers),
            reason,
        };
    }
    // SparkPost's errors about the recipient mention it in their text; the
    // rest (bad content, unverified sending domain, bad key) are ours.
    let about_recipient = matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
    ) && errors.iter().any(|e| {
        [&e.message, &e.description]
            .into_iter()
            .flatten()
            .any(|t| t.to_ascii_lowercase().contains("recipient"))
    });
    SendError::permanent(reason, about_recipient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::email;

    #[test]
    fn double_braces_are_escaped_in_one_pass() {
        assert_eq!(escape("plain {x}"), "plain {x}");
        assert_eq!(
            escape("a {{b}} c"),
            "a {{opening_double_curly()}}b{{closing_double_curly()}} c"
        );
        assert_eq!(escape("{{{"), "{{opening_double_curly()}}{");
        assert_eq!(escape("}}}"), "{{closing_double_curly()}}}");
        assert_eq!(escape("é{{"), "é{{opening_double_curly()}}");
    }

    #[test]
    fn body_carries_metadata_and_headers() {
        let body = request_body(&email("Ada <ada@example.com>"));
        assert_eq!(
            body["recipients"],
            json!([{
                "address": {"email": "ada@example.com", "name": "Ada"},
                "metadata": {"alert_id": "a1", "member_id": "m7"},
            }])
        );
        assert_eq!(
            body["content"]["headers"]["List-Unsubscribe-Post"],
            "List-Unsubscribe=One-Click"
        );
        assert_eq!(body["content"]["reply_to"], "care@shop.example.com");
    }
}
