//! Configuration: the commented defaults compiled into the binary, overlaid by
//! an optional TOML file, then by `HERALD_<SECTION>__<KEY>` variables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use herald_alerts::{AudienceSettings, MailerSettings};
use herald_mail::TransportConfig;
use herald_store::mask_password;
use serde::{Deserialize, Serialize};

/// The documented defaults; `herald config show` prints the merged result.
pub const DEFAULT_CONFIG: &str = include_str!("../config.default.toml");

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub mailer: MailerSettings,
    #[serde(default)]
    pub audience: AudienceSettings,
    /// Named transports; empty means one `outbox` transport writing under
    /// `<data_dir>/outbox`.
    #[serde(default)]
    pub transports: BTreeMap<String, TransportConfig>,
    #[serde(default)]
    pub keys: KeysConfig,
    /// Routing functions (role "router"): each takes events from its
    /// source topic to per-shard queues; see herald_core::routing.
    #[serde(default)]
    pub routes: Vec<herald_core::routing::Route>,
    /// How the routing workers and the hold releaser run.
    #[serde(default)]
    pub routing: herald_router::routing::RoutingSettings,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub ingest: crate::ingest::IngestConfig,
    /// Push delivery (role "router"): each `[[push]]` entry POSTs one
    /// shard's queue to the shard's endpoint, signed with Standard Webhooks.
    #[serde(default)]
    pub push: Vec<herald_router::push::PushSettings>,
}

/// The scheduler (role "scheduler").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Process definitions, one `<name>.toml` or `<name>.json` each; they
    /// replace the stored definitions on every start. Relative to the
    /// working directory; empty means `<data_dir>/processes`.
    #[serde(default)]
    pub process_dir: Option<PathBuf>,
    /// How long the active scheduler's lease lasts without renewal: a
    /// stopped leader is replaced after about this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the leader renews its lease; well under `lease_ttl`.
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// How often the scheduler looks for due runs and moves runs along.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            process_dir: None,
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            tick_interval: Duration::from_secs(1),
        }
    }
}

/// The web UI (role "web").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// When the session cookie is marked `Secure`: "auto" (when a
    /// TLS-terminating proxy sends `X-Forwarded-Proto: https`), "always" or
    /// "never".
    pub secure_cookies: herald_web::SecureCookies,
    /// How long a sign-in lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Failed sign-ins within `lockout_window` that lock an address.
    pub max_failed_sign_ins: u32,
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            secure_cookies: herald_web::SecureCookies::Auto,
            session_ttl: Duration::from_secs(12 * 3600),
            max_failed_sign_ins: 5,
            lockout_window: Duration::from_secs(15 * 60),
        }
    }
}

/// Secrets Herald signs with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The key unsubscribe links are signed with (at least 32 bytes). Every
    /// process that sends mail or serves `/unsubscribe` needs the same one.
    /// Empty means the file below.
    #[serde(default, serialize_with = "mask_nonempty")]
    pub unsubscribe_key: String,
    /// Empty means `<data_dir>/unsubscribe.key`, created on first start.
    #[serde(default)]
    pub unsubscribe_key_file: Option<PathBuf>,
}

fn mask_nonempty<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if value.is_empty() { "" } else { "***" })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Largest body a bulk import (`POST /api/imports/...`) accepts.
    pub max_import_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// May carry a password: printed masked.
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    /// Queues in the store's SQLite file (all-in-one).
    Embedded,
    /// Queues in the store's PostgreSQL database (distributed).
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub backend: BusBackend,
    pub max_body_bytes: usize,
    pub max_receives: u32,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// A configuration problem, phrased as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the defaults, then `file` (or `herald.toml` if present), then the
    /// environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("HERALD_"))
    }

    /// The compiled-in defaults alone: no file, no environment.
    pub fn defaults() -> Config {
        Figment::from(Toml::string(DEFAULT_CONFIG))
            .extract()
            .expect("the compiled-in defaults are valid")
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        match file {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                figment = figment.merge(Toml::file_exact(path));
            }
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                std::fs::read_to_string(DEFAULT_CONFIG_FILE).map_err(|e| {
                    ConfigError(format!(
                        "cannot read config file {DEFAULT_CONFIG_FILE}: {e}"
                    ))
                })?;
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        // Only section-qualified variables (HERALD_SERVER__LISTEN) are
        // settings; others such as HERALD_TEST_DATABASE_URL belong to tools.
        let env = env.split("__").filter(|key| key.as_str().contains('.'));
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.store.url.is_empty() {
            let scheme = self.store.url.split(':').next().unwrap_or_default();
            if !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
                return Err(ConfigError(format!(
                    "store.url: {:?} is not a sqlite: or postgres:// URL",
                    mask_password(&self.store.url)
                )));
            }
        }
        if self.bus.max_body_bytes == 0 {
            return Err(ConfigError("bus.max_body_bytes: must be at least 1".into()));
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError(
                "server.max_body_bytes: must be at least 1".into(),
            ));
        }
        if self.web.session_ttl.is_zero() {
            return Err(ConfigError(
                "web.session_ttl: must be longer than 0s".into(),
            ));
        }
        if self.web.max_failed_sign_ins == 0 || self.web.lockout_window.is_zero() {
            return Err(ConfigError(
                "web.max_failed_sign_ins and web.lockout_window: must be at least 1 and longer than 0s".into(),
            ));
        }
        if self.scheduler.tick_interval.is_zero()
            || self.scheduler.renew_every.is_zero()
            || self.scheduler.renew_every * 2 > self.scheduler.lease_ttl
        {
            return Err(ConfigError(
                "scheduler.renew_every: must be longer than 0s and at most half of scheduler.lease_ttl, and scheduler.tick_interval longer than 0s".into(),
            ));
        }
        self.routing.validate().map_err(ConfigError)?;
        let mut route_names = std::collections::BTreeSet::new();
        for route in &self.routes {
            if !route_names.insert(route.name.as_str()) {
                return Err(ConfigError(format!(
                    "routes: two routes are named {:?}; each needs its own name (it names the route's queue)",
                    route.name
                )));
            }
        }
        if self.server.request_timeout.is_zero() {
            return Err(ConfigError(
                "server.request_timeout: must be longer than 0s".into(),
            ));
        }
        self.ingest
            .verifiers()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.push_targets()?;
        self.mailer_settings(self.server.listen)
            .validate()
            .and_then(|()| self.audience.validate())
            .map_err(|e| ConfigError(e.to_string()))?;
        let transports = self.transports();
        if !transports.contains_key(&self.mailer.default_transport) {
            return Err(ConfigError(format!(
                "mailer.default_transport: {:?} is not a configured transport (have: {})",
                self.mailer.default_transport,
                transports.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError(format!(
                "log.level: {:?} is not a valid filter: {e}",
                self.log.level
            ))
        })?;
        Ok(())
    }

    /// The database URL in force: `store.url`, or the embedded file.
    pub fn store_url(&self) -> String {
        if self.store.url.is_empty() {
            format!(
                "sqlite://{}",
                self.store.data_dir.join("herald.db").display()
            )
        } else {
            self.store.url.clone()
        }
    }

    /// The transports in force: the configured ones, or the default outbox.
    pub fn transports(&self) -> BTreeMap<String, TransportConfig> {
        if self.transports.is_empty() {
            herald_alerts::settings::default_transports(&self.store.data_dir)
        } else {
            self.transports.clone()
        }
    }

    /// The unsubscribe signing key: configured, or read from (and on first
    /// use written to) its file.
    pub fn unsubscribe_key(&self) -> Result<Vec<u8>, ConfigError> {
        if !self.keys.unsubscribe_key.is_empty() {
            return Ok(self.keys.unsubscribe_key.as_bytes().to_vec());
        }
        let path = self
            .keys
            .unsubscribe_key_file
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("unsubscribe.key"));
        herald_alerts::load_or_create_key(&path).map_err(|e| {
            ConfigError(format!(
                "keys.unsubscribe_key_file: cannot read or create {}: {e}",
                path.display()
            ))
        })
    }

    /// The mailer's settings, with an empty `public_url` made from the
    /// address Herald listens on (`server.listen`, or the one bound when
    /// that names port 0): a link to `0.0.0.0` or `[::]` would lead nowhere,
    /// so those become loopback.
    pub fn mailer_settings(&self, listening_on: SocketAddr) -> MailerSettings {
        let mut settings = self.mailer.clone();
        if settings.public_url.is_empty() {
            let mut reachable = listening_on;
            if reachable.ip().is_unspecified() {
                reachable.set_ip(match reachable.ip() {
                    IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            settings.public_url = format!("http://{reachable}");
        }
        settings
    }

    /// The configuration as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.mailer = self.mailer_settings(self.server.listen);
        shown.store.url = mask_password(&shown.store.url);
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

impl Config {
    /// The `[[push]]` entries, checked and with their secrets loaded; two
    /// entries may not push the same queue (each message would reach only
    /// one of their endpoints).
    pub fn push_targets(&self) -> Result<Vec<herald_router::push::PushTarget>, ConfigError> {
        let mut targets: Vec<herald_router::push::PushTarget> = Vec::new();
        for (index, settings) in self.push.iter().enumerate() {
            let target = settings
                .resolve(index, |var| std::env::var(var).ok())
                .map_err(|e| ConfigError(e.to_string()))?;
            if let Some(first) = targets.iter().position(|t| t.queue == target.queue) {
                return Err(ConfigError(format!(
                    "push[{index}].queue: {} is already pushed by push[{first}]",
                    target.queue
                )));
            }
            targets.push(target);
        }
        Ok(targets)
    }
}

fn describe_figment_error(error: figment::Error) -> String {
    let key = error.path.join(".");
    let origin = error
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (from {source})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    let kind = error.kind.to_string();
    if key.is_empty() {
        format!("{kind}{origin}")
    } else {
        format!("{key}: {kind}{origin}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads inside a figment Jail, so environment variables set here never
    /// leak into tests running in parallel.
    fn load_with(file_body: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_in_jail(|jail| {
            for (k, v) in env {
                jail.set_env(k, v);
            }
            file_body.map(|body| {
                jail.create_file("custom.toml", body).unwrap();
                PathBuf::from("custom.toml")
            })
        })
    }

    // figment::Jail fixes the closure's error type; it is not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn load_in_jail(
        prepare: impl FnOnce(&mut figment::Jail) -> Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let mut outcome = None;
        figment::Jail::expect_with(|jail| {
            let path = prepare(jail);
            outcome = Some(Config::load_from(path.as_deref(), Env::prefixed("HERALD_")));
            Ok(())
        });
        outcome.expect("the jail ran")
    }

    #[test]
    fn defaults_run_all_in_one_on_localhost() {
        let config = load_with(None, &[]).unwrap();
        assert_eq!(config.server.listen.ip().to_string(), "127.0.0.1");
        assert_eq!(config.store_url(), "sqlite://herald-data/herald.db");
        assert_eq!(config.bus.backend, BusBackend::Embedded);
        assert_eq!(config.bus.max_body_bytes, 256 * 1024);
    }

    /// Unsubscribe links lead where Herald listens unless told otherwise:
    /// `herald serve --listen 127.0.0.1:9000` must not mail links to 8080.
    #[test]
    fn the_public_url_follows_the_listen_address_unless_set() {
        let mut config = load_with(None, &[]).unwrap();
        assert_eq!(
            config.mailer_settings(config.server.listen).public_url,
            "http://127.0.0.1:8080"
        );
        for (listen, url) in [
            ("127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("0.0.0.0:9000", "http://127.0.0.1:9000"),
            ("[::]:9000", "http://[::1]:9000"),
            ("[2001:db8::1]:443", "http://[2001:db8::1]:443"),
        ] {
            config.server.listen = listen.parse().unwrap();
            assert_eq!(
                config.mailer_settings(config.server.listen).public_url,
                url,
                "{listen}"
            );
        }
        assert!(config
            .to_masked_toml()
            .contains("public_url = \"http://[2001:db8::1]:443\""));

        let config = load_with(
            Some("[mailer]\npublic_url = \"https://herald.shop.example.com\"\n"),
            &[("HERALD_SERVER__LISTEN", "0.0.0.0:9000")],
        )
        .unwrap();
        assert_eq!(
            config.mailer_settings(config.server.listen).public_url,
            "https://herald.shop.example.com"
        );
        let err = load_with(Some("[mailer]\npublic_url = \"ftp://x\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("mailer.public_url"), "{err}");
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let config = load_with(
            Some("[server]\nlisten = \"0.0.0.0:9000\"\n[bus]\nmax_receives = 9\n"),
            &[
                ("HERALD_BUS__MAX_RECEIVES", "3"),
                ("HERALD_TEST_DATABASE_URL", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.bus.max_receives, 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_with(Some("[server]\nlistn = \"0.0.0.0:9000\"\n"), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("server") && msg.contains("listn"), "{msg}");
        let err = load_with(None, &[("HERALD_BUS__MAX_RECIEVES", "3")]).unwrap_err();
        assert!(err.to_string().contains("max_recieves"), "{err}");
    }

    #[test]
    fn bad_values_are_named_with_the_key() {
        let err = load_with(Some("[server]\nlisten = \"nowhere\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err = load_with(None, &[("HERALD_STORE__URL", "mysql://db/herald")]).unwrap_err();
        assert!(err.to_string().contains("store.url"), "{err}");
        let err = load_with(None, &[("HERALD_LOG__LEVEL", "herald=loud")]).unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
        let err = load_with(None, &[("HERALD_SERVER__REQUEST_TIMEOUT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("server.request_timeout"), "{err}");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let err = load_in_jail(|_| Some(PathBuf::from("/nonexistent/herald.toml"))).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/herald.toml"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_masked_when_shown() {
        assert_eq!(
            mask_password("postgres://herald:s3cret@db:5432/h"),
            "postgres://herald:***@db:5432/h"
        );
        assert_eq!(mask_password("postgres://db/h"), "postgres://db/h");
        let mut config = load_with(None, &[]).unwrap();
        config.store.url = "postgres://herald:s3cret@db/h".into();
        let shown = config.to_masked_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn the_default_file_parses_on_its_own() {
        load_in_jail(|jail| {
            jail.create_file("defaults.toml", DEFAULT_CONFIG).unwrap();
            Some(PathBuf::from("defaults.toml"))
        })
        .unwrap();
    }

    #[test]
    fn push_entries_load_their_secrets_and_are_shown_masked() {
        const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let entry = |shard: u32, secret: &str| {
            format!(
                "[[push]]\nshard = \"{shard}\"\nqueue = \"shard-1.email-events\"\nurl = \"https://shard-{shard}.internal/events\"\n{secret}\n"
            )
        };
        // Loading checks the entries, secret included.
        let config = load_with(
            Some(&entry(1, "secret_env = \"SHARD_1_PUSH_SECRET\"")),
            &[("SHARD_1_PUSH_SECRET", SECRET)],
        )
        .unwrap();
        assert_eq!(config.push[0].queue, "shard-1.email-events");

        let inline = load_with(Some(&entry(1, &format!("secret = \"{SECRET}\""))), &[]).unwrap();
        let targets = inline.push_targets().unwrap();
        assert_eq!(targets[0].attempts(), 7);
        let shown = inline.to_masked_toml();
        assert!(
            !shown.contains(SECRET) && shown.contains("[[push]]"),
            "{shown}"
        );

        let err =
            load_with(Some(&entry(1, "secret_env = \"UNSET_PUSH_SECRET\"")), &[]).unwrap_err();
        assert!(err.to_string().contains("push[0].secret_env"), "{err}");
        let twice = format!(
            "{}{}",
            entry(1, &format!("secret = \"{SECRET}\"")),
            entry(2, &format!("secret = \"{SECRET}\""))
        );
        let err = load_with(Some(&twice), &[]).unwrap_err();
        assert!(err.to_string().contains("push[1].queue"), "{err}");
    }
}
