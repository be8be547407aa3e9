//! SendGrid's Signed Event Webhook: an ECDSA P-256 / SHA-256 signature over
//! the timestamp header's bytes followed by the raw body, sent base64 of DER
//! in a header and checked with the base64 DER public key shown in
//! SendGrid's settings.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use herald_core::Timestamp;
use http::HeaderMap;
use p256::ecdsa::signature::{Signer, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};

use super::{check_window, header, sealed, unix_seconds, CredentialError, Verifier, VerifyError};

pub const SENDGRID_SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const SENDGRID_TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// Checks SendGrid signatures with the configured public key.
#[derive(Clone)]
pub struct SendGridVerifier {
    key: VerifyingKey,
    replay_window: Option<Duration>,
}

impl fmt::Debug for SendGridVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGridVerifier")
            .field("replay_window", &self.replay_window)
            .finish_non_exhaustive()
    }
}

impl SendGridVerifier {
    /// `public_key_b64`: the key as SendGrid shows it (base64 of the DER
    /// SubjectPublicKeyInfo). Surrounding whitespace is ignored.
    pub fn new(public_key_b64: &str) -> Result<Self, CredentialError> {
        let der = BASE64
            .decode(public_key_b64.trim())
            .map_err(|e| CredentialError::PublicKeyEncoding(e.to_string()))?;
        let key = VerifyingKey::from_public_key_der(&der)
            .map_err(|e| CredentialError::PublicKey(e.to_string()))?;
        Ok(Self {
            key,
            replay_window: None,
        })
    }

    /// Also refuse requests signed more than `window` before or after `now`.
    /// Off by default: SendGrid retries a failed post for hours, and a window
    /// shorter than that could refuse a retry that still carries the first
    /// attempt's timestamp.
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = Some(window);
        self
    }
}

impl sealed::Sealed for SendGridVerifier {}

impl Verifier for SendGridVerifier {
    fn check(&self, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<(), VerifyError> {
        let malformed_signature = |reason| VerifyError::MalformedSignature {
            header: SENDGRID_SIGNATURE_HEADER,
            reason,
        };
        let signature = header(headers, SENDGRID_SIGNATURE_HEADER, malformed_signature)?
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature {
                header: SENDGRID_SIGNATURE_HEADER,
            })?;
        let timestamp = header(headers, SENDGRID_TIMESTAMP_HEADER, |_| {
            VerifyError::BadTimestamp {
                header: SENDGRID_TIMESTAMP_HEADER,
                value: "(not visible ASCII)".to_owned(),
            }
        })?
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::MissingTimestamp {
            header: SENDGRID_TIMESTAMP_HEADER,
        })?;
        let signed_at = unix_seconds(SENDGRID_TIMESTAMP_HEADER, timestamp)?;
        if let Some(window) = self.replay_window {
            check_window(signed_at, now, window)?;
        }
        let der = BASE64
            .decode(signature)
            .map_err(|e| malformed_signature(format!("not base64: {e}")))?;
        let signature = Signature::from_der(&der)
            .map_err(|_| malformed_signature("not a DER-encoded ECDSA signature".to_owned()))?;
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        self.key
            .verify(&signed, &signature)
            .map_err(|_| VerifyError::BadSignature)
    }
}

/// Signs payloads the way SendGrid does; for tests and local tools that post
/// sample events to a receiver.
#[derive(Clone)]
pub struct SendGridSigner {
    key: SigningKey,
}

impl fmt::Debug for SendGridSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGridSigner").finish_non_exhaustive()
    }
}

impl SendGridSigner {
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CredentialError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| CredentialError::PrivateKey(e.to_string()))
    }

    pub fn from_key(key: SigningKey) -> Self {
        Self { key }
    }

    /// The value of the signature header for this timestamp header value and body.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        let signature: Signature = self.key.sign(&signed);
        BASE64.encode(signature.to_der().as_bytes())
    }

    /// The matching public key in the form [`SendGridVerifier::new`] takes.
    pub fn public_key_b64(&self) -> String {
        let der = self
            .key
            .verifying_key()
            .to_public_key_der()
            .expect("a P-256 public key always encodes as DER");
        BASE64.encode(der.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn signer(seed: u8) -> SendGridSigner {
        let key = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        SendGridSigner::from_key(key)
    }

    fn headers(timestamp: Option<&str>, signature: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = timestamp {
            h.insert(SENDGRID_TIMESTAMP_HEADER, HeaderValue::from_str(t).unwrap());
        }
        if let Some(s) = signature {
            h.insert(SENDGRID_SIGNATURE_HEADER, HeaderValue::from_str(s).unwrap());
        }
        h
    }

    const NOW: Timestamp = Timestamp(1_795_000_060_000);

    #[test]
    fn round_trip_and_tamper() {
        let s = signer(7);
        let v = SendGridVerifier::new(&s.public_key_b64()).unwrap();
        let sig = s.sign("1795000060", b"[]");
        assert_eq!(
            v.check(&headers(Some("1795000060"), Some(&sig)), b"[]", NOW),
            Ok(())
        );
        assert_eq!(
            v.check(&headers(Some("1795000060"), Some(&sig)), b"[ ]", NOW),
            Err(VerifyError::BadSignature)
        );
        let other = SendGridVerifier::new(&signer(8).public_key_b64()).unwrap();
        assert_eq!(
            other.check(&headers(Some("1795000060"), Some(&sig)), b"[]", NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn refuses_unusable_keys() {
        assert!(matches!(
            SendGridVerifier::new("%%%"),
            Err(CredentialError::PublicKeyEncoding(_))
        ));
        assert!(matches!(
            SendGridVerifier::new(&BASE64.encode(b"not a key")),
            Err(CredentialError::PublicKey(_))
        ));
        assert!(matches!(
            SendGridSigner::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CredentialError::PrivateKey(_))
        ));
    }

    #[test]
    fn header_problems_have_their_own_codes() {
        let s = signer(7);
        let v = SendGridVerifier::new(&s.public_key_b64()).unwrap();
        let sig = s.sign("1795000060", b"[]");
        let cases = [
            (headers(Some("1795000060"), None), "missing_signature"),
            (headers(Some("1795000060"), Some("")), "missing_signature"),
            (headers(None, Some(&sig)), "missing_timestamp"),
            (headers(Some("yesterday"), Some(&sig)), "bad_timestamp"),
            (
                headers(Some("1795000060"), Some("not-base64-!!")),
                "malformed_signature",
            ),
            (
                headers(Some("1795000060"), Some(&BASE64.encode([1, 2, 3]))),
                "malformed_signature",
            ),
        ];
        for (h, code) in cases {
            assert_eq!(v.check(&h, b"[]", NOW).unwrap_err().code(), code, "{h:?}");
        }
    }

    #[test]
    fn debug_does_not_print_keys() {
        let s = signer(7);
        let v = SendGridVerifier::new(&s.public_key_b64()).unwrap();
        assert_eq!(
            format!("{v:?}"),
            "SendGridVerifier { replay_window: None, .. }"
        );
        assert_eq!(format!("{s:?}"), "SendGridSigner { .. }");
    }
}
