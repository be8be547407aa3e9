//! Shared-secret authentication for senders that do not sign (SparkPost):
//! HTTP basic auth, a bearer token, or either.
//!
//! Only SHA-256 digests of the configured credentials are kept, and the
//! digests of what a request presents are compared in constant time, so
//! neither the content nor the length of a secret leaks through timing.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use herald_core::Timestamp;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{sealed, CredentialError, Verifier, VerifyError};

type Sha = [u8; 32];

fn digest(secret: &[u8]) -> Sha {
    Sha256::digest(secret).into()
}

#[derive(Clone)]
pub struct SharedSecretAuth {
    basic: Option<(Sha, Sha)>,
    bearer: Option<Sha>,
}

impl std::fmt::Debug for SharedSecretAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSecretAuth")
            .field("basic", &self.basic.is_some())
            .field("bearer", &self.bearer.is_some())
            .finish()
    }
}

impl SharedSecretAuth {
    /// Accepts whichever of the given credentials a request presents.
    pub fn new(basic: Option<(&str, &str)>, bearer: Option<&str>) -> Result<Self, CredentialError> {
        let basic = basic
            .map(|(user, password)| {
                if user.is_empty() {
                    return Err(CredentialError::EmptyCredential("the basic-auth username"));
                }
                if user.contains(':') {
                    return Err(CredentialError::UsernameColon);
                }
                if password.is_empty() {
                    return Err(CredentialError::EmptyCredential("the basic-auth password"));
                }
                Ok((digest(user.as_bytes()), digest(password.as_bytes())))
            })
            .transpose()?;
        let bearer = bearer
            .map(|token| {
                if token.is_empty() {
                    Err(CredentialError::EmptyCredential("the bearer token"))
                } else {
                    Ok(digest(token.as_bytes()))
                }
            })
            .transpose()?;
        if basic.is_none() && bearer.is_none() {
            return Err(CredentialError::NoCredentials);
        }
        Ok(Self { basic, bearer })
    }

    pub fn basic(user: &str, password: &str) -> Result<Self, CredentialError> {
        Self::new(Some((user, password)), None)
    }

    pub fn bearer(token: &str) -> Result<Self, CredentialError> {
        Self::new(None, Some(token))
    }

    fn check_basic(&self, encoded: &str) -> Result<(), VerifyError> {
        let malformed = |reason: &str| VerifyError::MalformedAuth {
            reason: reason.to_owned(),
        };
        let decoded = BASE64
            .decode(encoded)
            .map_err(|_| malformed("basic credentials are not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| malformed("basic credentials are not UTF-8"))?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| {
            malformed("basic credentials have no ':' between username and password")
        })?;
        let (want_user, want_password) = self.basic.as_ref().ok_or(VerifyError::BadAuth)?;
        // Both halves are always compared so a right username is not told
        // apart from a wrong one by timing.
        let ok: Choice = digest(user.as_bytes()).ct_eq(want_user)
            & digest(password.as_bytes()).ct_eq(want_password);
        if bool::from(ok) {
            Ok(())
        } else {
            Err(VerifyError::BadAuth)
        }
    }

    fn check_bearer(&self, token: &str) -> Result<(), VerifyError> {
        let want = self.bearer.as_ref().ok_or(VerifyError::BadAuth)?;
        if bool::from(digest(token.as_bytes()).ct_eq(want)) {
            Ok(())
        } else {
            Err(VerifyError::BadAuth)
        }
    }
}

impl sealed::Sealed for SharedSecretAuth {}

impl Verifier for SharedSecretAuth {
    fn check(&self, headers: &HeaderMap, _body: &[u8], _now: Timestamp) -> Result<(), VerifyError> {
        let value = headers
            .get(AUTHORIZATION)
            .ok_or(VerifyError::MissingAuth)?
            .to_str()
            .map_err(|_| VerifyError::MalformedAuth {
                reason: "not visible ASCII".to_owned(),
            })?
            .trim();
        let (scheme, credentials) =
            value
                .split_once(' ')
                .ok_or_else(|| VerifyError::MalformedAuth {
                    reason: "expected \"Basic <credentials>\" or \"Bearer <token>\"".to_owned(),
                })?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            self.check_basic(credentials)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.check_bearer(credentials)
        } else {
            Err(VerifyError::MalformedAuth {
                reason: format!("unsupported scheme {scheme:?}; use Basic or Bearer"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        with_auth(&format!(
            "Basic {}",
            BASE64.encode(format!("{user}:{password}"))
        ))
    }

    const NOW: Timestamp = Timestamp(0);

    #[test]
    fn basic_auth() {
        let auth = SharedSecretAuth::basic("sparkpost", "s3cret:with-colon").unwrap();
        assert_eq!(
            auth.check(&basic("sparkpost", "s3cret:with-colon"), b"", NOW),
            Ok(())
        );
        assert_eq!(
            auth.check(
                &with_auth(&format!(
                    "basic {}",
                    BASE64.encode("sparkpost:s3cret:with-colon")
                )),
                b"",
                NOW
            ),
            Ok(())
        );
        for (user, password) in [
            ("sparkpost", "s3cret"),
            ("other", "s3cret:with-colon"),
            ("", ""),
        ] {
            assert_eq!(
                auth.check(&basic(user, password), b"", NOW),
                Err(VerifyError::BadAuth)
            );
        }
        assert_eq!(
            auth.check(&with_auth("Bearer s3cret"), b"", NOW),
            Err(VerifyError::BadAuth)
        );
    }

    #[test]
    fn bearer_token() {
        let auth = SharedSecretAuth::bearer("tok-123").unwrap();
        assert_eq!(auth.check(&with_auth("Bearer tok-123"), b"", NOW), Ok(()));
        assert_eq!(
            auth.check(&with_auth("Bearer tok-1234"), b"", NOW),
            Err(VerifyError::BadAuth)
        );
        assert_eq!(
            auth.check(&basic("tok", "123"), b"", NOW),
            Err(VerifyError::BadAuth)
        );
    }

    #[test]
    fn either_when_both_configured() {
        let auth = SharedSecretAuth::new(Some(("u", "p")), Some("t")).unwrap();
        assert_eq!(auth.check(&basic("u", "p"), b"", NOW), Ok(()));
        assert_eq!(auth.check(&with_auth("Bearer t"), b"", NOW), Ok(()));
    }

    #[test]
    fn malformed_and_missing_headers() {
        let auth = SharedSecretAuth::basic("u", "p").unwrap();
        assert_eq!(
            auth.check(&HeaderMap::new(), b"", NOW),
            Err(VerifyError::MissingAuth)
        );
        for value in [
            "Basic",
            "Basic !!!",
            &format!("Basic {}", BASE64.encode("nocolon")),
            "Digest abc",
        ] {
            let err = auth.check(&with_auth(value), b"", NOW).unwrap_err();
            assert_eq!(err.code(), "malformed_auth", "{value}: {err}");
        }
    }

    #[test]
    fn refuses_unusable_credentials() {
        assert_eq!(
            SharedSecretAuth::new(None, None).unwrap_err(),
            CredentialError::NoCredentials
        );
        assert_eq!(
            SharedSecretAuth::basic("a:b", "p").unwrap_err(),
            CredentialError::UsernameColon
        );
        assert!(matches!(
            SharedSecretAuth::basic("", "p"),
            Err(CredentialError::EmptyCredential(_))
        ));
        assert!(matches!(
            SharedSecretAuth::basic("u", ""),
            Err(CredentialError::EmptyCredential(_))
        ));
        assert!(matches!(
            SharedSecretAuth::bearer(""),
            Err(CredentialError::EmptyCredential(_))
        ));
        let auth = SharedSecretAuth::basic("u", "p").unwrap();
        assert_eq!(
            format!("{auth:?}"),
            "SharedSecretAuth { basic: true, bearer: false }"
        );
    }
}
