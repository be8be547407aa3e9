use async_trait::async_trait;
use herald_core::Timestamp;

use super::{Lease, LeaseRow, LeaseSql, COLUMNS};
use crate::{SqliteDb, StoreError};

/// Every statement here is a single write through the writer. SQLite takes
/// the write lock when such a statement starts (what `BEGIN IMMEDIATE` would
/// do for a multi-statement transaction), so the check for expiry and the
/// update cannot interleave with another process's.
pub(crate) struct SqliteLeaseSql(pub SqliteDb);

#[async_trait]
impl LeaseSql for SqliteLeaseSql {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as(&format!(
            "INSERT INTO leases (name, holder, token, acquired_at, expires_at) \
             VALUES (?1, ?2, 1, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 token = leases.token + 1, acquired_at = excluded.acquired_at, \
                 expires_at = excluded.expires_at \
             WHERE leases.expires_at <= excluded.acquired_at \
             RETURNING {COLUMNS}"
        ))
        .bind(name)
        .bind(holder)
        .bind(now.millis())
        .bind(expires_at.millis())
        .fetch_optional(&self.0.writer)
        .await
        .map_err(|e| StoreError::sqlite(e, &format!("acquire lease {name:?}")))
    }

    async fn extend(
        &self,
        lease: &Lease,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE leases SET expires_at = ?5 \
             WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > ?4 \
             RETURNING {COLUMNS}"
        ))
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.token)
        .bind(now.millis())
        .bind(expires_at.millis())
        .fetch_optional(&self.0.writer)
        .await
        .map_err(|e| StoreError::sqlite(e, &format!("update lease {:?}", lease.name)))
    }

    async fn unexpired(&self, name: &str, now: Timestamp) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM leases WHERE name = ?1 AND expires_at > ?2"
        ))
        .bind(name)
        .bind(now.millis())
        .fetch_optional(&self.0.reader)
        .await
        .map_err(|e| StoreError::sqlite(e, &format!("read lease {name:?}")))
    }
}
