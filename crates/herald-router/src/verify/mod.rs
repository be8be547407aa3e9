//! Authenticating webhook requests before anything reads them.
//!
//! A request enters as a [`Webhook<Unverified>`], whose body cannot be read.
//! The only way to a [`Webhook<Verified>`] is [`Webhook::verify`] with one of
//! the checks here, so code that takes a `Webhook<Verified>` can trust that
//! its body came from the configured sender:
//!
//! - [`SendGridVerifier`]: SendGrid's Signed Event Webhook (ECDSA P-256).
//! - [`StandardWebhooks`]: the Standard Webhooks HMAC scheme, for in-house
//!   senders and for Herald's own outgoing webhooks.
//! - [`SharedSecretAuth`]: HTTP basic auth or a bearer token (SparkPost).

mod auth;
mod sendgrid;
mod standard;

use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Timestamp;
use http::HeaderMap;

pub use auth::SharedSecretAuth;
pub use sendgrid::{
    SendGridSigner, SendGridVerifier, SENDGRID_SIGNATURE_HEADER, SENDGRID_TIMESTAMP_HEADER,
};
pub use standard::{
    StandardWebhooks, WebhookSecret, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};

/// Typestate: the request has not been checked yet.
#[derive(Debug)]
pub struct Unverified;

/// Typestate: the request passed a [`Verifier`].
#[derive(Debug)]
pub struct Verified;

/// A webhook request: its headers and raw body, byte for byte as received
/// (signatures cover the exact bytes, so the body must not be re-encoded).
#[derive(Debug)]
pub struct Webhook<State> {
    headers: HeaderMap,
    body: Bytes,
    state: PhantomData<State>,
}

impl<State> Webhook<State> {
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

impl Webhook<Unverified> {
    pub fn new(headers: HeaderMap, body: Bytes) -> Self {
        Self {
            headers,
            body,
            state: PhantomData,
        }
    }

    /// Runs `check`; `now` is the receiver's clock, used by replay windows.
    pub fn verify(
        self,
        check: &dyn Verifier,
        now: Timestamp,
    ) -> Result<Webhook<Verified>, VerifyError> {
        check.check(&self.headers, &self.body, now)?;
        Ok(Webhook {
            headers: self.headers,
            body: self.body,
            state: PhantomData,
        })
    }
}

impl Webhook<Verified> {
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn into_parts(self) -> (HeaderMap, Bytes) {
        (self.headers, self.body)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A way to authenticate a webhook request. Sealed: only the checks in this
/// module can turn a request into a [`Webhook<Verified>`].
pub trait Verifier: sealed::Sealed + Send + Sync {
    fn check(&self, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<(), VerifyError>;
}

/// Why a request was refused. Every variant means "answer 4xx and store
/// nothing"; [`VerifyError::code`] is stable for API bodies and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header {header} is missing")]
    MissingSignature { header: &'static str },
    #[error("header {header} is missing")]
    MissingTimestamp { header: &'static str },
    #[error("header {header} is missing")]
    MissingId { header: &'static str },
    #[error("header {header} is not a Unix time in seconds: {value:?}")]
    BadTimestamp { header: &'static str, value: String },
    #[error("header {header} is malformed: {reason}")]
    MalformedSignature {
        header: &'static str,
        reason: String,
    },
    #[error("the signature does not match the request")]
    BadSignature,
    #[error(
        "the request was signed {age_secs}s ago; requests older than {window_secs}s are refused"
    )]
    StaleTimestamp { age_secs: u64, window_secs: u64 },
    #[error("the request is dated {ahead_secs}s in the future; at most {window_secs}s of clock skew is allowed")]
    FutureTimestamp { ahead_secs: u64, window_secs: u64 },
    #[error("header authorization is missing")]
    MissingAuth,
    #[error("header authorization is malformed: {reason}")]
    MalformedAuth { reason: String },
    #[error("the credentials are wrong")]
    BadAuth,
}

impl VerifyError {
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature { .. } => "missing_signature",
            VerifyError::MissingTimestamp { .. } => "missing_timestamp",
            VerifyError::MissingId { .. } => "missing_webhook_id",
            VerifyError::BadTimestamp { .. } => "bad_timestamp",
            VerifyError::MalformedSignature { .. } => "malformed_signature",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::StaleTimestamp { .. } => "stale_timestamp",
            VerifyError::FutureTimestamp { .. } => "future_timestamp",
            VerifyError::MissingAuth => "missing_auth",
            VerifyError::MalformedAuth { .. } => "malformed_auth",
            VerifyError::BadAuth => "bad_auth",
        }
    }
}

/// A configured key or secret that cannot be used. Raised at start-up, never
/// per request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the SendGrid public key is not valid base64: {0}")]
    PublicKeyEncoding(String),
    #[error(
        "the SendGrid public key is not a P-256 public key in DER (SubjectPublicKeyInfo) form: {0}"
    )]
    PublicKey(String),
    #[error("the signing key is not a P-256 private key in PKCS#8 PEM form: {0}")]
    PrivateKey(String),
    #[error("the webhook secret must start with \"whsec_\"")]
    SecretPrefix,
    #[error("the webhook secret is not valid base64 after \"whsec_\": {0}")]
    SecretEncoding(String),
    #[error("the webhook secret is {0} bytes long; use 24 to 64 bytes")]
    SecretLength(usize),
    #[error("{0} must not be empty")]
    EmptyCredential(&'static str),
    #[error("the basic-auth username must not contain ':'")]
    UsernameColon,
    #[error("no credentials configured: set basic auth, a bearer token or both")]
    NoCredentials,
}

/// A header's value as text, or `None` when absent. A value that is not
/// visible ASCII is reported through `malformed`.
fn header<'h, E>(
    headers: &'h HeaderMap,
    name: &'static str,
    malformed: impl FnOnce(String) -> E,
) -> Result<Option<&'h str>, E> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| malformed(format!("header {name} is not visible ASCII"))),
    }
}

/// Parses a Unix-seconds timestamp header.
fn unix_seconds(name: &'static str, value: &str) -> Result<i64, VerifyError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| VerifyError::BadTimestamp {
            header: name,
            value: value.to_owned(),
        })
}

/// Refuses a signing time further than `window` from `now`, either way.
fn check_window(signed_at_secs: i64, now: Timestamp, window: Duration) -> Result<(), VerifyError> {
    let signed_at_ms = signed_at_secs.saturating_mul(1000);
    let window_secs = window.as_secs();
    let window_ms = herald_core::time::duration_millis(window);
    let diff_ms = now.millis().saturating_sub(signed_at_ms);
    if diff_ms > window_ms {
        Err(VerifyError::StaleTimestamp {
            age_secs: u64::try_from(diff_ms / 1000).unwrap_or(u64::MAX),
            window_secs,
        })
    } else if diff_ms < -window_ms {
        Err(VerifyError::FutureTimestamp {
            ahead_secs: u64::try_from(diff_ms.saturating_neg() / 1000).unwrap_or(u64::MAX),
            window_secs,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_inclusive_and_two_sided() {
        let now = Timestamp(1_000_000_000);
        let w = Duration::from_secs(300);
        assert_eq!(check_window(1_000_000 - 300, now, w), Ok(()));
        assert_eq!(check_window(1_000_000 + 300, now, w), Ok(()));
        assert_eq!(
            check_window(1_000_000 - 301, now, w),
            Err(VerifyError::StaleTimestamp {
                age_secs: 301,
                window_secs: 300
            })
        );
        assert_eq!(
            check_window(1_000_000 + 400, now, w),
            Err(VerifyError::FutureTimestamp {
                ahead_secs: 400,
                window_secs: 300
            })
        );
    }

    #[test]
    fn timestamps_must_be_non_negative_integers() {
        assert_eq!(unix_seconds("t", "1795000060"), Ok(1_795_000_060));
        for bad in ["", "-1", "1.5", "soon", "99999999999999999999"] {
            let err = unix_seconds("t", bad).unwrap_err();
            assert_eq!(err.code(), "bad_timestamp", "{bad}");
        }
    }
}
