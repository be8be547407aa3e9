//! Announcing finished runs: a webhook signed with the Standard Webhooks
//! scheme (optionally with a Slack-compatible body), PagerDuty Events API
//! v2, and email through a sender the binary provides.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use herald_core::schedule::{should_notify, ChannelSpec, ProcessSpec, RunState, WebhookFormat};
use herald_core::Clock;
use herald_store::processes::{FinishedRun, Run};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Sends a plain-text email; the binary implements it with a configured
/// mail transport.
#[async_trait]
pub trait EmailSender: Send + Sync {
    async fn send(
        &self,
        transport: Option<&str>,
        to: &[String],
        subject: &str,
        text: &str,
    ) -> Result<(), String>;
}

/// Email through Herald's configured mail transports, one message per
/// address.
pub struct TransportEmail {
    pub transports: Arc<herald_alerts::Transports>,
    pub from: herald_mail::Mailbox,
    /// The right-hand side of generated Message-IDs.
    pub domain: String,
}

#[async_trait]
impl EmailSender for TransportEmail {
    async fn send(
        &self,
        transport: Option<&str>,
        to: &[String],
        subject: &str,
        text: &str,
    ) -> Result<(), String> {
        let (_, sender) = self.transports.get(transport).ok_or_else(|| {
            format!(
                "no mail transport named {:?}",
                transport.unwrap_or(self.transports.default_name())
            )
        })?;
        for address in to {
            let email = herald_mail::OutgoingEmail {
                from: self.from.clone(),
                to: address
                    .parse()
                    .map_err(|e| format!("{address:?} is not an address: {e}"))?,
                reply_to: None,
                subject: subject.to_owned(),
                html: format!("<pre>{}</pre>", escape_html(text)),
                text: text.to_owned(),
                list_unsubscribe: None,
                custom_args: Default::default(),
                message_id: format!("process-{}@{}", uuid::Uuid::now_v7().simple(), self.domain),
            };
            sender.send(&email).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub struct Notifier {
    client: reqwest::Client,
    email: Option<Arc<dyn EmailSender>>,
    clock: Arc<dyn Clock>,
}

/// One finished run and what it changed.
pub struct Finished<'a> {
    pub spec: &'a ProcessSpec,
    pub run: &'a Run,
    pub state: RunState,
    pub history: FinishedRun,
}

impl Notifier {
    pub fn new(email: Option<Arc<dyn EmailSender>>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            email,
            clock,
        }
    }

    /// Sends to every channel that wants this run; a channel that fails is
    /// logged and does not stop the others.
    pub async fn finished(&self, f: &Finished<'_>) {
        let announce = should_notify(f.spec.notify_when, f.history.previous, f.state);
        for channel in &f.spec.notify {
            let result = match channel {
                ChannelSpec::Pagerduty {
                    routing_key,
                    after_failures,
                    events_url,
                } => {
                    self.pagerduty(f, routing_key, *after_failures, events_url.as_deref())
                        .await
                }
                ChannelSpec::Webhook {
                    url,
                    secret,
                    format,
                } if announce => self.webhook(f, url, secret, *format).await,
                ChannelSpec::Email { to, transport } if announce => match &self.email {
                    Some(sender) => {
                        sender
                            .send(transport.as_deref(), to, &subject(f), &summary(f))
                            .await
                    }
                    None => Err("no mail transport is configured for notifications".into()),
                },
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(process = %f.run.process, run_id = %f.run.id, error = %e, "notification not sent");
            }
        }
    }

    /// Trigger once `after_failures` runs in a row failed; resolve on the
    /// first success after that. One incident per process (`dedup_key`).
    async fn pagerduty(
        &self,
        f: &Finished<'_>,
        routing_key: &str,
        after_failures: u32,
        events_url: Option<&str>,
    ) -> Result<(), String> {
        let action = match f.state {
            RunState::Failed if f.history.consecutive_failures >= after_failures => "trigger",
            RunState::Succeeded if f.history.previous == Some(RunState::Failed) => "resolve",
            _ => return Ok(()),
        };
        let mut event = json!({
            "routing_key": routing_key,
            "event_action": action,
            "dedup_key": format!("herald-process-{}", f.run.process),
        });
        if action == "trigger" {
            event["payload"] = json!({
                "summary": subject(f),
                "source": "herald-scheduler",
                "severity": "error",
                "component": f.run.process,
                "custom_details": {
                    "run_id": f.run.id,
                    "consecutive_failures": f.history.consecutive_failures,
                    "error": f.run.error,
                },
            });
        }
        let url = events_url.unwrap_or(PAGERDUTY_EVENTS_URL);
        let response = self
            .client
            .post(url)
            .json(&event)
            .send()
            .await
            .map_err(|e| format!("PagerDuty: {e}"))?;
        if response.status().as_u16() != 202 {
            return Err(format!("PagerDuty answered {}", response.status()));
        }
        Ok(())
    }

    async fn webhook(
        &self,
        f: &Finished<'_>,
        url: &str,
        secret: &str,
        format: WebhookFormat,
    ) -> Result<(), String> {
        let body = match format {
            WebhookFormat::Standard => json!({
                "type": "process.run.finished",
                "timestamp": rfc3339(self.clock.now()),
                "data": {
                    "process": f.run.process,
                    "run_id": f.run.id,
                    "state": f.state,
                    "previous_state": f.history.previous,
                    "consecutive_failures": f.history.consecutive_failures,
                    "error": f.run.error,
                },
            }),
            WebhookFormat::Slack => json!({ "text": summary(f) }),
        }
        .to_string();
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let timestamp = (self.clock.now().millis() / 1000).to_string();
        let signature = sign(secret, &id, &timestamp, &body)?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", &timestamp)
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("webhook {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("webhook {url} answered {}", response.status()));
        }
        Ok(())
    }
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
/// base64 part of a `whsec_` secret, as Standard Webhooks specifies.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &str) -> Result<String, String> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| BASE64.decode(k).ok())
        .ok_or("the webhook secret is not whsec_ followed by base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

fn subject(f: &Finished<'_>) -> String {
    format!("Herald process {} {}", f.run.process, f.state)
}

fn summary(f: &Finished<'_>) -> String {
    let mut text = format!(
        "Herald process `{}` run {} {}",
        f.run.process, f.run.id, f.state
    );
    if f.state == RunState::Failed {
        text.push_str(&format!(
            " ({} failed run(s) in a row)",
            f.history.consecutive_failures
        ));
    }
    if let Some(error) = &f.run.error {
        text.push_str(&format!(": {error}"));
    }
    text
}

fn rfc3339(t: herald_core::Timestamp) -> String {
    let millis = u64::try_from(t.millis()).unwrap_or_default();
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let timestamp = "1614265330";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, timestamp, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(sign("plain", id, timestamp, body).is_err());
    }
}
