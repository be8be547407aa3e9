use async_trait::async_trait;
use herald_core::api_key::{ApiKeyId, ApiKeyName};
use herald_core::Timestamp;
use sqlx::PgPool;

use super::{name_conflict, ApiKeyRow, ApiKeySql, NewKey, COLUMNS};
use crate::error::is_unique_violation;
use crate::StoreError;

/// The partial unique index that keeps active key names unique.
const ACTIVE_NAME_INDEX: &str = "api_keys_active_name";

pub(crate) struct PgApiKeySql(pub PgPool);

#[async_trait]
impl ApiKeySql for PgApiKeySql {
    const BACKEND: &'static str = crate::postgres::BACKEND;

    async fn insert(
        &self,
        new: &NewKey,
        name: &ApiKeyName,
        scopes: &str,
        now: Timestamp,
    ) -> Result<ApiKeyRow, StoreError> {
        sqlx::query_as(&format!(
            "INSERT INTO api_keys (id, name, scopes, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .bind(new.id.as_str())
        .bind(name.as_str())
        .bind(scopes)
        .bind(&new.secret_hash)
        .bind(now.millis())
        .fetch_one(&self.0)
        .await
        .map_err(|e| {
            let on_name = e
                .as_database_error()
                .and_then(|d| d.constraint())
                .is_some_and(|c| c == ACTIVE_NAME_INDEX);
            if is_unique_violation(&e) && on_name {
                name_conflict(name)
            } else {
                StoreError::postgres(e, "create api key")
            }
        })
    }

    async fn by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRow>, StoreError> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.0)
            .await
            .map_err(|e| StoreError::postgres(e, "read api key"))
    }

    async fn touch(&self, id: &ApiKeyId, now: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(now.millis())
        .execute(&self.0)
        .await
        .map_err(|e| StoreError::postgres(e, "record api key use"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn all(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))
        .fetch_all(&self.0)
        .await
        .map_err(|e| StoreError::postgres(e, "list api keys"))
    }

    async fn revoke(&self, id: &ApiKeyId, now: Timestamp) -> Result<Option<ApiKeyRow>, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
             RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(now.millis())
        .fetch_optional(&self.0)
        .await
        .map_err(|e| StoreError::postgres(e, "revoke api key"))
    }
}
