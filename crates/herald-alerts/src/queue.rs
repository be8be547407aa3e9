//! The `brand-alert-emails` queue between the audience job and the mailer:
//! one message per member of an alert, and its dead-letter queue.

use bytes::Bytes;
use herald_bus::{Bus, BusError, OutgoingMessage, QueueConfig};
use herald_core::QueueName;
use serde::{Deserialize, Serialize};

/// The queue the audience job fills and the mailer drains.
pub const EMAIL_QUEUE: &str = "brand-alert-emails";

/// The dead-letter queue's attribute holding why a message landed there.
pub const REASON_ATTRIBUTE: &str = "reason";
/// The attribute naming the queue a dead letter came from.
pub const SOURCE_QUEUE_ATTRIBUTE: &str = "source_queue";
/// The attribute carrying the message's alert id, for peeking and filters.
pub const ALERT_ATTRIBUTE: &str = "alert_id";

/// Longest reason kept on a dead letter, in bytes.
const MAX_REASON_LEN: usize = 1_000;

/// One member's email of one alert: the body of a queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailJob {
    pub alert_id: String,
    pub member_id: String,
    /// The alert's brands the member's affinity reaches the threshold for,
    /// in the alert's order.
    pub brand_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed brand alert email message: {0}")]
pub struct MalformedJob(String);

impl EmailJob {
    /// The bus dedup key: a second enqueue of the same member for the same
    /// alert within the queue's dedup window is a no-op.
    pub fn dedup_key(&self) -> String {
        format!("{}:{}", self.alert_id, self.member_id)
    }

    pub fn to_message(&self) -> OutgoingMessage {
        let body = serde_json::to_vec(self).unwrap_or_default();
        OutgoingMessage::new(body)
            .dedup_key(self.dedup_key())
            .attribute(ALERT_ATTRIBUTE, self.alert_id.clone())
    }

    pub fn parse(body: &[u8]) -> Result<EmailJob, MalformedJob> {
        let job: EmailJob =
            serde_json::from_slice(body).map_err(|e| MalformedJob(e.to_string()))?;
        if job.alert_id.is_empty() || job.member_id.is_empty() {
            return Err(MalformedJob(
                "alert_id and member_id must not be empty".to_owned(),
            ));
        }
        Ok(job)
    }
}

/// The email queue's name.
pub fn email_queue() -> QueueName {
    QueueName::parse(EMAIL_QUEUE).expect("the email queue's name is valid")
}

/// Creates the email queue with `config` (or updates it), and its
/// dead-letter queue; returns the dead-letter queue's name.
pub async fn ensure_email_queue(
    bus: &dyn Bus,
    config: &QueueConfig,
) -> Result<QueueName, BusError> {
    let queue = email_queue();
    let dead_letter = match &config.dead_letter_queue {
        Some(name) => name.clone(),
        None => queue.default_dead_letter()?,
    };
    let config = QueueConfig {
        dead_letter_queue: Some(dead_letter.clone()),
        ..config.clone()
    };
    bus.ensure_queue(&queue, config).await?;
    Ok(dead_letter)
}

/// A copy of a message for the dead-letter queue, carrying why it failed.
pub fn dead_letter(body: Bytes, job: Option<&EmailJob>, reason: &str) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(body)
        .attribute(REASON_ATTRIBUTE, truncate(reason, MAX_REASON_LEN))
        .attribute(SOURCE_QUEUE_ATTRIBUTE, EMAIL_QUEUE);
    if let Some(job) = job {
        message = message
            .attribute(ALERT_ATTRIBUTE, job.alert_id.clone())
            .attribute("member_id", job.member_id.clone());
    }
    message
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> EmailJob {
        EmailJob {
            alert_id: "a1".into(),
            member_id: "m7".into(),
            brand_ids: vec!["acme".into(), "globex".into()],
        }
    }

    #[test]
    fn a_job_round_trips_with_its_dedup_key() {
        let message = job().to_message();
        assert_eq!(message.dedup_key.as_deref(), Some("a1:m7"));
        assert_eq!(message.attributes[ALERT_ATTRIBUTE], "a1");
        assert_eq!(EmailJob::parse(&message.body).unwrap(), job());
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        for (body, needle) in [
            (&b"not json"[..], "expected"),
            (br#"{"alert_id":"a","member_id":"m"}"#, "brand_ids"),
            (
                br#"{"alert_id":"","member_id":"m","brand_ids":[]}"#,
                "empty",
            ),
            (
                br#"{"alert_id":"a","member_id":"m","brand_ids":[],"x":1}"#,
                "unknown field",
            ),
            (
                br#"{"alert_id":1,"member_id":"m","brand_ids":[]}"#,
                "invalid type",
            ),
        ] {
            let err = EmailJob::parse(body).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn dead_letters_carry_the_reason_within_bounds() {
        let long = "é".repeat(MAX_REASON_LEN);
        let letter = dead_letter(Bytes::from_static(b"{}"), Some(&job()), &long);
        let reason = &letter.attributes[REASON_ATTRIBUTE];
        assert!(reason.len() <= MAX_REASON_LEN + '…'.len_utf8());
        assert!(reason.ends_with('…'));
        assert_eq!(letter.attributes["member_id"], "m7");
        assert_eq!(letter.attributes[SOURCE_QUEUE_ATTRIBUTE], EMAIL_QUEUE);
        let plain = dead_letter(Bytes::from_static(b"x"), None, "malformed");
        assert_eq!(plain.attributes[REASON_ATTRIBUTE], "malformed");
        assert!(!plain.attributes.contains_key(ALERT_ATTRIBUTE));
    }
}
