//! The ingest role's configuration (`[ingest]`) and wiring: the webhook
//! receivers' credentials, the event sink of the store+bus pairing, and
//! Herald's own subscribers (suppressions, statistics), which run in the
//! ingest role beside the receivers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_core::email_event::SourceName;
use herald_core::Clock;
use herald_router::ingest::EventSink;
use herald_router::subscribers::SubscriberSettings;
use herald_router::verify::{
    CredentialError, SendGridVerifier, SharedSecretAuth, StandardWebhooks, WebhookSecret,
};
use herald_server::webhooks::{WebhookReceivers, DEFAULT_MAX_BODY_BYTES};
use serde::{Deserialize, Serialize};

/// `[ingest]`: provider webhooks (role "ingest").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest webhook body accepted, in bytes; larger ones answer 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub sendgrid: SendGridConfig,
    #[serde(default)]
    pub sparkpost: SparkPostConfig,
    /// In-house senders posting to `/webhooks/generic/<source>`.
    #[serde(default)]
    pub generic: BTreeMap<String, GenericSourceConfig>,
    /// Messages Herald's own subscribers take per receive.
    #[serde(default = "default_subscriber_batch")]
    pub subscriber_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            sendgrid: SendGridConfig::default(),
            sparkpost: SparkPostConfig::default(),
            generic: BTreeMap::new(),
            subscriber_batch: default_subscriber_batch(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

fn default_subscriber_batch() -> usize {
    100
}

/// `[ingest.sendgrid]`: SendGrid's Signed Event Webhook.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    /// The verification key SendGrid shows for the webhook (base64 DER).
    /// Empty, with no file either: SendGrid webhooks answer 503.
    #[serde(default, serialize_with = "mask_nonempty")]
    pub public_key: String,
    /// A file holding the key instead.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// Refuse requests signed longer ago (or further ahead) than this; zero
    /// (the default) accepts any signing time, as SendGrid documents none.
    #[serde(default, with = "humantime_serde")]
    pub replay_window: Duration,
}

/// `[ingest.sparkpost]`: basic auth, a bearer token, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkPostConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default, serialize_with = "mask_nonempty")]
    pub password: String,
    #[serde(default, serialize_with = "mask_nonempty")]
    pub bearer_token: String,
}

/// `[ingest.generic.<source>]`: one in-house sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSourceConfig {
    /// The Standard Webhooks secret (`whsec_<base64>`).
    #[serde(default, serialize_with = "mask_nonempty")]
    pub secret: String,
    /// A file holding the secret instead.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Largest difference between the signing time and now.
    #[serde(default = "default_generic_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
}

fn default_generic_tolerance() -> Duration {
    StandardWebhooks::DEFAULT_TOLERANCE
}

fn mask_nonempty<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if value.is_empty() { "" } else { "***" })
}

/// A configured credential that cannot be used, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct IngestConfigError {
    key: String,
    message: String,
}

impl IngestConfigError {
    fn new(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// The receivers' checks, built from configuration.
pub struct Verifiers {
    pub sendgrid: Option<SendGridVerifier>,
    pub sparkpost: Option<SharedSecretAuth>,
    pub generic: BTreeMap<SourceName, StandardWebhooks>,
}

/// A value given inline or in a file (trimmed); empty when neither.
fn inline_or_file(
    key: &str,
    inline: &str,
    file: Option<&PathBuf>,
) -> Result<String, IngestConfigError> {
    match (inline.is_empty(), file) {
        (false, Some(_)) => Err(IngestConfigError::new(
            key,
            "give the value or a file, not both",
        )),
        (false, None) => Ok(inline.trim().to_owned()),
        (true, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                IngestConfigError::new(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        (true, None) => Ok(String::new()),
    }
}

impl IngestConfig {
    /// Checks every credential and builds the checks; run once at start.
    pub fn verifiers(&self) -> Result<Verifiers, IngestConfigError> {
        if self.max_body_bytes == 0 {
            return Err(IngestConfigError::new(
                "ingest.max_body_bytes",
                "must be at least 1",
            ));
        }
        if self.subscriber_batch == 0 || self.subscriber_batch > herald_bus::embedded::MAX_RECEIVE {
            return Err(IngestConfigError::new(
                "ingest.subscriber_batch",
                format!(
                    "must be between 1 and {}",
                    herald_bus::embedded::MAX_RECEIVE
                ),
            ));
        }
        let key = inline_or_file(
            "ingest.sendgrid.public_key",
            &self.sendgrid.public_key,
            self.sendgrid.public_key_file.as_ref(),
        )?;
        let sendgrid = if key.is_empty() {
            None
        } else {
            let verifier = SendGridVerifier::new(&key)
                .map_err(|e| IngestConfigError::new("ingest.sendgrid.public_key", e))?;
            Some(if self.sendgrid.replay_window.is_zero() {
                verifier
            } else {
                verifier.with_replay_window(self.sendgrid.replay_window)
            })
        };
        let sp = &self.sparkpost;
        let sparkpost = match (
            sp.username.is_empty() && sp.password.is_empty(),
            sp.bearer_token.is_empty(),
        ) {
            (true, true) => None,
            (basic_unset, bearer_unset) => {
                let basic = (!basic_unset).then_some((sp.username.as_str(), sp.password.as_str()));
                let bearer = (!bearer_unset).then_some(sp.bearer_token.as_str());
                Some(
                    SharedSecretAuth::new(basic, bearer).map_err(|e: CredentialError| {
                        IngestConfigError::new("ingest.sparkpost", e)
                    })?,
                )
            }
        };
        let mut generic = BTreeMap::new();
        for (name, source) in &self.generic {
            let key = format!("ingest.generic.{name}");
            let source_name =
                SourceName::parse(name.as_str()).map_err(|e| IngestConfigError::new(&key, e))?;
            let secret = inline_or_file(
                &format!("{key}.secret"),
                &source.secret,
                source.secret_file.as_ref(),
            )?;
            if secret.is_empty() {
                return Err(IngestConfigError::new(
                    format!("{key}.secret"),
                    "a configured source needs its secret",
                ));
            }
            let secret = WebhookSecret::parse(&secret)
                .map_err(|e| IngestConfigError::new(format!("{key}.secret"), e))?;
            generic.insert(
                source_name,
                StandardWebhooks::new(secret).with_tolerance(source.tolerance),
            );
        }
        Ok(Verifiers {
            sendgrid,
            sparkpost,
            generic,
        })
    }

    /// The receivers of the ingest role, storing into `sink`.
    pub fn receivers(
        &self,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
    ) -> Result<WebhookReceivers, IngestConfigError> {
        let Verifiers {
            sendgrid,
            sparkpost,
            generic,
        } = self.verifiers()?;
        Ok(WebhookReceivers {
            sink,
            sendgrid,
            sparkpost,
            generic,
            max_body_bytes: self.max_body_bytes,
            clock,
        })
    }

    pub fn subscriber_settings(&self) -> SubscriberSettings {
        SubscriberSettings {
            batch: self.subscriber_batch,
            ..SubscriberSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE";

    #[test]
    fn nothing_configured_means_no_receivers() {
        let v = IngestConfig::default().verifiers().unwrap();
        assert!(v.sendgrid.is_none() && v.sparkpost.is_none() && v.generic.is_empty());
    }

    #[test]
    fn bad_credentials_are_named_by_key() {
        let mut config = IngestConfig::default();
        config.sendgrid.public_key = FIXTURE_KEY.into();
        let err = config.verifiers().err().unwrap().to_string();
        assert!(err.starts_with("ingest.sendgrid.public_key:"), "{err}");

        let mut config = IngestConfig::default();
        config.sparkpost.password = "p".into();
        let err = config.verifiers().err().unwrap().to_string();
        assert!(err.starts_with("ingest.sparkpost:"), "{err}");

        let mut config = IngestConfig::default();
        config.generic.insert(
            "crm".into(),
            GenericSourceConfig {
                secret: "nope".into(),
                secret_file: None,
                tolerance: Duration::from_secs(60),
            },
        );
        let err = config.verifiers().err().unwrap().to_string();
        assert!(err.starts_with("ingest.generic.crm.secret:"), "{err}");

        let mut config = IngestConfig::default();
        config.generic.insert(
            "a/b".into(),
            GenericSourceConfig {
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                secret_file: None,
                tolerance: Duration::from_secs(60),
            },
        );
        let err = config.verifiers().err().unwrap().to_string();
        assert!(err.starts_with("ingest.generic.a/b:"), "{err}");
    }

    #[test]
    fn keys_come_from_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sendgrid.key");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/sendgrid/public_key.b64"
        );
        std::fs::copy(fixture, &path).unwrap();
        let mut config = IngestConfig::default();
        config.sendgrid.public_key_file = Some(path.clone());
        assert!(config.verifiers().unwrap().sendgrid.is_some());
        config.sendgrid.public_key = "x".into();
        let err = config.verifiers().err().unwrap().to_string();
        assert!(err.contains("not both"), "{err}");
        config.sendgrid.public_key.clear();
        config.sendgrid.public_key_file = Some(dir.path().join("missing"));
        let err = config.verifiers().err().unwrap().to_string();
        assert!(err.starts_with("ingest.sendgrid.public_key_file:"), "{err}");
    }
}
