//! Transports hand an [`OutgoingEmail`] to whatever delivers it: a folder of
//! `.eml` files (the default), an SMTP relay, SendGrid or SparkPost.
//!
//! Each is chosen by a [`TransportConfig`] that [`TransportConfig::build`]
//! turns into an `Arc<dyn Transport>`. Errors say what to do next:
//! [`SendError::Transient`] means retry later, [`SendError::Permanent`]
//! means give up (dead-letter the message) and, when `suppress_address` is
//! set, stop mailing that address.

mod http;
pub mod outbox;
pub mod sendgrid;
pub mod smtp;
pub mod sparkpost;

use std::sync::Arc;
use std::time::Duration;

use crate::message::{MessageError, OutgoingEmail};

pub use outbox::{OutboxConfig, OutboxTransport};
pub use sendgrid::{SendGridConfig, SendGridTransport};
pub use smtp::{SmtpConfig, SmtpSecurity, SmtpTransport};
pub use sparkpost::{SparkPostConfig, SparkPostTransport};

/// What the transport learned when the message was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The provider's id for the message or request (SendGrid's
    /// `X-Message-Id`, SparkPost's transmission id, the SMTP server's reply,
    /// the outbox file path), for matching provider events and for support.
    pub provider_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: network trouble, rate limits, 4xx SMTP replies, 5xx
    /// API responses. `retry_after` is the provider's hint, when it gave one.
    #[error("transient send failure: {reason}")]
    Transient {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Retrying the same message will fail again. `suppress_address` is set
    /// when the failure is about the recipient (unknown mailbox, rejected
    /// address) rather than the message or Herald's configuration.
    #[error("permanent send failure: {reason}")]
    Permanent {
        reason: String,
        suppress_address: bool,
    },
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }

    pub fn transient(reason: impl Into<String>) -> Self {
        SendError::Transient {
            retry_after: None,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>, suppress_address: bool) -> Self {
        SendError::Permanent {
            reason: reason.into(),
            suppress_address,
        }
    }
}

impl From<MessageError> for SendError {
    fn from(err: MessageError) -> Self {
        SendError::permanent(format!("invalid message: {err}"), false)
    }
}

#[async_trait::async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// `outbox`, `smtp`, `sendgrid` or `sparkpost`, for logs and metrics.
    fn kind(&self) -> &'static str;

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError>;

    /// How many emails a sender with `concurrency` sends in flight should
    /// hand to each [`Self::send_batch`] call; 1 (the default) sends each
    /// on its own with [`Self::send`].
    fn batch_size(&self, _concurrency: usize) -> usize {
        1
    }

    /// Sends several messages; one result per message, in order. Transports
    /// that can send many messages per request override it.
    async fn send_batch(&self, emails: &[OutgoingEmail]) -> Vec<Result<SendReceipt, SendError>> {
        let mut results = Vec::with_capacity(emails.len());
        for email in emails {
            results.push(self.send(email).await);
        }
        results
    }
}

/// One configured transport, e.g. in TOML:
///
/// ```toml
/// kind = "smtp"
/// host = "smtp.example.com"
/// security = "starttls"
/// username = "herald"
/// password = "..."        # better from HERALD_* or a file
/// rate_limit_per_second = 20
/// ```
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TransportConfig {
    Outbox(OutboxConfig),
    Smtp(SmtpConfig),
    Sendgrid(SendGridConfig),
    Sparkpost(SparkPostConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("outbox folder {path}: {source}")]
    Outbox {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// Secrets print as `***` when a configuration is shown.
pub(crate) fn mask_secret<S: serde::Serializer>(
    _secret: &secrecy::SecretString,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str("***")
}

pub(crate) fn mask_optional_secret<S: serde::Serializer>(
    secret: &Option<secrecy::SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

impl TransportConfig {
    pub fn build(&self) -> Result<Arc<dyn Transport>, BuildError> {
        Ok(match self {
            TransportConfig::Outbox(c) => Arc::new(OutboxTransport::new(c)?),
            TransportConfig::Smtp(c) => Arc::new(SmtpTransport::new(c)?),
            TransportConfig::Sendgrid(c) => Arc::new(SendGridTransport::new(c)?),
            TransportConfig::Sparkpost(c) => Arc::new(SparkPostTransport::new(c)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_from_toml_and_reject_unknown_keys() {
        let smtp: TransportConfig = toml::from_str(
            r#"
            kind = "smtp"
            host = "smtp.example.com"
            security = "tls"
            username = "herald"
            password = "s3cret"
            rate_limit_per_second = 20
            timeout = "10s"
            "#,
        )
        .unwrap();
        let TransportConfig::Smtp(c) = &smtp else {
            panic!("{smtp:?}")
        };
        assert_eq!(c.port(), 465);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(
            !format!("{smtp:?}").contains("s3cret"),
            "secrets stay out of Debug"
        );

        let sg: TransportConfig =
            toml::from_str("kind = \"sendgrid\"\napi_key = \"SG.x\"").unwrap();
        let TransportConfig::Sendgrid(c) = sg else {
            panic!()
        };
        assert_eq!(c.base_url, "https://api.sendgrid.com");
        assert_eq!(c.max_batch, 1000);

        let err = toml::from_str::<TransportConfig>("kind = \"outbox\"\ndir = \"x\"\ndirr = 1")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `dirr`"), "{err}");
        let err = toml::from_str::<TransportConfig>("kind = \"pigeon\"").unwrap_err();
        assert!(err.to_string().contains("pigeon"), "{err}");
        let err = toml::from_str::<TransportConfig>("kind = \"sparkpost\"").unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
    }

    #[test]
    fn build_rejects_bad_settings_naming_the_field() {
        let cases = [
            (
                "kind = \"sendgrid\"\napi_key = \"k\"\nbase_url = \"ftp://x\"",
                "base_url",
            ),
            (
                "kind = \"sendgrid\"\napi_key = \"k\"\nmax_batch = 1001",
                "max_batch",
            ),
            ("kind = \"sendgrid\"\napi_key = \"\"", "api_key"),
            (
                "kind = \"sparkpost\"\napi_key = \"k\"\nbase_url = \"not a url\"",
                "base_url",
            ),
            ("kind = \"smtp\"\nhost = \"\"", "host"),
            (
                "kind = \"smtp\"\nhost = \"h\"\nusername = \"u\"",
                "password",
            ),
            (
                "kind = \"smtp\"\nhost = \"h\"\nrate_limit_per_second = 0",
                "rate_limit_per_second",
            ),
            ("kind = \"smtp\"\nhost = \"h\"\npool_size = 0", "pool_size"),
            (
                "kind = \"smtp\"\nhost = \"h\"\nca_file = \"/nonexistent/ca.pem\"",
                "ca_file",
            ),
        ];
        for (toml_text, field) in cases {
            let config: TransportConfig = toml::from_str(toml_text).unwrap();
            let err = config.build().unwrap_err();
            assert!(err.to_string().starts_with(field), "{toml_text}: {err}");
        }
    }
}
