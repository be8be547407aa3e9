//! API keys: created with a random secret shown once, stored as the SHA-256
//! of that secret, looked up by their public id.
//!
//! Names are unique among active keys (a revoked key's name can be reused),
//! so a name is a safe handle for an operator; rotating a key means creating
//! its successor under a new name, switching, then revoking the old one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::api_key::{
    ApiKey, ApiKeyId, ApiKeyName, ApiKeyToken, Scopes, ID_BYTES, SECRET_BYTES,
};
use herald_core::{Clock, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// `last_used_at` is written at most this often per key, so authenticating
/// every request does not turn every request into a write.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Creates a key and returns it with its token, the only time the
    /// token is available. A name already used by an active key is a
    /// [`StoreError::Conflict`].
    async fn create(
        &self,
        name: &ApiKeyName,
        scopes: &Scopes,
    ) -> Result<(ApiKey, ApiKeyToken), StoreError>;

    /// The active key the bearer token belongs to. A malformed token, an
    /// unknown id, a wrong secret and a revoked key all give `Ok(None)`.
    async fn authenticate(&self, token: &str) -> Result<Option<ApiKey>, StoreError>;

    async fn get(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError>;

    /// Every key, revoked ones included, oldest first.
    async fn list(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes the key; revoking it again keeps the first revocation time.
    /// An unknown id is a [`StoreError::NotFound`].
    async fn revoke(&self, id: &ApiKeyId) -> Result<ApiKey, StoreError>;
}

/// The statements one dialect runs; [`ApiKeys`] holds the rules, once.
#[async_trait]
pub(crate) trait ApiKeySql: Send + Sync + 'static {
    const BACKEND: &'static str;

    /// Inserts the key; a clash with an active key's name is reported as
    /// [`name_conflict`].
    async fn insert(
        &self,
        new: &NewKey,
        name: &ApiKeyName,
        scopes: &str,
        now: Timestamp,
    ) -> Result<ApiKeyRow, StoreError>;
    async fn by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRow>, StoreError>;
    /// Sets `last_used_at` on an active key; false if the key is revoked.
    async fn touch(&self, id: &ApiKeyId, now: Timestamp) -> Result<bool, StoreError>;
    async fn all(&self) -> Result<Vec<ApiKeyRow>, StoreError>;
    async fn revoke(&self, id: &ApiKeyId, now: Timestamp) -> Result<Option<ApiKeyRow>, StoreError>;
}

pub(crate) struct ApiKeys<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: ApiKeySql> ApiKeys<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }
}

#[async_trait]
impl<S: ApiKeySql> ApiKeyStore for ApiKeys<S> {
    async fn create(
        &self,
        name: &ApiKeyName,
        scopes: &Scopes,
    ) -> Result<(ApiKey, ApiKeyToken), StoreError> {
        let new = NewKey::generate();
        let row = self
            .sql
            .insert(&new, name, &scopes.to_string(), self.clock.now())
            .await?;
        Ok((row.into_key(S::BACKEND)?, new.token))
    }

    async fn authenticate(&self, token: &str) -> Result<Option<ApiKey>, StoreError> {
        let Ok(token) = ApiKeyToken::parse(token) else {
            return Ok(None);
        };
        let Some(row) = self.sql.by_id(&token.id()).await? else {
            return Ok(None);
        };
        if !secret_matches(&token, &row.secret_hash) || row.revoked_at.is_some() {
            return Ok(None);
        }
        let mut key = row.into_key(S::BACKEND)?;
        let now = self.clock.now();
        if needs_touch(key.last_used_at, now) {
            // A failed touch means the key was revoked since it was read.
            if !self.sql.touch(&key.id, now).await? {
                return Ok(None);
            }
            key.last_used_at = Some(now);
        }
        Ok(Some(key))
    }

    async fn get(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        self.sql
            .by_id(id)
            .await?
            .map(|row| row.into_key(S::BACKEND))
            .transpose()
    }

    async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.sql
            .all()
            .await?
            .into_iter()
            .map(|row| row.into_key(S::BACKEND))
            .collect()
    }

    async fn revoke(&self, id: &ApiKeyId) -> Result<ApiKey, StoreError> {
        self.sql
            .revoke(id, self.clock.now())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("api key {id}"),
            })?
            .into_key(S::BACKEND)
    }
}

/// A fresh key: random id and secret, and the hash that is all the store
/// keeps of the secret.
pub(crate) struct NewKey {
    pub id: ApiKeyId,
    pub token: ApiKeyToken,
    pub secret_hash: Vec<u8>,
}

impl NewKey {
    fn generate() -> Self {
        let id = ApiKeyId::from_bytes(rand::random::<[u8; ID_BYTES]>());
        let token = ApiKeyToken::from_parts(&id, &rand::random::<[u8; SECRET_BYTES]>());
        let secret_hash = secret_hash(&token);
        Self {
            id,
            token,
            secret_hash,
        }
    }
}

fn secret_hash(token: &ApiKeyToken) -> Vec<u8> {
    Sha256::digest(token.secret().as_bytes()).to_vec()
}

/// Compares in constant time so response timing says nothing about how
/// much of a guessed secret was right.
fn secret_matches(token: &ApiKeyToken, stored_hash: &[u8]) -> bool {
    secret_hash(token).ct_eq(stored_hash).into()
}

fn needs_touch(last_used_at: Option<Timestamp>, now: Timestamp) -> bool {
    last_used_at.is_none_or(|t| now.since(t) >= LAST_USED_RESOLUTION)
}

pub(crate) const COLUMNS: &str =
    "id, name, scopes, secret_hash, created_at, last_used_at, revoked_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: String,
    name: String,
    scopes: String,
    secret_hash: Vec<u8>,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl ApiKeyRow {
    fn into_key(self, backend: &'static str) -> Result<ApiKey, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            backend,
            what: "api key",
            message,
        };
        let id = ApiKeyId::parse(self.id).map_err(|e| corrupt(e.to_string()))?;
        let name = ApiKeyName::parse(self.name).map_err(|e| corrupt(format!("key {id}: {e}")))?;
        let scopes = self
            .scopes
            .parse()
            .map_err(|e| corrupt(format!("key {id}: {e}")))?;
        Ok(ApiKey {
            id,
            name,
            scopes,
            created_at: Timestamp(self.created_at),
            last_used_at: self.last_used_at.map(Timestamp),
            revoked_at: self.revoked_at.map(Timestamp),
        })
    }
}

pub(crate) fn name_conflict(name: &ApiKeyName) -> StoreError {
    StoreError::Conflict {
        what: format!("an active api key named {:?} already exists", name.as_str()),
    }
}
