//! SendGrid's v3 Mail Send API (`POST /v3/mail/send`).
//!
//! `send_batch` puts messages with identical content (same from, reply-to,
//! subject, HTML and text) into one request, one personalization each, with
//! the recipient, its unsubscribe headers and its custom args; up to
//! `max_batch` (SendGrid's limit: 1,000) per request, each address at most
//! once per request as SendGrid requires. Messages that differ in content go
//! in separate requests: Herald renders every email itself, so batching
//! across members only pays off for templates without per-member content.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use lettre::message::Mailbox;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::message::OutgoingEmail;

use super::http;
use super::{BuildError, SendError, SendReceipt, Transport};

/// SendGrid accepts at most this many personalizations per request.
pub const MAX_PERSONALIZATIONS: usize = 1000;

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    #[serde(serialize_with = "super::mask_secret")]
    pub api_key: SecretString,
    /// `https://api.sendgrid.com`, or `https://api.eu.sendgrid.com` for EU
    /// subusers.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Most messages per request, 1 to 1,000.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://api.sendgrid.com".to_owned()
}

fn default_max_batch() -> usize {
    MAX_PERSONALIZATIONS
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug)]
pub struct SendGridTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: SecretString,
    max_batch: usize,
}

impl SendGridTransport {
    pub fn new(config: &SendGridConfig) -> Result<Self, BuildError> {
        http::api_key(&config.api_key)?;
        if !(1..=MAX_PERSONALIZATIONS).contains(&config.max_batch) {
            return Err(BuildError::Invalid {
                field: "max_batch",
                message: format!(
                    "is {}; it must be between 1 and {MAX_PERSONALIZATIONS}",
                    config.max_batch
                ),
            });
        }
        Ok(Self {
            client: http::client(config.timeout)?,
            url: http::endpoint(&config.base_url, "/v3/mail/send")?,
            api_key: config.api_key.clone(),
            max_batch: config.max_batch,
        })
    }

    /// Sends messages that share content in one request.
    async fn send_group(&self, emails: &[&OutgoingEmail]) -> Result<SendReceipt, GroupError> {
        let body = request_body(emails);
        let response = self
            .client
            .post(self.url.clone())
            .bearer_auth(self.api_key.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| GroupError::from(http::network_error("SendGrid", &e)))?;
        let reply = http::read("SendGrid", response).await?;
        if reply.status.is_success() {
            let id = reply
                .headers
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(SendReceipt {
                provider_message_id: id,
            });
        }
        Err(GroupError {
            error: classify(&reply),
            request_rejected: matches!(
                reply.status,
                StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
            ),
        })
    }
}

/// A failed request, and whether SendGrid refused its content (400, 413),
/// which for a multi-message request may be the fault of one message only.
struct GroupError {
    error: SendError,
    request_rejected: bool,
}

impl From<SendError> for GroupError {
    fn from(error: SendError) -> Self {
        Self {
            error,
            request_rejected: false,
        }
    }
}

#[async_trait::async_trait]
impl Transport for SendGridTransport {
    fn kind(&self) -> &'static str {
        "sendgrid"
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        email.check()?;
        self.send_group(&[email]).await.map_err(|e| e.error)
    }

    /// Emails with the same content share a request, so the more in one
    /// call the fewer requests.
    fn batch_size(&self, concurrency: usize) -> usize {
        concurrency
    }

    async fn send_batch(&self, emails: &[OutgoingEmail]) -> Vec<Result<SendReceipt, SendError>> {
        let mut results: Vec<Option<Result<SendReceipt, SendError>>> = vec![None; emails.len()];
        let mut sendable = Vec::new();
        for (i, email) in emails.iter().enumerate() {
            match email.check() {
                Ok(()) => sendable.push(i),
                Err(err) => results[i] = Some(Err(err.into())),
            }
        }
        for group in group_by_content(emails, &sendable, self.max_batch) {
            let members: Vec<&OutgoingEmail> = group.iter().map(|&i| &emails[i]).collect();
            let outcome = self.send_group(&members).await;
            // A 400 or 413 for a multi-message request cannot be pinned on
            // one message; sending each alone lands the error on the message
            // that caused it instead of failing the others with it.
            let split = members.len() > 1
                && matches!(
                    &outcome,
                    Err(GroupError {
                        request_rejected: true,
                        ..
                    })
                );
            if split {
                for &i in &group {
                    let alone = self.send_group(&[&emails[i]]).await;
                    results[i] = Some(alone.map_err(|e| e.error));
                }
            } else {
                let outcome = outcome.map_err(|e| e.error);
                for &i in &group {
                    results[i] = Some(outcome.clone());
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SendError::transient("message was not sent"))))
            .collect()
    }
}

/// Splits `indices` into requests: same content, distinct recipient
/// addresses, at most `max` each; first-come order is kept within a group.
fn group_by_content(emails: &[OutgoingEmail], indices: &[usize], max: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<usize>, HashSet<String>)> = Vec::new();
    for &i in indices {
        let email = &emails[i];
        let address = email.to.email.to_string().to_ascii_lowercase();
        let open = groups.iter_mut().find(|(members, seen)| {
            members.len() < max
                && !seen.contains(&address)
                && emails[members[0]].same_content(email)
        });
        match open {
            Some((members, seen)) => {
                members.push(i);
                seen.insert(address);
            }
            None => groups.push((vec![i], HashSet::from([address]))),
        }
    }
    groups.into_iter().map(|(members, _)| members).collect()
}

fn address(mailbox: &Mailbox) -> Value {
    match &mailbox.name {
        Some(name) => json!({"email": mailbox.email.to_string(), "name": name}),
        None => json!({"email": mailbox.email.to_string()}),
    }
}

/// The request for messages that share content (the first one's).
fn request_body(emails: &[&OutgoingEmail]) -> Value {
    let first = emails[0];
    let personalizations: Vec<Value> = emails
        .iter()
        .map(|email| {
            let mut p = json!({"to": [address(&email.to)]});
            let headers: BTreeMap<String, String> = email
                .list_unsubscribe
                .iter()
                .flat_map(|u| {
                    [
                        ("List-Unsubscribe".to_owned(), u.header_value()),
                        (
                            "List-Unsubscribe-Post".to_owned(),
                            crate::message::LIST_UNSUBSCRIBE_POST.to_owned(),
                        ),
                    ]
                })
                .collect();
            if !headers.is_empty() {
                p["headers"] = json!(headers);
            }
            if !email.custom_args.is_empty() {
                p["custom_args"] = json!(email.custom_args);
            }
            p
        })
        .collect();
    // SendGrid requires text/plain before text/html and rejects empty values.
    let content: Vec<Value> = [("text/plain", &first.text), ("text/html", &first.html)]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(kind, value)| json!({"type": kind, "value": value}))
        .collect();
    let mut body = json!({
        "personalizations": personalizations,
        "from": address(&first.from),
        "subject": first.subject,
        "content": content,
    });
    if let Some(reply_to) = &first.reply_to {
        body["reply_to"] = address(reply_to);
    }
    body
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
    field: Option<String>,
}

fn classify(reply: &http::Reply) -> SendError {
    let status = reply.status;
    let parsed = serde_json::from_slice::<ErrorBody>(&reply.body)
        .ok()
        .filter(|b| !b.errors.is_empty());
    let detail = match &parsed {
        Some(body) => body
            .errors
            .iter()
            .map(|e| match (&e.message, &e.field) {
                (Some(m), Some(f)) => format!("{m} (field {f})"),
                (Some(m), None) => m.clone(),
                (None, Some(f)) => format!("invalid field {f}"),
                (None, None) => "unspecified error".to_owned(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        None => http::snippet(&reply.body),
    };
    let reason = format!("SendGrid answered {status}: {detail}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return SendError::Transient {
            retry_after: http::retry_after(&reply.headers),
            reason,
        };
    }
    // A 400 naming a personalization's `to` is about the address itself
    // (malformed, duplicated); anything else is about the request or account.
    let about_recipient = status == StatusCode::BAD_REQUEST
        && parsed.is_some_and(|b| {
            b.errors.iter().any(|e| {
                e.field.as_deref().is_some_and(|f| {
                    f.starts_with("personalizations") && f.split('.').any(|s| s == "to")
                })
            })
        });
    SendError::permanent(reason, about_recipient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::email;

    #[test]
    fn groups_share_content_and_never_repeat_an_address() {
        let mut emails = vec![
            email("a@example.com"),
            email("b@example.com"),
            email("A@example.com"),
            email("c@example.com"),
            email("d@example.com"),
        ];
        emails[3].html = "<p>other</p>".into();
        let indices: Vec<usize> = (0..emails.len()).collect();
        assert_eq!(
            group_by_content(&emails, &indices, 1000),
            vec![vec![0, 1, 4], vec![2], vec![3]]
        );
        assert_eq!(
            group_by_content(&emails, &indices, 2),
            vec![vec![0, 1], vec![2, 4], vec![3]]
        );
    }

    #[test]
    fn body_has_one_personalization_per_message() {
        let a = email("Ada <ada@example.com>");
        let mut b = email("bob@example.com");
        b.custom_args.insert("member_id".into(), "m8".into());
        b.list_unsubscribe = None;
        let body = request_body(&[&a, &b]);
        assert_eq!(body["personalizations"].as_array().unwrap().len(), 2);
        assert_eq!(
            body["personalizations"][0]["to"],
            json!([{"email": "ada@example.com", "name": "Ada"}])
        );
        assert_eq!(
            body["personalizations"][1]["custom_args"]["member_id"],
            "m8"
        );
        assert!(body["personalizations"][1].get("headers").is_none());
        assert_eq!(body["content"][0]["type"], "text/plain");
        assert_eq!(body["content"][1]["type"], "text/html");
        assert_eq!(body["reply_to"]["email"], "care@shop.example.com");
    }
}
