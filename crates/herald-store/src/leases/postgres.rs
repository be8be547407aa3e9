use async_trait::async_trait;
use herald_core::Timestamp;
use sqlx::PgPool;

use super::{Lease, LeaseRow, LeaseSql, COLUMNS};
use crate::StoreError;

/// Each statement is atomic on its own: under READ COMMITTED a concurrent
/// upsert on the same name waits for the first to commit, then re-checks the
/// `WHERE` against the new row and so finds it unexpired.
pub(crate) struct PgLeaseSql(pub PgPool);

#[async_trait]
impl LeaseSql for PgLeaseSql {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as(&format!(
            "INSERT INTO leases (name, holder, token, acquired_at, expires_at) \
             VALUES ($1, $2, 1, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                 token = leases.token + 1, acquired_at = EXCLUDED.acquired_at, \
                 expires_at = EXCLUDED.expires_at \
             WHERE leases.expires_at <= EXCLUDED.acquired_at \
             RETURNING {COLUMNS}"
        ))
        .bind(name)
        .bind(holder)
        .bind(now.millis())
        .bind(expires_at.millis())
        .fetch_optional(&self.0)
        .await
        .map_err(|e| StoreError::postgres(e, &format!("acquire lease {name:?}")))
    }

    async fn extend(
        &self,
        lease: &Lease,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE leases SET expires_at = $5 \
             WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > $4 \
             RETURNING {COLUMNS}"
        ))
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .bind(now.millis())
        .bind(expires_at.millis())
        .fetch_optional(&self.0)
        .await
        .map_err(|e| StoreError::postgres(e, &format!("update lease {:?}", lease.name)))
    }

    async fn unexpired(&self, name: &str, now: Timestamp) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM leases WHERE name = $1 AND expires_at > $2"
        ))
        .bind(name)
        .bind(now.millis())
        .fetch_optional(&self.0)
        .await
        .map_err(|e| StoreError::postgres(e, &format!("read lease {name:?}")))
    }
}
