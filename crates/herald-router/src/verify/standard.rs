//! Standard Webhooks (standardwebhooks.com): HMAC-SHA256 with a shared
//! `whsec_` secret over `{webhook-id}.{webhook-timestamp}.{body}`, sent as
//! a space-separated list of `v1,<base64>` signatures so a sender can sign
//! with an old and a new secret while rotating.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use herald_core::Timestamp;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{check_window, header, sealed, unix_seconds, CredentialError, Verifier, VerifyError};

pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";

/// A Standard Webhooks signing secret: `whsec_` followed by base64 of 24 to
/// 64 random bytes (the spec's recommended sizes).
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    pub fn parse(secret: &str) -> Result<Self, CredentialError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(CredentialError::SecretPrefix)?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|e| CredentialError::SecretEncoding(e.to_string()))?;
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CredentialError> {
        if (24..=64).contains(&bytes.len()) {
            Ok(Self(bytes))
        } else {
            Err(CredentialError::SecretLength(bytes.len()))
        }
    }

    /// The `whsec_` form, to hand to a sender.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }
}

/// Signs and verifies Standard Webhooks requests with one secret.
#[derive(Debug, Clone)]
pub struct StandardWebhooks {
    secret: WebhookSecret,
    tolerance: Duration,
}

impl StandardWebhooks {
    /// The spec's default tolerance between the signing time and `now`.
    pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

    pub fn new(secret: WebhookSecret) -> Self {
        Self {
            secret,
            tolerance: Self::DEFAULT_TOLERANCE,
        }
    }

    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The `webhook-signature` value (`v1,<base64>`) for a message.
    pub fn sign(&self, id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        format!("v1,{}", BASE64.encode(self.mac(id, timestamp_secs, body)))
    }

    fn mac(&self, id: &str, timestamp_secs: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret.0)
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl sealed::Sealed for StandardWebhooks {}

impl Verifier for StandardWebhooks {
    fn check(&self, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<(), VerifyError> {
        let malformed_signature = |reason| VerifyError::MalformedSignature {
            header: WEBHOOK_SIGNATURE_HEADER,
            reason,
        };
        let id = header(headers, WEBHOOK_ID_HEADER, |reason| {
            VerifyError::MalformedSignature {
                header: WEBHOOK_ID_HEADER,
                reason,
            }
        })?
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::MissingId {
            header: WEBHOOK_ID_HEADER,
        })?;
        let timestamp = header(headers, WEBHOOK_TIMESTAMP_HEADER, |_| {
            VerifyError::BadTimestamp {
                header: WEBHOOK_TIMESTAMP_HEADER,
                value: "(not visible ASCII)".to_owned(),
            }
        })?
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::MissingTimestamp {
            header: WEBHOOK_TIMESTAMP_HEADER,
        })?;
        let signatures = header(headers, WEBHOOK_SIGNATURE_HEADER, malformed_signature)?
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature {
                header: WEBHOOK_SIGNATURE_HEADER,
            })?;
        let signed_at = unix_seconds(WEBHOOK_TIMESTAMP_HEADER, timestamp)?;
        check_window(signed_at, now, self.tolerance)?;

        let expected = self.mac(id, signed_at, body);
        let mut v1_seen = false;
        let mut matched = false;
        for entry in signatures.split(' ').filter(|e| !e.is_empty()) {
            let Some(("v1", encoded)) = entry.split_once(',') else {
                continue;
            };
            v1_seen = true;
            if let Ok(candidate) = BASE64.decode(encoded) {
                matched |= bool::from(candidate.ct_eq(&expected));
            }
        }
        if matched {
            Ok(())
        } else if v1_seen {
            Err(VerifyError::BadSignature)
        } else {
            Err(malformed_signature(
                "no v1 signature in the list".to_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked() {
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            CredentialError::SecretPrefix
        );
        assert!(matches!(
            WebhookSecret::parse("whsec_!!!"),
            Err(CredentialError::SecretEncoding(_))
        ));
        assert_eq!(
            WebhookSecret::parse(&format!("whsec_{}", BASE64.encode([1u8; 16]))).unwrap_err(),
            CredentialError::SecretLength(16)
        );
        assert_eq!(
            WebhookSecret::from_bytes(vec![0; 65]).unwrap_err(),
            CredentialError::SecretLength(65)
        );
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(s.expose(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(format!("{s:?}"), "WebhookSecret(..)");
    }
}
