//! API keys as the HTTP API sees them: what a key may do ([`Scope`]), its
//! name, and the bearer token format `hk_<id>_<secret>`.
//!
//! The id is public (it is how a key is looked up, listed and revoked); only
//! the secret part is confidential, and the store keeps nothing but its hash.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::names::{NameError, QueueName};
use crate::time::Timestamp;

/// Bytes of randomness in a key id (shown as twice as many hex digits).
pub const ID_BYTES: usize = 8;
/// Bytes of randomness in a key secret (shown as twice as many hex digits).
pub const SECRET_BYTES: usize = 32;
/// The longest key name accepted.
pub const MAX_KEY_NAME_LEN: usize = 100;

const TOKEN_PREFIX: &str = "hk_";
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("api key name is empty")]
    EmptyName,
    #[error("api key name is {len} characters long; the limit is {MAX_KEY_NAME_LEN}")]
    NameTooLong { len: usize },
    #[error("api key name {name:?} has leading/trailing whitespace or a control character")]
    InvalidName { name: String },
    #[error("scope {scope:?} is unknown; use admin, marketing, read-only or queues:<prefix>")]
    UnknownScope { scope: String },
    #[error("scope {scope:?}: the queue prefix is not valid: {source}")]
    InvalidQueuePrefix { scope: String, source: NameError },
    #[error("an api key needs at least one scope")]
    NoScopes,
    #[error("api key id {id:?} is not {} lowercase hex digits", 2 * ID_BYTES)]
    InvalidId { id: String },
    #[error("api key token is malformed; expected hk_<id>_<secret>")]
    MalformedToken,
}

/// What a request wants to do, as checked against a key's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Read anything that is not a queue's messages.
    Read,
    /// Create and change marketing content: alerts, templates, brands.
    Marketing,
    /// Operate Herald: keys, routes, shards, jobs, queues.
    Admin,
    /// Receive from and acknowledge on one queue.
    Queue(&'a QueueName),
}

/// One permission carried by an API key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Admin,
    Marketing,
    ReadOnly,
    /// The queues whose names start with this prefix (a shard's reader).
    /// The prefix obeys the queue-name alphabet, so it is held as one.
    Queues(QueueName),
}

impl Scope {
    /// Admin may do anything; marketing implies read; a queue scope grants
    /// its queues and nothing else, so a leaked shard key exposes one shard.
    pub fn allows(&self, access: Access<'_>) -> bool {
        match (self, access) {
            (Scope::Admin, _) => true,
            (Scope::Marketing, Access::Marketing | Access::Read) => true,
            (Scope::ReadOnly, Access::Read) => true,
            (Scope::Queues(prefix), Access::Queue(queue)) => {
                queue.as_str().starts_with(prefix.as_str())
            }
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Marketing => f.write_str("marketing"),
            Scope::ReadOnly => f.write_str("read-only"),
            Scope::Queues(prefix) => write!(f, "queues:{prefix}"),
        }
    }
}

impl FromStr for Scope {
    type Err = ApiKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Scope::Admin),
            "marketing" => Ok(Scope::Marketing),
            "read-only" => Ok(Scope::ReadOnly),
            _ => match s.strip_prefix("queues:") {
                Some(prefix) => QueueName::parse(prefix)
                    .map(Scope::Queues)
                    .map_err(|source| ApiKeyError::InvalidQueuePrefix {
                        scope: s.to_owned(),
                        source,
                    }),
                None => Err(ApiKeyError::UnknownScope {
                    scope: s.to_owned(),
                }),
            },
        }
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A non-empty set of scopes. Its text form is the scopes joined by commas
/// (`admin,queues:shard-3.`); parsing also accepts whitespace between them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Result<Self, ApiKeyError> {
        let set: BTreeSet<Scope> = scopes.into_iter().collect();
        if set.is_empty() {
            return Err(ApiKeyError::NoScopes);
        }
        Ok(Self(set))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    pub fn allows(&self, access: Access<'_>) -> bool {
        self.0.iter().any(|s| s.allows(access))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{scope}")?;
        }
        Ok(())
    }
}

impl FromStr for Scopes {
    type Err = ApiKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scopes = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Scopes::new(scopes)
    }
}

impl serde::Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Scope>::deserialize(d)?;
        Scopes::new(list).map_err(serde::de::Error::custom)
    }
}

/// A key's human name: 1 to [`MAX_KEY_NAME_LEN`] characters, no control
/// characters, no surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ApiKeyName(String);

impl ApiKeyName {
    pub fn parse(name: impl Into<String>) -> Result<Self, ApiKeyError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ApiKeyError::EmptyName);
        }
        let len = name.chars().count();
        if len > MAX_KEY_NAME_LEN {
            return Err(ApiKeyError::NameTooLong { len });
        }
        if name.trim() != name || name.chars().any(char::is_control) {
            return Err(ApiKeyError::InvalidName { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ApiKeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// The public id of a key: lowercase hex of [`ID_BYTES`] random bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ApiKeyId(String);

impl ApiKeyId {
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        Self(lower_hex(&bytes))
    }

    pub fn parse(id: impl Into<String>) -> Result<Self, ApiKeyError> {
        let id = id.into();
        if is_lower_hex(&id, 2 * ID_BYTES) {
            Ok(Self(id))
        } else {
            Err(ApiKeyError::InvalidId { id })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ApiKeyId {
    type Err = ApiKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for ApiKeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// A bearer token in its one valid shape. Its `Debug` hides the secret so a
/// token caught in a log line or a panic message cannot be replayed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyToken(String);

impl ApiKeyToken {
    pub fn from_parts(id: &ApiKeyId, secret: &[u8; SECRET_BYTES]) -> Self {
        Self(format!("{TOKEN_PREFIX}{id}_{}", lower_hex(secret)))
    }

    pub fn parse(token: &str) -> Result<Self, ApiKeyError> {
        // The length check comes first so an oversized header costs nothing.
        if token.len() != TOKEN_LEN {
            return Err(ApiKeyError::MalformedToken);
        }
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(ApiKeyError::MalformedToken)?;
        let (id, secret) = rest.split_once('_').ok_or(ApiKeyError::MalformedToken)?;
        if is_lower_hex(id, 2 * ID_BYTES) && is_lower_hex(secret, 2 * SECRET_BYTES) {
            Ok(Self(token.to_owned()))
        } else {
            Err(ApiKeyError::MalformedToken)
        }
    }

    pub fn id(&self) -> ApiKeyId {
        ApiKeyId(self.id_str().to_owned())
    }

    /// The confidential part, as the hex text the client sends.
    pub fn secret(&self) -> &str {
        &self.0[TOKEN_PREFIX.len() + 2 * ID_BYTES + 1..]
    }

    /// The whole token, to show the user once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn id_str(&self) -> &str {
        &self.0[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + 2 * ID_BYTES]
    }
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyToken({TOKEN_PREFIX}{}_***)", self.id_str())
    }
}

/// A stored API key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: ApiKeyName,
    pub scopes: Scopes,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

fn lower_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> QueueName {
        QueueName::parse(name).unwrap()
    }

    #[test]
    fn scopes_round_trip_through_text_and_json() {
        for text in ["admin", "marketing", "read-only", "queues:shard-3."] {
            let scope: Scope = text.parse().unwrap();
            assert_eq!(scope.to_string(), text);
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), scope);
        }
        let scopes: Scopes = "read-only, admin queues:shard-1.,admin".parse().unwrap();
        assert_eq!(scopes.to_string(), "admin,read-only,queues:shard-1.");
        assert_eq!(scopes.to_string().parse::<Scopes>().unwrap(), scopes);
        let json = serde_json::to_string(&scopes).unwrap();
        assert_eq!(json, r#"["admin","read-only","queues:shard-1."]"#);
        assert_eq!(serde_json::from_str::<Scopes>(&json).unwrap(), scopes);
    }

    #[test]
    fn bad_scopes_are_named() {
        let err = "admin,root".parse::<Scopes>().unwrap_err();
        assert_eq!(
            err,
            ApiKeyError::UnknownScope {
                scope: "root".into()
            }
        );
        assert!(err.to_string().contains("\"root\""), "{err}");
        for bad in ["queues:", "queues:a b", "queues:a/b"] {
            let err = bad.parse::<Scope>().unwrap_err();
            assert!(
                matches!(err, ApiKeyError::InvalidQueuePrefix { .. }),
                "{bad}"
            );
        }
        assert_eq!(" , ".parse::<Scopes>(), Err(ApiKeyError::NoScopes));
        assert!(serde_json::from_str::<Scopes>("[]").is_err());
        assert!(serde_json::from_str::<Scope>("\"Admin\"").is_err());
    }

    #[test]
    fn what_each_scope_allows() {
        let shard3 = queue("shard-3.email-events");
        let shard30 = queue("shard-30.email-events");
        let admin: Scope = "admin".parse().unwrap();
        let marketing: Scope = "marketing".parse().unwrap();
        let read: Scope = "read-only".parse().unwrap();
        let reader: Scope = "queues:shard-3.".parse().unwrap();
        for access in [
            Access::Read,
            Access::Marketing,
            Access::Admin,
            Access::Queue(&shard3),
        ] {
            assert!(admin.allows(access), "{access:?}");
        }
        assert!(marketing.allows(Access::Read) && marketing.allows(Access::Marketing));
        assert!(!marketing.allows(Access::Admin) && !marketing.allows(Access::Queue(&shard3)));
        assert!(read.allows(Access::Read) && !read.allows(Access::Marketing));
        assert!(reader.allows(Access::Queue(&shard3)));
        assert!(!reader.allows(Access::Queue(&shard30)));
        assert!(!reader.allows(Access::Read));
        let scopes = Scopes::new([read, reader]).unwrap();
        assert!(scopes.allows(Access::Read) && scopes.allows(Access::Queue(&shard3)));
        assert!(!scopes.allows(Access::Admin));
    }

    #[test]
    fn key_names_are_checked() {
        assert_eq!(
            ApiKeyName::parse("shard 3 reader").unwrap().as_str(),
            "shard 3 reader"
        );
        assert!(ApiKeyName::parse("é".repeat(MAX_KEY_NAME_LEN)).is_ok());
        assert_eq!(ApiKeyName::parse(""), Err(ApiKeyError::EmptyName));
        assert_eq!(
            ApiKeyName::parse("x".repeat(MAX_KEY_NAME_LEN + 1)),
            Err(ApiKeyError::NameTooLong {
                len: MAX_KEY_NAME_LEN + 1
            })
        );
        for bad in [" lead", "trail ", "tab\there", "nl\n"] {
            assert!(
                matches!(ApiKeyName::parse(bad), Err(ApiKeyError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens_parse_only_in_their_one_shape() {
        let id = ApiKeyId::from_bytes([0xab; ID_BYTES]);
        let token = ApiKeyToken::from_parts(&id, &[0x01; SECRET_BYTES]);
        assert_eq!(token.expose().len(), TOKEN_LEN);
        let parsed = ApiKeyToken::parse(token.expose()).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.id(), id);
        assert_eq!(parsed.secret(), "01".repeat(SECRET_BYTES));
        let good = token.expose().to_owned();
        let upper = good.to_uppercase();
        let swapped = good.replacen("hk_", "xx_", 1);
        let no_sep = good.replacen('_', "", 2);
        let moved_sep = format!("{}_{}{}", &good[..18], &good[18..19], &good[20..]);
        let long = format!("{good}0");
        let multibyte = format!("{}é", &good[..good.len() - 2]);
        for bad in [
            "", "hk_", "Bearer x", &upper, &swapped, &no_sep, &moved_sep, &long, &multibyte,
        ] {
            assert_eq!(
                ApiKeyToken::parse(bad),
                Err(ApiKeyError::MalformedToken),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let id = ApiKeyId::from_bytes([7; ID_BYTES]);
        let token = ApiKeyToken::from_parts(&id, &[0xcd; SECRET_BYTES]);
        let shown = format!("{token:?}");
        assert!(shown.contains(id.as_str()), "{shown}");
        assert!(!shown.contains("cdcd"), "{shown}");
    }

    #[test]
    fn ids_are_lowercase_hex_of_fixed_length() {
        let id = ApiKeyId::from_bytes([0x0f, 0xa0, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(id.as_str(), "0fa00000000000ff");
        assert_eq!(ApiKeyId::parse("0fa00000000000ff").unwrap(), id);
        for bad in [
            "",
            "0FA00000000000FF",
            "0fa00000000000f",
            "0fa00000000000ffa",
            "zzzzzzzzzzzzzzzz",
        ] {
            assert!(
                matches!(ApiKeyId::parse(bad), Err(ApiKeyError::InvalidId { .. })),
                "{bad}"
            );
        }
    }
}
