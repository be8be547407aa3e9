//! What the HTTP provider transports share: the client, URL checks, and
//! turning HTTP failures into retry-or-give-up decisions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use super::{BuildError, SendError};

/// Longest response body read from a provider; error bodies are small, and
/// an unbounded read would let a misbehaving endpoint exhaust memory.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Provider hints longer than this are capped: an absurd `Retry-After`
/// should not park a message for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BuildError::Invalid {
            field: "timeout",
            message: format!("cannot build the HTTP client: {e}"),
        })
}

/// `base` joined with `path`, after checking `base` is an http(s) URL.
pub(crate) fn endpoint(base: &str, path: &str) -> Result<reqwest::Url, BuildError> {
    let invalid = |message: String| BuildError::Invalid {
        field: "base_url",
        message,
    };
    let url = reqwest::Url::parse(base).map_err(|e| invalid(format!("{base:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("{base:?} must be an http or https URL")));
    }
    reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
        .map_err(|e| invalid(format!("{base:?}: {e}")))
}

pub(crate) fn api_key(key: &SecretString) -> Result<(), BuildError> {
    let exposed = key.expose_secret();
    if exposed.trim().is_empty() || exposed.chars().any(|c| c.is_control()) {
        return Err(BuildError::Invalid {
            field: "api_key",
            message: "must be a non-empty key without control characters".to_owned(),
        });
    }
    Ok(())
}

/// A request that never got a response.
pub(crate) fn network_error(provider: &str, err: &reqwest::Error) -> SendError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    SendError::transient(format!("{provider} {what}: {err}"))
}

/// A response's status, headers and (bounded) body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

pub(crate) async fn read(
    provider: &str,
    mut response: reqwest::Response,
) -> Result<Reply, SendError> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BODY.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok(None) => break,
            // The status decides success; a body cut short only loses detail.
            Err(err) if status.is_success() => {
                tracing::debug!(provider, error = %err, "response body cut short after success");
                break;
            }
            Err(err) => return Err(network_error(provider, &err)),
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The wait a 429 or 5xx asks for: `Retry-After` in seconds, else
/// `X-RateLimit-Reset` as a Unix time (SendGrid's rate-limit header).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let wait = if let Some(secs) = header("retry-after") {
        Duration::from_secs(secs)
    } else {
        let reset = header("x-ratelimit-reset")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Duration::from_secs(reset.saturating_sub(now))
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The start of a body for an error message, when it is not the expected JSON.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        "(empty body)".to_owned()
    } else {
        trimmed.chars().take(200).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_seconds_then_reset_time_and_is_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        h.insert("x-ratelimit-reset", HeaderValue::from(now + 600));
        let wait = retry_after(&h).unwrap();
        assert!(
            wait <= Duration::from_secs(600) && wait >= Duration::from_secs(500),
            "{wait:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        h.remove("x-ratelimit-reset");
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn endpoints_need_http_urls() {
        assert_eq!(
            endpoint("http://127.0.0.1:9/", "/v3/mail/send")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/v3/mail/send"
        );
        assert!(endpoint("ftp://x", "/a").is_err());
        assert!(endpoint("", "/a").is_err());
    }
}
