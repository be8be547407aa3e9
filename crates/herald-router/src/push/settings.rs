//! One `[[push]]` entry of the configuration file, and its check into a
//! [`PushTarget`] the worker can use.

use std::path::PathBuf;
use std::time::Duration;

use herald_core::QueueName;
use serde::{Deserialize, Serialize};

use crate::verify::{StandardWebhooks, WebhookSecret};

/// The retry schedule shards get unless they set their own: the delays
/// before the 1st, 2nd, ... retry; after the last one fails, the message is
/// dead-lettered.
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
];
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Most requests one push worker has in flight.
pub const MAX_CONCURRENCY: usize = 1000;
/// Longest request timeout: the message's visibility is sized from it.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `[[push]]`: deliver one shard's queue to an HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// The shard this endpoint belongs to: the `shard` label of
    /// `herald_push_attempts_total` and of log lines.
    pub shard: String,
    /// The queue delivered from, e.g. `shard-1.email-events`.
    pub queue: String,
    /// Where each message is POSTed (http or https).
    pub url: String,
    /// The Standard Webhooks signing secret (`whsec_<base64>`), written
    /// here (shown masked), or better read from `secret_env` or
    /// `secret_file`. Exactly one of the three.
    #[serde(default, serialize_with = "mask_nonempty")]
    pub secret: String,
    /// The name of an environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// A file holding the secret (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// A request without a 2xx answer within this time failed.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Delays before the 1st, 2nd, ... retry of a failed delivery; when the
    /// last retry fails, the message goes to the queue's dead-letter queue.
    #[serde(default = "default_retry_schedule", with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// Most requests in flight at once. Above 1, messages may arrive out of
    /// order (a retried message always can).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_retry_schedule() -> Vec<Duration> {
    DEFAULT_RETRY_SCHEDULE.to_vec()
}

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

fn mask_nonempty<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if value.is_empty() { "" } else { "***" })
}

/// A bad `[[push]]` setting, named by its key (`push[0].secret`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PushSettingsError {
    pub key: String,
    pub message: String,
}

/// A checked `[[push]]` entry, secret loaded.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub shard: String,
    pub queue: QueueName,
    pub url: reqwest::Url,
    pub signer: StandardWebhooks,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub concurrency: usize,
}

impl PushTarget {
    /// Deliveries of one message before it is dead-lettered: the first
    /// attempt and one per retry.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.retry_schedule.len())
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }
}

impl PushSettings {
    /// Checks the entry at `index` of `[[push]]` and loads its secret,
    /// reading `secret_env` through `env`.
    pub fn resolve(
        &self,
        index: usize,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PushTarget, PushSettingsError> {
        let error = |key: &str, message: String| PushSettingsError {
            key: format!("push[{index}].{key}"),
            message,
        };
        if self.shard.trim().is_empty() {
            return Err(error("shard", "must not be empty".into()));
        }
        let queue =
            QueueName::parse(self.queue.clone()).map_err(|e| error("queue", e.to_string()))?;
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| error("url", format!("{:?} is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(error(
                "url",
                format!("{:?} is not an http or https URL", self.url),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(error(
                "timeout",
                format!(
                    "must be more than 0s and at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(error(
                "concurrency",
                format!("must be 1 to {MAX_CONCURRENCY}, not {}", self.concurrency),
            ));
        }
        let secret = match (!self.secret.is_empty(), &self.secret_env, &self.secret_file) {
            (true, None, None) => self.secret.clone(),
            (false, Some(var), None) => {
                env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                    error(
                        "secret_env",
                        format!("the environment variable {var} is not set or empty"),
                    )
                })?
            }
            (false, None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                error(
                    "secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?,
            (false, None, None) => {
                return Err(error(
                    "secret",
                    "set one of secret, secret_env or secret_file".into(),
                ))
            }
            _ => {
                return Err(error(
                    "secret",
                    "set only one of secret, secret_env or secret_file".into(),
                ))
            }
        };
        let secret =
            WebhookSecret::parse(secret.trim()).map_err(|e| error("secret", e.to_string()))?;
        Ok(PushTarget {
            shard: self.shard.clone(),
            queue,
            url,
            signer: StandardWebhooks::new(secret),
            timeout: self.timeout,
            retry_schedule: self.retry_schedule.clone(),
            concurrency: self.concurrency,
        })
    }
}

mod duration_list {
    use std::time::Duration;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            list.iter()
                .map(|d| humantime::format_duration(*d).to_string()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|raw| {
                humantime::parse_duration(raw)
                    .map_err(|e| D::Error::custom(format!("{raw:?}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(toml_text: &str) -> Result<PushSettings, toml::de::Error> {
        toml::from_str(toml_text)
    }

    fn minimal() -> String {
        format!(
            "shard = \"1\"\nqueue = \"shard-1.email-events\"\nurl = \"https://shard-1.internal/events\"\nsecret = \"{SECRET}\"\n"
        )
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_follow_the_documented_schedule() {
        let settings = parse(&minimal()).unwrap();
        assert_eq!(settings.timeout, Duration::from_secs(10));
        let schedule: Vec<String> = settings
            .retry_schedule
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        assert_eq!(schedule, ["5s", "5m", "30m", "2h", "5h", "10h"]);
        let target = settings.resolve(0, no_env).unwrap();
        assert_eq!(target.attempts(), 7);
        assert_eq!(target.queue.as_str(), "shard-1.email-events");
    }

    #[test]
    fn the_secret_comes_from_exactly_one_place_and_is_masked() {
        let settings = parse(&minimal()).unwrap();
        let shown = toml::to_string(&settings).unwrap();
        assert!(!shown.contains(SECRET) && shown.contains("***"), "{shown}");

        let from_env = PushSettings {
            secret: String::new(),
            secret_env: Some("SHARD_1_SECRET".into()),
            ..settings.clone()
        };
        assert!(from_env
            .resolve(0, |var| (var == "SHARD_1_SECRET")
                .then(|| SECRET.to_owned()))
            .is_ok());
        assert_eq!(
            from_env.resolve(0, no_env).unwrap_err().key,
            "push[0].secret_env"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let from_file = PushSettings {
            secret: String::new(),
            secret_file: Some(path),
            ..settings.clone()
        };
        assert!(from_file.resolve(0, no_env).is_ok());

        let both = PushSettings {
            secret_env: Some("X".into()),
            ..settings.clone()
        };
        assert_eq!(both.resolve(2, no_env).unwrap_err().key, "push[2].secret");
        let none = PushSettings {
            secret: String::new(),
            ..settings.clone()
        };
        assert_eq!(none.resolve(0, no_env).unwrap_err().key, "push[0].secret");
        let bad = PushSettings {
            secret: "whsec_short".into(),
            ..settings
        };
        let err = bad.resolve(0, no_env).unwrap_err();
        assert_eq!(err.key, "push[0].secret");
        assert!(!err.to_string().contains("whsec_short"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let settings = parse(&minimal()).unwrap();
        let cases = [
            (
                PushSettings {
                    queue: "a b".into(),
                    ..settings.clone()
                },
                "push[0].queue",
            ),
            (
                PushSettings {
                    url: "ftp://x/y".into(),
                    ..settings.clone()
                },
                "push[0].url",
            ),
            (
                PushSettings {
                    url: "not a url".into(),
                    ..settings.clone()
                },
                "push[0].url",
            ),
            (
                PushSettings {
                    shard: " ".into(),
                    ..settings.clone()
                },
                "push[0].shard",
            ),
            (
                PushSettings {
                    timeout: Duration::ZERO,
                    ..settings.clone()
                },
                "push[0].timeout",
            ),
            (
                PushSettings {
                    concurrency: 0,
                    ..settings.clone()
                },
                "push[0].concurrency",
            ),
        ];
        for (bad, key) in cases {
            assert_eq!(bad.resolve(0, no_env).unwrap_err().key, key);
        }
        assert!(parse(&format!("{}retry_schedule = [\"soon\"]\n", minimal())).is_err());
        assert!(parse(&format!("{}retries = 3\n", minimal())).is_err());
    }
}
