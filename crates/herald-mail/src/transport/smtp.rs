//! SMTP through lettre: pooled connections, STARTTLS, implicit TLS or
//! plain (rustls only), optional AUTH and a messages-per-second limit.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::message::OutgoingEmail;

use super::{BuildError, SendError, SendReceipt, Transport};

/// How the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (port 25); only for a relay on the same host or network.
    None,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults to 587, 465 or 25 depending on `security`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, serialize_with = "super::mask_optional_secret")]
    pub password: Option<SecretString>,
    /// A PEM file of extra root certificates to trust, for a relay signed
    /// by a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Most connections kept open to the server.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Most messages handed to the server per second; unlimited if unset.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    /// Time limit for connecting, and for handing over one message.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_pool_size() -> u32 {
    4
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        })
    }
}

type Pool = Arc<AsyncSmtpTransport<Tokio1Executor>>;

#[derive(Debug)]
pub struct SmtpTransport {
    builder: AsyncSmtpTransportBuilder,
    pool: RwLock<Pool>,
    timeout: Duration,
    limiter: Option<RateLimiter>,
}

impl SmtpTransport {
    pub fn new(config: &SmtpConfig) -> Result<Self, BuildError> {
        let invalid = |field, message: String| BuildError::Invalid { field, message };
        if config.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty".to_owned()));
        }
        if config.pool_size == 0 {
            return Err(invalid("pool_size", "must be at least 1".to_owned()));
        }
        let tls = match config.security {
            SmtpSecurity::None => Tls::None,
            security => {
                let mut params = TlsParameters::builder(config.host.clone());
                if let Some(path) = &config.ca_file {
                    let pem = std::fs::read(path)
                        .map_err(|e| invalid("ca_file", format!("{}: {e}", path.display())))?;
                    let cert = Certificate::from_pem(&pem)
                        .map_err(|e| invalid("ca_file", format!("{}: {e}", path.display())))?;
                    params = params.add_root_certificate(cert);
                }
                let params = params
                    .build_rustls()
                    .map_err(|e| invalid("security", e.to_string()))?;
                if security == SmtpSecurity::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port())
            .tls(tls)
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(config.pool_size));
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(
                    user.clone(),
                    password.expose_secret().to_owned(),
                ));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid("password", "is required with username".to_owned()));
            }
            (None, Some(_)) => {
                return Err(invalid("username", "is required with password".to_owned()));
            }
        }
        let limiter = match config.rate_limit_per_second {
            None => None,
            Some(rate) => Some(RateLimiter::new(NonZeroU32::new(rate).ok_or_else(
                || invalid("rate_limit_per_second", "must be at least 1".to_owned()),
            )?)),
        };
        Ok(Self {
            pool: RwLock::new(Arc::new(builder.clone().build())),
            builder,
            timeout: config.timeout,
            limiter,
        })
    }

    /// Swaps in a fresh pool, unless another send already did. lettre only
    /// limits the time to connect, so a send is cut short from outside, and
    /// the connection it was using may still be owed a reply: it must never
    /// be reused. Dropping the pool closes its connections.
    fn replace_pool(&self, stale: &Pool) {
        let mut pool = self.pool.write().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&pool, stale) {
            *pool = Arc::new(self.builder.clone().build());
        }
    }
}

#[async_trait::async_trait]
impl Transport for SmtpTransport {
    fn kind(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        let message = email.to_mime()?;
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let pool = self
            .pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let response = match tokio::time::timeout(self.timeout, pool.send(message)).await {
            Ok(sent) => sent.map_err(classify)?,
            Err(_) => {
                self.replace_pool(&pool);
                return Err(SendError::transient(format!(
                    "SMTP server did not finish accepting the message within {:?}",
                    self.timeout
                )));
            }
        };
        let reply: Vec<&str> = response.message().collect();
        Ok(SendReceipt {
            provider_message_id: Some(format!("{} {}", response.code(), reply.join(" "))),
        })
    }
}

/// Reply codes that reject the recipient rather than the message or the
/// session: 550 mailbox unavailable, 551 user not local, 553 mailbox name
/// not allowed, 554 transaction failed (used by many servers for refused
/// recipients). Other 5xx replies (530/535 authentication, 552 size, 500-504
/// syntax) are Herald's or the server's problem, not the address's.
const ADDRESS_REJECTIONS: [u16; 4] = [550, 551, 553, 554];

fn classify(err: lettre::transport::smtp::Error) -> SendError {
    let code = err.status().map(u16::from);
    if err.is_permanent() {
        let suppress = code.is_some_and(|c| ADDRESS_REJECTIONS.contains(&c));
        SendError::permanent(format!("SMTP server refused: {err}"), suppress)
    } else if err.is_client() {
        SendError::permanent(format!("SMTP client error: {err}"), false)
    } else {
        // 4xx replies, timeouts, TLS and connection failures.
        SendError::transient(format!("SMTP: {err}"))
    }
}

/// Spaces sends evenly: each caller gets the next free slot, `1/rate`
/// seconds after the previous one, and waits for it.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    fn new(per_second: NonZeroU32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.get(),
            next: Mutex::new(None),
        }
    }

    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_sends() {
        let limiter = RateLimiter::new(NonZeroU32::new(10).unwrap());
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first send goes at once, the next four 100ms apart (virtual time).
        assert_eq!(start.elapsed(), Duration::from_millis(400));

        // After an idle spell the budget does not pile up: one slot, not a burst.
        tokio::time::advance(Duration::from_secs(5)).await;
        let idle_end = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(idle_end.elapsed(), Duration::from_millis(100));
    }

    #[test]
    fn default_ports_follow_security() {
        let config = |security| SmtpConfig {
            host: "h".into(),
            port: None,
            security,
            username: None,
            password: None,
            ca_file: None,
            pool_size: 1,
            rate_limit_per_second: None,
            timeout: default_timeout(),
        };
        assert_eq!(config(SmtpSecurity::Starttls).port(), 587);
        assert_eq!(config(SmtpSecurity::Tls).port(), 465);
        assert_eq!(config(SmtpSecurity::None).port(), 25);
    }
}
