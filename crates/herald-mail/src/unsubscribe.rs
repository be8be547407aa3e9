//! Signed one-click unsubscribe tokens (RFC 8058).
//!
//! A token is `base64url(alert_id) "." base64url(member_id) "." base64url(mac)`
//! where `mac` is HMAC-SHA256 over a versioned, length-prefixed encoding of
//! both ids. It carries the ids itself, so the unsubscribe endpoint needs no
//! lookup to know whom it concerns, and only Herald can mint one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted signing key: HMAC-SHA256's own output size.
pub const MIN_KEY_LEN: usize = 32;
/// Longest id accepted inside a token.
pub const MAX_ID_LEN: usize = 128;
/// Longest token `verify` looks at; anything longer is rejected unread.
pub const MAX_TOKEN_LEN: usize = 512;

const DOMAIN: &[u8] = b"herald-unsubscribe-v1\0";
const MAC_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsubscribeError {
    #[error("unsubscribe signing key is {0} bytes; it must be at least {MIN_KEY_LEN}")]
    KeyTooShort(usize),
    #[error("{which} id is {len} bytes; it must be between 1 and {MAX_ID_LEN}")]
    BadId { which: &'static str, len: usize },
    #[error("unsubscribe token is malformed: {0}")]
    Malformed(&'static str),
    #[error("unsubscribe token signature does not match")]
    BadSignature,
}

/// Who a verified token unsubscribes, and from which alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeClaim {
    pub alert_id: String,
    pub member_id: String,
}

/// Mints and verifies tokens with one secret key.
#[derive(Clone)]
pub struct UnsubscribeSigner {
    mac: HmacSha256,
}

impl std::fmt::Debug for UnsubscribeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsubscribeSigner { key: [redacted] }")
    }
}

impl UnsubscribeSigner {
    pub fn new(key: &[u8]) -> Result<Self, UnsubscribeError> {
        if key.len() < MIN_KEY_LEN {
            return Err(UnsubscribeError::KeyTooShort(key.len()));
        }
        let mac = HmacSha256::new_from_slice(key)
            .map_err(|_| UnsubscribeError::KeyTooShort(key.len()))?;
        Ok(Self { mac })
    }

    pub fn token(&self, alert_id: &str, member_id: &str) -> Result<String, UnsubscribeError> {
        check_id("alert", alert_id)?;
        check_id("member", member_id)?;
        let tag = self.keyed(alert_id, member_id).finalize().into_bytes();
        Ok(format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(alert_id),
            URL_SAFE_NO_PAD.encode(member_id),
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// `{base_url}/{token}`, the URL for the email's unsubscribe link and
    /// its `List-Unsubscribe` header.
    pub fn url(
        &self,
        base_url: &str,
        alert_id: &str,
        member_id: &str,
    ) -> Result<String, UnsubscribeError> {
        let token = self.token(alert_id, member_id)?;
        Ok(format!("{}/{token}", base_url.trim_end_matches('/')))
    }

    /// Checks the signature in constant time and returns the ids it covers.
    pub fn verify(&self, token: &str) -> Result<UnsubscribeClaim, UnsubscribeError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(UnsubscribeError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(alert), Some(member), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(UnsubscribeError::Malformed(
                "expected three dot-separated parts",
            ));
        };
        let decode = |part: &str, what: &'static str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| UnsubscribeError::Malformed(what))
        };
        let alert_id = String::from_utf8(decode(alert, "alert id is not base64url")?)
            .map_err(|_| UnsubscribeError::Malformed("alert id is not UTF-8"))?;
        let member_id = String::from_utf8(decode(member, "member id is not base64url")?)
            .map_err(|_| UnsubscribeError::Malformed("member id is not UTF-8"))?;
        let tag = decode(tag, "signature is not base64url")?;
        if tag.len() != MAC_LEN {
            return Err(UnsubscribeError::Malformed(
                "signature has the wrong length",
            ));
        }
        check_id("alert", &alert_id)?;
        check_id("member", &member_id)?;
        self.keyed(&alert_id, &member_id)
            .verify_slice(&tag)
            .map_err(|_| UnsubscribeError::BadSignature)?;
        Ok(UnsubscribeClaim {
            alert_id,
            member_id,
        })
    }

    fn keyed(&self, alert_id: &str, member_id: &str) -> HmacSha256 {
        // Length-prefixing the first id keeps ("ab", "c") and ("a", "bc")
        // from signing the same bytes.
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&(alert_id.len() as u32).to_be_bytes());
        mac.update(alert_id.as_bytes());
        mac.update(member_id.as_bytes());
        mac
    }
}

fn check_id(which: &'static str, id: &str) -> Result<(), UnsubscribeError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(UnsubscribeError::BadId {
            which,
            len: id.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn signer() -> UnsubscribeSigner {
        UnsubscribeSigner::new(KEY).unwrap()
    }

    #[test]
    fn round_trip() {
        let s = signer();
        let token = s.token("alert-1", "member-42").unwrap();
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert_eq!(
            s.verify(&token).unwrap(),
            UnsubscribeClaim {
                alert_id: "alert-1".into(),
                member_id: "member-42".into()
            }
        );
        assert_eq!(
            s.url("https://h.example/u/", "alert-1", "member-42")
                .unwrap(),
            format!("https://h.example/u/{token}")
        );
    }

    #[test]
    fn short_keys_and_bad_ids_are_refused() {
        assert_eq!(
            UnsubscribeSigner::new(&KEY[..31]).unwrap_err(),
            UnsubscribeError::KeyTooShort(31)
        );
        let s = signer();
        assert_eq!(
            s.token("", "m").unwrap_err(),
            UnsubscribeError::BadId {
                which: "alert",
                len: 0
            }
        );
        assert!(s.token("a", &"m".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn every_flipped_character_is_rejected() {
        let s = signer();
        let token = s.token("alert-1", "member-42").unwrap();
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if tampered == token {
                continue;
            }
            assert!(s.verify(&tampered).is_err(), "accepted {tampered}");
        }
    }

    #[test]
    fn forged_and_swapped_tokens_are_rejected() {
        let s = signer();
        let other = UnsubscribeSigner::new(b"another key that is long enough!").unwrap();
        let forged = other.token("alert-1", "member-42").unwrap();
        assert_eq!(
            s.verify(&forged).unwrap_err(),
            UnsubscribeError::BadSignature
        );

        // Another member's signature on this member's ids.
        let mine = s.token("alert-1", "member-42").unwrap();
        let theirs = s.token("alert-1", "member-43").unwrap();
        let sig = theirs.rsplit('.').next().unwrap();
        let (ids, _) = mine.rsplit_once('.').unwrap();
        assert_eq!(
            s.verify(&format!("{ids}.{sig}")).unwrap_err(),
            UnsubscribeError::BadSignature
        );

        // Moving bytes between the two ids changes the signed message.
        let shifted = s.token("ab", "c").unwrap();
        let sig = shifted.rsplit('.').next().unwrap();
        let moved = format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode("a"),
            URL_SAFE_NO_PAD.encode("bc")
        );
        assert_eq!(
            s.verify(&moved).unwrap_err(),
            UnsubscribeError::BadSignature
        );
    }

    #[test]
    fn malformed_tokens_say_why() {
        let s = signer();
        let good = s.token("a", "m").unwrap();
        let truncated = &good[..good.len() - 4];
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "three dot-separated parts"),
            ("a.b".into(), "three dot-separated parts"),
            (format!("{good}.x"), "three dot-separated parts"),
            ("!!.bQ.AAAA".into(), "alert id is not base64url"),
            (truncated.to_owned(), "wrong length"),
            (
                format!(
                    "{}.bQ.{}",
                    URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
                    "A".repeat(43)
                ),
                "not UTF-8",
            ),
            (format!(".bQ.{}", "A".repeat(43)), "alert id is 0 bytes"),
            ("x".repeat(MAX_TOKEN_LEN + 1), "too long"),
        ];
        for (token, reason) in cases {
            let err = s.verify(&token).unwrap_err();
            assert!(err.to_string().contains(reason), "{token:?}: {err}");
        }
    }
}
