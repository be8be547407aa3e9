//! Settings of the audience job, the mailer and the transports, as the
//! binary's configuration file holds them (`[mailer]`, `[audience]`,
//! `[transports.<name>]`). Every field has a default; unknown keys are
//! refused; [`MailerSettings::validate`] and [`AudienceSettings::validate`]
//! name the key of a bad value.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use herald_mail::transport::OutboxConfig;
use herald_mail::{Mailbox, TransportConfig};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Name of the transport configured when none is.
pub const DEFAULT_TRANSPORT: &str = "outbox";

/// Most messages the mailer takes from the queue at once (the bus's limit).
pub const MAX_RECEIVE_BATCH: usize = 1000;

/// Most concurrent sends one mailer runs.
pub const MAX_CONCURRENCY: usize = 1000;

/// Most members the audience job handles per batch.
pub const MAX_AUDIENCE_BATCH: u32 = 10_000;

/// A bad setting, named by its key (`mailer.public_url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    pub key: String,
    pub message: String,
}

impl SettingsError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The `[mailer]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailerSettings {
    /// The sender of every brand alert.
    pub from: SenderSettings,
    /// Where replies go, e.g. `"Customer care <care@shop.example.com>"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The right-hand side of every Message-ID (`<alert>.<member>@domain`).
    pub message_id_domain: String,
    /// The address members reach Herald at; the unsubscribe link is
    /// `<public_url>/unsubscribe/<token>`. Use an `https` URL in production:
    /// mailbox providers only honour one-click unsubscribe (RFC 8058) there.
    pub public_url: String,
    /// The custom-arg name the member's customer id is sent under, so the
    /// provider's events can be routed by customer.
    pub customer_key: String,
    /// Most sends in flight at once (sent and not yet confirmed included):
    /// also the most possible duplicates one killed mailer can leave.
    pub concurrency: usize,
    /// Most messages taken from the queue at once.
    pub receive_batch: usize,
    /// How long a claimed send (and the message's visibility) lasts before
    /// another mailer may take it over as a possible duplicate.
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
    /// How long one receive waits for messages when the queue is empty.
    #[serde(with = "humantime_serde")]
    pub poll_wait: Duration,
    /// Delay before the 1st, 2nd, ... retry of a transient failure; the last
    /// entry repeats.
    #[serde(with = "duration_list")]
    pub retry_backoff: Vec<Duration>,
    /// The transport for alerts that name none.
    pub default_transport: String,
}

/// A mailbox: address and optional display name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderSettings {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Default for SenderSettings {
    fn default() -> Self {
        Self {
            address: "alerts@herald.localhost".to_owned(),
            name: Some("Herald".to_owned()),
        }
    }
}

impl SenderSettings {
    pub fn mailbox(&self) -> Result<Mailbox, SettingsError> {
        let address = self.address.parse().map_err(|e| {
            SettingsError::new(
                "mailer.from.address",
                format!("{:?} is not an email address: {e}", self.address),
            )
        })?;
        Ok(Mailbox::new(self.name.clone(), address))
    }
}

impl Default for MailerSettings {
    fn default() -> Self {
        Self {
            from: SenderSettings::default(),
            reply_to: None,
            message_id_domain: "herald.localhost".to_owned(),
            public_url: "http://127.0.0.1:8080".to_owned(),
            customer_key: "customer_id".to_owned(),
            concurrency: 16,
            receive_batch: 32,
            claim_ttl: Duration::from_secs(60),
            poll_wait: Duration::from_secs(5),
            retry_backoff: [30, 120, 600, 1800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            default_transport: DEFAULT_TRANSPORT.to_owned(),
        }
    }
}

impl MailerSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.from.mailbox()?;
        self.reply_to_mailbox()?;
        let domain_ok = !self.message_id_domain.is_empty()
            && self
                .message_id_domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !domain_ok {
            return Err(SettingsError::new(
                "mailer.message_id_domain",
                format!(
                    "{:?} must be a domain name (letters, digits, '-' and '.')",
                    self.message_id_domain
                ),
            ));
        }
        let url = self.public_url.to_ascii_lowercase();
        let url_ok = (url.starts_with("https://") || url.starts_with("http://"))
            && url
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty())
            && self.public_url.chars().all(|c| c.is_ascii_graphic());
        if !url_ok {
            return Err(SettingsError::new(
                "mailer.public_url",
                format!("{:?} must be an http(s) URL", self.public_url),
            ));
        }
        let key = &self.customer_key;
        let key_ok = key.len() <= herald_mail::message::MAX_CUSTOM_ARG_KEY
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !key_ok {
            return Err(SettingsError::new(
                "mailer.customer_key",
                format!(
                    "{key:?} must be 1-64 characters of a-z, 0-9 and '_', starting with a letter"
                ),
            ));
        }
        if [ALERT_ID_ARG, MEMBER_ID_ARG].contains(&key.as_str()) {
            return Err(SettingsError::new(
                "mailer.customer_key",
                format!("{key:?} is already used for the alert or member id"),
            ));
        }
        check_range("mailer.concurrency", self.concurrency, 1, MAX_CONCURRENCY)?;
        check_range(
            "mailer.receive_batch",
            self.receive_batch,
            1,
            MAX_RECEIVE_BATCH,
        )?;
        if self.claim_ttl < Duration::from_secs(1) {
            return Err(SettingsError::new(
                "mailer.claim_ttl",
                "must be at least 1s",
            ));
        }
        if self.retry_backoff.is_empty() {
            return Err(SettingsError::new(
                "mailer.retry_backoff",
                "needs at least one delay",
            ));
        }
        if self.default_transport.is_empty() {
            return Err(SettingsError::new(
                "mailer.default_transport",
                "must name a transport",
            ));
        }
        Ok(())
    }

    pub fn reply_to_mailbox(&self) -> Result<Option<Mailbox>, SettingsError> {
        self.reply_to
            .as_deref()
            .map(|raw| {
                raw.parse().map_err(|e| {
                    SettingsError::new(
                        "mailer.reply_to",
                        format!("{raw:?} is not an email address: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The delay before the retry that follows delivery number
    /// `receive_count` (1-based) of a message.
    pub fn backoff_for(&self, receive_count: u32) -> Duration {
        let index = usize::try_from(receive_count.saturating_sub(1)).unwrap_or(usize::MAX);
        self.retry_backoff
            .get(index)
            .or(self.retry_backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(30))
    }
}

/// The custom arg carrying the alert id.
pub const ALERT_ID_ARG: &str = "alert_id";
/// The custom arg carrying the member id.
pub const MEMBER_ID_ARG: &str = "member_id";

/// The `[audience]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudienceSettings {
    /// How often the job looks for alerts whose send time has come.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Candidates read, classified and enqueued per batch, about: the
    /// built-in audience is read in ranges of members sized from the share
    /// of candidates so far (between one and eight batches of members).
    pub batch_size: u32,
    /// How long one replica's hold on an alert's build lasts without
    /// renewal; another replica takes the build over after it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Where member-brand affinities come from.
    pub affinity: AffinitySettings,
}

impl Default for AudienceSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            batch_size: 1000,
            lease_ttl: Duration::from_secs(30),
            affinity: AffinitySettings::Builtin,
        }
    }
}

impl AudienceSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.poll_interval.is_zero() {
            return Err(SettingsError::new(
                "audience.poll_interval",
                "must be longer than 0s",
            ));
        }
        check_range(
            "audience.batch_size",
            self.batch_size,
            1,
            MAX_AUDIENCE_BATCH,
        )?;
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(SettingsError::new(
                "audience.lease_ttl",
                "must be at least 1s",
            ));
        }
        match &self.affinity {
            AffinitySettings::Builtin => Ok(()),
            AffinitySettings::Http(http) => http.validate(),
        }
    }
}

/// `source = "builtin"` reads the affinity table; `source = "http"` pages
/// through an external Affinity API (see [`crate::affinity`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum AffinitySettings {
    Builtin,
    Http(HttpAffinitySettings),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAffinitySettings {
    /// The endpoint, e.g. `https://affinity.internal/v1/affinities`.
    pub url: String,
    /// Items asked for per request.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Time limit for one request, connecting and reading included.
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed request (timeout, connection error, 429, 5xx)
    /// before the batch gives up until the next poll.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Delay before the first retry; it doubles for each further one.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "mask_secret"
    )]
    pub bearer_token: Option<SecretString>,
}

impl PartialEq for HttpAffinitySettings {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        let token = |s: &Self| {
            s.bearer_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
        };
        self.url == other.url
            && self.page_size == other.page_size
            && self.timeout == other.timeout
            && self.retries == other.retries
            && self.retry_backoff == other.retry_backoff
            && token(self) == token(other)
    }
}

fn default_page_size() -> u32 {
    1000
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retries() -> u32 {
    3
}

fn default_retry_backoff() -> Duration {
    Duration::from_millis(500)
}

fn mask_secret<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

impl HttpAffinitySettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            page_size: default_page_size(),
            timeout: default_http_timeout(),
            retries: default_retries(),
            retry_backoff: default_retry_backoff(),
            bearer_token: None,
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let lower = self.url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://"))
            || self.url.contains('?')
            || reqwest::Url::parse(&self.url).is_err()
        {
            return Err(SettingsError::new(
                "audience.affinity.url",
                format!(
                    "{:?} must be an http(s) URL without a query string",
                    self.url
                ),
            ));
        }
        check_range(
            "audience.affinity.page_size",
            self.page_size,
            1,
            MAX_AUDIENCE_BATCH,
        )?;
        if self.timeout.is_zero() {
            return Err(SettingsError::new(
                "audience.affinity.timeout",
                "must be longer than 0s",
            ));
        }
        Ok(())
    }
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), SettingsError> {
    if value < min || value > max {
        return Err(SettingsError::new(
            key,
            format!("{value} is out of range; it must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// The transports to configure when the `[transports]` section is empty:
/// one `outbox` writing `.eml` files to `<data_dir>/outbox`.
pub fn default_transports(data_dir: &Path) -> BTreeMap<String, TransportConfig> {
    BTreeMap::from([(
        DEFAULT_TRANSPORT.to_owned(),
        TransportConfig::Outbox(OutboxConfig {
            dir: data_dir.join("outbox"),
        }),
    )])
}

/// Length of a generated unsubscribe signing key, in bytes.
pub const GENERATED_KEY_LEN: usize = 32;

/// Reads the unsubscribe signing key kept (hex-encoded) in `path`, or
/// generates a random one and stores it there, readable by the owner only,
/// so unsubscribe links keep working across restarts.
///
/// Processes sharing a data folder may start at once: the key is written
/// whole to a file of its own, then linked to `path`, so a reader never
/// sees a file being written and the first link wins for every process.
pub fn load_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_key(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; GENERATED_KEY_LEN] = rand::random();
            match publish_key(path, &hex::encode(key)) {
                Ok(()) => Ok(key.to_vec()),
                // Another process linked its key first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    decode_key(path, &std::fs::read_to_string(path)?)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn decode_key(path: &Path, text: &str) -> std::io::Result<Vec<u8>> {
    let invalid = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} {why}", path.display()),
        )
    };
    let key =
        hex::decode(text.trim()).map_err(|e| invalid(format!("does not hold a hex key: {e}")))?;
    if key.is_empty() {
        return Err(invalid("is empty; delete it to have a new key made".into()));
    }
    Ok(key)
}

/// Writes `text` to a new file beside `path`, then links it to `path`;
/// `AlreadyExists` when `path` is there already.
fn publish_key(path: &Path, text: &str) -> std::io::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staged = folder.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let linked = options
        .open(&staged)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&staged, path));
    // The staged name has done its job, linked or not.
    let _ = std::fs::remove_file(&staged);
    linked
}

/// A list of durations written the humantime way: `["30s", "2m"]`.
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

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Sections {
        #[serde(default)]
        mailer: MailerSettings,
        #[serde(default)]
        audience: AudienceSettings,
    }

    fn parse(text: &str) -> Result<Sections, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_sections_take_the_defaults_and_validate() {
        let s = parse("").unwrap();
        assert_eq!(s.mailer, MailerSettings::default());
        assert_eq!(s.audience, AudienceSettings::default());
        assert_eq!(s.mailer.claim_ttl, Duration::from_secs(60));
        assert_eq!(s.mailer.customer_key, "customer_id");
        assert_eq!(s.mailer.default_transport, "outbox");
        assert_eq!(s.audience.poll_interval, Duration::from_secs(5));
        assert_eq!(s.audience.batch_size, 1000);
        s.mailer.validate().unwrap();
        s.audience.validate().unwrap();
    }

    #[test]
    fn a_full_configuration_parses_and_round_trips() {
        let text = r#"
            [mailer]
            from = { address = "alerts@shop.example.com", name = "Shop" }
            reply_to = "Care <care@shop.example.com>"
            message_id_domain = "mail.shop.example.com"
            public_url = "https://herald.shop.example.com"
            customer_key = "customer_key"
            concurrency = 4
            receive_batch = 10
            claim_ttl = "3s"
            poll_wait = "200ms"
            retry_backoff = ["100ms", "1s"]
            default_transport = "smtp"

            [audience]
            poll_interval = "1s"
            batch_size = 50
            lease_ttl = "10s"
            affinity = { source = "http", url = "http://127.0.0.1:9000/affinities", page_size = 20, timeout = "2s", retries = 5, retry_backoff = "10ms", bearer_token = "tok" }
        "#;
        let s = parse(text).unwrap();
        s.mailer.validate().unwrap();
        s.audience.validate().unwrap();
        assert_eq!(
            s.mailer.from.mailbox().unwrap().to_string(),
            "Shop <alerts@shop.example.com>"
        );
        assert_eq!(
            s.mailer.retry_backoff,
            vec![Duration::from_millis(100), Duration::from_secs(1)]
        );
        let AffinitySettings::Http(http) = &s.audience.affinity else {
            panic!("{:?}", s.audience.affinity)
        };
        assert_eq!(http.page_size, 20);
        assert_eq!(http.retries, 5);

        let printed = toml::to_string(&s).unwrap();
        assert!(printed.contains("bearer_token = \"***\""), "{printed}");
        assert!(!printed.contains("tok\""), "{printed}");
        let mut back = parse(&printed).unwrap();
        assert_eq!(back.mailer, s.mailer);
        let AffinitySettings::Http(http) = &mut back.audience.affinity else {
            panic!()
        };
        http.bearer_token = Some("tok".to_owned().into());
        assert_eq!(back.audience, s.audience);
    }

    #[test]
    fn http_source_fields_default() {
        let s =
            parse("[audience.affinity]\nsource = \"http\"\nurl = \"https://a.example/x\"").unwrap();
        assert_eq!(
            s.audience.affinity,
            AffinitySettings::Http(HttpAffinitySettings::new("https://a.example/x"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        for (text, needle) in [
            ("[mailer]\nconcurency = 3", "concurency"),
            ("[audience]\nbatch = 3", "batch"),
            (
                "[mailer]\nfrom = { address = \"a@b.c\", nmae = \"x\" }",
                "nmae",
            ),
            (
                "[audience.affinity]\nsource = \"http\"\nurl = \"http://x\"\npagesize = 3",
                "pagesize",
            ),
            (
                "[audience.affinity]\nsource = \"carrier-pigeon\"",
                "carrier-pigeon",
            ),
            ("[mailer]\nretry_backoff = [\"soon\"]", "soon"),
            ("[mailer]\nclaim_ttl = 60", "claim_ttl"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        type Mutation = fn(&mut MailerSettings);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |m| m.from.address = "not an address".into(),
                "mailer.from.address",
            ),
            (|m| m.reply_to = Some("x@".into()), "mailer.reply_to"),
            (
                |m| m.message_id_domain = "a b".into(),
                "mailer.message_id_domain",
            ),
            (
                |m| m.message_id_domain = String::new(),
                "mailer.message_id_domain",
            ),
            (|m| m.public_url = "ftp://x".into(), "mailer.public_url"),
            (|m| m.public_url = "https://".into(), "mailer.public_url"),
            (
                |m| m.customer_key = "Customer".into(),
                "mailer.customer_key",
            ),
            (
                |m| m.customer_key = "member_id".into(),
                "mailer.customer_key",
            ),
            (|m| m.concurrency = 0, "mailer.concurrency"),
            (|m| m.receive_batch = 1001, "mailer.receive_batch"),
            (
                |m| m.claim_ttl = Duration::from_millis(500),
                "mailer.claim_ttl",
            ),
            (|m| m.retry_backoff.clear(), "mailer.retry_backoff"),
            (|m| m.default_transport.clear(), "mailer.default_transport"),
        ];
        for (mutate, key) in cases {
            let mut m = MailerSettings::default();
            mutate(&mut m);
            let err = m.validate().unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().starts_with(key));
        }

        type AudienceMutation = fn(&mut AudienceSettings);
        let cases: Vec<(AudienceMutation, &str)> = vec![
            (
                |a| a.poll_interval = Duration::ZERO,
                "audience.poll_interval",
            ),
            (|a| a.batch_size = 0, "audience.batch_size"),
            (
                |a| a.batch_size = MAX_AUDIENCE_BATCH + 1,
                "audience.batch_size",
            ),
            (|a| a.lease_ttl = Duration::ZERO, "audience.lease_ttl"),
            (
                |a| a.affinity = AffinitySettings::Http(HttpAffinitySettings::new("file:///x")),
                "audience.affinity.url",
            ),
            (
                |a| {
                    a.affinity = AffinitySettings::Http(HttpAffinitySettings::new("http://x/a?b=c"))
                },
                "audience.affinity.url",
            ),
            (
                |a| {
                    let mut http = HttpAffinitySettings::new("http://x");
                    http.page_size = 0;
                    a.affinity = AffinitySettings::Http(http);
                },
                "audience.affinity.page_size",
            ),
            (
                |a| {
                    let mut http = HttpAffinitySettings::new("http://x");
                    http.timeout = Duration::ZERO;
                    a.affinity = AffinitySettings::Http(http);
                },
                "audience.affinity.timeout",
            ),
        ];
        for (mutate, key) in cases {
            let mut a = AudienceSettings::default();
            mutate(&mut a);
            assert_eq!(a.validate().unwrap_err().key, key);
        }
    }

    #[test]
    fn backoff_follows_the_schedule_then_repeats_its_last_entry() {
        let m = MailerSettings::default();
        let secs = |n| Duration::from_secs(n);
        assert_eq!(m.backoff_for(0), secs(30));
        assert_eq!(m.backoff_for(1), secs(30));
        assert_eq!(m.backoff_for(2), secs(120));
        assert_eq!(m.backoff_for(4), secs(1800));
        assert_eq!(m.backoff_for(50), secs(1800));
    }

    #[test]
    fn the_default_transport_is_an_outbox_under_the_data_dir() {
        let transports = default_transports(Path::new("/srv/herald"));
        let Some(TransportConfig::Outbox(outbox)) = transports.get(DEFAULT_TRANSPORT) else {
            panic!("{transports:?}")
        };
        assert_eq!(outbox.dir, Path::new("/srv/herald/outbox"));
    }

    #[test]
    fn a_signing_key_is_created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/unsubscribe.key");
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(first.len(), GENERATED_KEY_LEN);
        assert_eq!(load_or_create_key(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = dir.path().join("other.key");
        assert_ne!(load_or_create_key(&other).unwrap(), first);

        std::fs::write(&other, "not hex").unwrap();
        let err = load_or_create_key(&other).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("hex"), "{err}");

        std::fs::write(&other, "").unwrap();
        let err = load_or_create_key(&other).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("empty"), "{err}");
    }

    /// Processes sharing a data folder start at once (a scheduler pair, say):
    /// none may read the file while another is still writing it.
    #[test]
    fn processes_creating_the_key_at_once_all_get_the_same_whole_key() {
        const RACERS: usize = 8;
        for _ in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("unsubscribe.key");
            let start = std::sync::Barrier::new(RACERS);
            let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..RACERS)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            load_or_create_key(&path).unwrap()
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert_eq!(keys[0].len(), GENERATED_KEY_LEN);
            assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["unsubscribe.key"], "no temporary file is left");
        }
    }
}
