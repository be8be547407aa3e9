//! Web UI users: accounts with a role, passwords kept as Argon2id hashes,
//! sessions looked up by the SHA-256 of their token, and a lock-out after
//! repeated failed sign-ins.
//!
//! Rules kept here, once, for both dialects:
//! - An address is one account however it is capitalised.
//! - A sign-in attempt is recorded *before* the password is checked and
//!   cleared by a success, so attempts running in parallel count against
//!   the limit too. Once [`LockoutPolicy::max_failures`] attempts fall
//!   within the window, further attempts are refused without checking the
//!   password, even a right one, until the oldest of them ages out.
//! - An unknown address costs the same hashing work as a known one and
//!   gets the same answer, so sign-in does not tell which addresses exist.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use herald_core::catalog::{normalize_email, EmailAddress, TimeZone};
use herald_core::{Clock, Timestamp};
use sha2::{Digest, Sha256};

use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// Shorter passwords are refused when an account is created or changed.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longer passwords are refused outright, so hashing cannot be made to
/// take arbitrarily long.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Random bytes in a session token and in a CSRF token.
const TOKEN_BYTES: usize = 32;
/// The hash an unknown address is checked against, with the same
/// parameters as real ones, so refusing it costs the same work.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$aGVyYWxkLWR1bW15LXNsdA$SWABStodJXxTeveAehkaJD5bZvEVNZjzLNH8dYuB1Jo";

/// What a user may do in the web UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserRole {
    /// Everything, operations included (queues, redrives).
    Admin,
    /// Creates and changes marketing content: alerts, catalog, templates.
    Marketer,
    /// Sees everything, changes nothing.
    Viewer,
}

impl UserRole {
    pub const ALL: [UserRole; 3] = [UserRole::Admin, UserRole::Marketer, UserRole::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Marketer => "marketer",
            UserRole::Viewer => "viewer",
        }
    }

    /// Creating and changing alerts, the catalog and templates.
    pub fn can_change_marketing(self) -> bool {
        matches!(self, UserRole::Admin | UserRole::Marketer)
    }

    /// Acting on queues and other operational state.
    pub fn can_operate(self) -> bool {
        self == UserRole::Admin
    }
}

impl fmt::Display for UserRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; roles are admin, marketer and viewer"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// As given when the account was created.
    pub email: String,
    pub role: UserRole,
    /// The zone the UI shows and reads times in; UTC when `None`.
    pub time_zone: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: EmailAddress,
    pub role: UserRole,
    pub password: String,
    pub time_zone: Option<TimeZone>,
}

/// A signed-in user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    /// The synchronizer token every form of this session must send back.
    pub csrf_token: String,
    pub expires_at: Timestamp,
}

/// The secret a session cookie carries; the store keeps only its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

/// The answer to a sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    Accepted {
        session: Session,
        token: SessionToken,
    },
    /// Wrong address or password; which of the two is not said.
    Refused,
    /// Too many attempts within the window; no password is checked until
    /// `until`.
    LockedOut { until: Timestamp },
}

/// How many sign-in attempts an address gets within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
        }
    }
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates an account. An address already in use (in any
    /// capitalisation) is a [`StoreError::Conflict`]; a password outside
    /// [`MIN_PASSWORD_CHARS`]..=[`MAX_PASSWORD_BYTES`] is
    /// [`StoreError::InvalidInput`] on `password`.
    async fn create(&self, new: &NewUser) -> Result<User, StoreError>;

    /// Replaces the password of the account with this address and ends its
    /// sessions; an unknown address is [`StoreError::NotFound`].
    async fn set_password(&self, email: &str, password: &str) -> Result<User, StoreError>;

    async fn get(&self, id: &str) -> Result<Option<User>, StoreError>;

    async fn by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Every account, by address.
    async fn list(&self) -> Result<Vec<User>, StoreError>;

    /// Checks the password under `policy` and, when it is right, opens a
    /// session lasting `ttl`.
    async fn sign_in(
        &self,
        email: &str,
        password: &str,
        policy: LockoutPolicy,
        ttl: Duration,
    ) -> Result<SignIn, StoreError>;

    /// The live session a cookie's token belongs to; an unknown, malformed
    /// or expired token is `Ok(None)`.
    async fn session(&self, token: &str) -> Result<Option<Session>, StoreError>;

    /// Ends the session; an unknown token is not an error.
    async fn sign_out(&self, token: &str) -> Result<(), StoreError>;
}

/// The statements one dialect runs; [`Users`] holds the rules, once.
#[async_trait]
pub(crate) trait UserSql: Send + Sync + 'static {
    const BACKEND: &'static str;

    /// Inserts the account; `Ok(None)` when the address is taken.
    async fn insert_user(&self, user: &UserRecord) -> Result<Option<UserRow>, StoreError>;
    /// Sets the hash and deletes the account's sessions, in one transaction.
    async fn update_password(
        &self,
        email_normalized: &str,
        password_hash: &str,
        now: Timestamp,
    ) -> Result<Option<UserRow>, StoreError>;
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>, StoreError>;
    async fn user_by_email(&self, email_normalized: &str) -> Result<Option<UserRow>, StoreError>;
    async fn users(&self) -> Result<Vec<UserRow>, StoreError>;

    /// Attempt times for the address after `since`, newest first.
    async fn attempts_since(
        &self,
        email_normalized: &str,
        since: Timestamp,
    ) -> Result<Vec<i64>, StoreError>;
    /// Records an attempt and forgets the address's attempts before `forget_before`.
    async fn insert_attempt(
        &self,
        id: &str,
        email_normalized: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError>;
    async fn clear_attempts(&self, email_normalized: &str) -> Result<(), StoreError>;

    /// Inserts the session and deletes every session expired by `now`.
    async fn insert_session(&self, session: &SessionRecord<'_>) -> Result<(), StoreError>;
    /// The session with this token hash and its user, if not expired at `now`.
    async fn session_by_hash(
        &self,
        token_hash: &[u8],
        now: Timestamp,
    ) -> Result<Option<SessionRow>, StoreError>;
    async fn delete_session(&self, token_hash: &[u8]) -> Result<(), StoreError>;
}

pub(crate) struct UserRecord {
    pub id: String,
    pub email: String,
    pub email_normalized: String,
    pub role: &'static str,
    pub password_hash: String,
    pub time_zone: Option<String>,
    pub now: Timestamp,
}

pub(crate) struct SessionRecord<'a> {
    pub token_hash: Vec<u8>,
    pub user_id: &'a str,
    pub csrf_token: &'a str,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

pub(crate) struct Users<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: UserSql> Users<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }

    fn user(&self, row: UserRow) -> Result<User, StoreError> {
        row.into_user(S::BACKEND)
    }
}

#[async_trait]
impl<S: UserSql> UserStore for Users<S> {
    async fn create(&self, new: &NewUser) -> Result<User, StoreError> {
        check_password(&new.password)?;
        let password_hash = hash_password(new.password.clone()).await?;
        let record = UserRecord {
            id: uuid::Uuid::now_v7().simple().to_string(),
            email: new.email.to_string(),
            email_normalized: new.email.normalized(),
            role: new.role.as_str(),
            password_hash,
            time_zone: new.time_zone.as_ref().map(ToString::to_string),
            now: self.clock.now(),
        };
        let row = self
            .sql
            .insert_user(&record)
            .await?
            .ok_or_else(|| StoreError::Conflict {
                what: format!("a user with the address {} already exists", record.email),
            })?;
        self.user(row)
    }

    async fn set_password(&self, email: &str, password: &str) -> Result<User, StoreError> {
        check_password(password)?;
        let password_hash = hash_password(password.to_owned()).await?;
        let row = self
            .sql
            .update_password(&normalize_email(email), &password_hash, self.clock.now())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("user {email}"),
            })?;
        self.user(row)
    }

    async fn get(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.sql
            .user_by_id(id)
            .await?
            .map(|row| self.user(row))
            .transpose()
    }

    async fn by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.sql
            .user_by_email(&normalize_email(email))
            .await?
            .map(|row| self.user(row))
            .transpose()
    }

    async fn list(&self) -> Result<Vec<User>, StoreError> {
        self.sql
            .users()
            .await?
            .into_iter()
            .map(|row| self.user(row))
            .collect()
    }

    async fn sign_in(
        &self,
        email: &str,
        password: &str,
        policy: LockoutPolicy,
        ttl: Duration,
    ) -> Result<SignIn, StoreError> {
        let email = normalize_email(email);
        let now = self.clock.now();
        let window_start =
            Timestamp(now.millis() - herald_core::time::duration_millis(policy.window));
        let recent = self.sql.attempts_since(&email, window_start).await?;
        if let Some(until) = locked_until(&recent, policy) {
            return Ok(SignIn::LockedOut { until });
        }
        self.sql
            .insert_attempt(&new_token(), &email, now, window_start)
            .await?;
        let row = self.sql.user_by_email(&email).await?;
        let hash = row
            .as_ref()
            .map_or_else(|| DUMMY_HASH.to_owned(), |r| r.password_hash.clone());
        let right = password.len() <= MAX_PASSWORD_BYTES
            && verify_password(password.to_owned(), hash).await?;
        let Some(row) = row.filter(|_| right) else {
            let after = self.sql.attempts_since(&email, window_start).await?;
            return Ok(match locked_until(&after, policy) {
                Some(until) => SignIn::LockedOut { until },
                None => SignIn::Refused,
            });
        };
        self.sql.clear_attempts(&email).await?;
        let user = self.user(row)?;
        let token = SessionToken(new_token());
        let csrf_token = new_token();
        let expires_at = now.plus(ttl);
        self.sql
            .insert_session(&SessionRecord {
                token_hash: token_hash(token.expose()),
                user_id: &user.id,
                csrf_token: &csrf_token,
                now,
                expires_at,
            })
            .await?;
        Ok(SignIn::Accepted {
            session: Session {
                user,
                csrf_token,
                expires_at,
            },
            token,
        })
    }

    async fn session(&self, token: &str) -> Result<Option<Session>, StoreError> {
        if !is_token_shaped(token) {
            return Ok(None);
        }
        let Some(row) = self
            .sql
            .session_by_hash(&token_hash(token), self.clock.now())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Session {
            csrf_token: row.csrf_token,
            expires_at: Timestamp(row.expires_at),
            user: self.user(row.user)?,
        }))
    }

    async fn sign_out(&self, token: &str) -> Result<(), StoreError> {
        if is_token_shaped(token) {
            self.sql.delete_session(&token_hash(token)).await?;
        }
        Ok(())
    }
}

/// When the address unlocks, given its attempts in the window (newest
/// first): once the `max_failures`-th newest one ages out of the window.
fn locked_until(recent: &[i64], policy: LockoutPolicy) -> Option<Timestamp> {
    let max = usize::try_from(policy.max_failures).unwrap_or(usize::MAX);
    recent
        .get(max.checked_sub(1)?)
        .map(|&t| Timestamp(t).plus(policy.window))
}

fn check_password(password: &str) -> Result<(), StoreError> {
    let chars = password.chars().count();
    let message = if chars < MIN_PASSWORD_CHARS {
        format!("must be at least {MIN_PASSWORD_CHARS} characters long (it has {chars})")
    } else if password.len() > MAX_PASSWORD_BYTES {
        format!("must be at most {MAX_PASSWORD_BYTES} bytes long")
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidInput {
        field: "password",
        message,
    })
}

fn hash_password_blocking(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// Argon2 is deliberately slow; it runs off the async workers.
async fn hash_password(password: String) -> Result<String, StoreError> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|message| StoreError::Backend {
            backend: "argon2",
            message: format!("cannot hash the password: {message}"),
        })
}

async fn verify_password(password: String, hash: String) -> Result<bool, StoreError> {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| StoreError::Backend {
        backend: "argon2",
        message: format!("password check failed: {e}"),
    })
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; TOKEN_BYTES]>())
}

fn is_token_shaped(token: &str) -> bool {
    token.len() == TOKEN_BYTES * 2 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub(crate) const USER_COLUMNS: &str =
    "id, email, role, password_hash, time_zone, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    email: String,
    role: String,
    password_hash: String,
    time_zone: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl UserRow {
    fn into_user(self, backend: &'static str) -> Result<User, StoreError> {
        let role = self.role.parse().map_err(|message| StoreError::Corrupt {
            backend,
            what: "user",
            message: format!("user {}: {message}", self.id),
        })?;
        Ok(User {
            id: self.id,
            email: self.email,
            role,
            time_zone: self.time_zone,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    csrf_token: String,
    expires_at: i64,
    #[sqlx(flatten)]
    user: UserRow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lifts_when_the_oldest_counted_attempt_ages_out() {
        let policy = LockoutPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
        };
        assert_eq!(locked_until(&[30_000, 20_000], policy), None);
        assert_eq!(
            locked_until(&[30_000, 20_000, 10_000, 5_000], policy),
            Some(Timestamp(70_000))
        );
        let never = LockoutPolicy {
            max_failures: 0,
            ..policy
        };
        assert_eq!(locked_until(&[1, 2, 3], never), None);
    }

    #[test]
    fn roles_parse_and_grant() {
        for role in UserRole::ALL {
            assert_eq!(role.as_str().parse::<UserRole>(), Ok(role));
        }
        assert!("root".parse::<UserRole>().unwrap_err().contains("viewer"));
        assert!(UserRole::Marketer.can_change_marketing() && !UserRole::Marketer.can_operate());
        assert!(!UserRole::Viewer.can_change_marketing() && !UserRole::Viewer.can_operate());
        assert!(UserRole::Admin.can_operate());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password_blocking("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"correct horse batterY", &parsed)
            .is_err());
    }

    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_ones() {
        let real = hash_password_blocking("anything at all").unwrap();
        let params = |h: &str| h.split('$').nth(3).map(str::to_owned);
        assert_eq!(params(DUMMY_HASH), params(&real));
    }

    #[test]
    fn token_shape_is_checked_before_any_lookup() {
        assert!(is_token_shaped(&new_token()));
        assert!(!is_token_shaped(""));
        assert!(!is_token_shaped(&"g".repeat(64)));
        assert!(!is_token_shaped(&"a".repeat(65)));
    }
}
