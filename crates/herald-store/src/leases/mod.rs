//! Leases: a named right held by one holder until it expires, for rules like
//! "one active scheduler". Each new acquisition of a name gets a strictly
//! larger fencing token, so work stamped with an old token can be refused
//! after a takeover.
//!
//! Expiry is judged by the injected clock of whichever process asks, so
//! processes sharing a lease need clocks that agree to well within the ttl.
//! A lease that ran out is lost even if nobody has taken it yet: its holder
//! must acquire again and so gets a new token.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::time::duration_millis;
use herald_core::{Clock, Timestamp};

use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// The longest lease name or holder accepted, in bytes.
pub const MAX_LEASE_FIELD_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// Grows by one with every acquisition of this name, never reused.
    pub token: i64,
    pub acquired_at: Timestamp,
    pub expires_at: Timestamp,
}

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease if it is free or expired; `None` while another (or
    /// the same) holder has it. Renew a lease you hold instead.
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Extends a lease still held under the same token to `now + ttl`;
    /// `None` if it expired or changed hands.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError>;

    /// Gives the lease up at once; false if it was no longer held.
    async fn release(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// The unexpired lease on `name`, if any.
    async fn current(&self, name: &str) -> Result<Option<Lease>, StoreError>;
}

/// The statements one dialect runs; [`Leases`] checks input and reads the
/// clock, once. Each statement is a single atomic upsert or update, so
/// concurrent callers in any number of processes cannot both win.
#[async_trait]
pub(crate) trait LeaseSql: Send + Sync + 'static {
    /// Inserts the lease or takes over an expired one (token + 1).
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<LeaseRow>, StoreError>;
    /// Moves `expires_at` of the unexpired lease matching name, holder and
    /// token.
    async fn extend(
        &self,
        lease: &Lease,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<LeaseRow>, StoreError>;
    async fn unexpired(&self, name: &str, now: Timestamp) -> Result<Option<LeaseRow>, StoreError>;
}

pub(crate) struct Leases<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: LeaseSql> Leases<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }
}

#[async_trait]
impl<S: LeaseSql> LeaseStore for Leases<S> {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        check_field("lease name", name)?;
        check_field("lease holder", holder)?;
        let ttl = check_ttl(ttl)?;
        let now = self.clock.now();
        let row = self.sql.acquire(name, holder, now, now.plus(ttl)).await?;
        Ok(row.map(LeaseRow::into_lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let ttl = check_ttl(ttl)?;
        let now = self.clock.now();
        let row = self.sql.extend(lease, now, now.plus(ttl)).await?;
        Ok(row.map(LeaseRow::into_lease))
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        // Expiring now, rather than deleting the row, keeps the token so the
        // next holder's is still larger.
        let now = self.clock.now();
        Ok(self.sql.extend(lease, now, now).await?.is_some())
    }

    async fn current(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = self.sql.unexpired(name, self.clock.now()).await?;
        Ok(row.map(LeaseRow::into_lease))
    }
}

fn check_field(field: &'static str, value: &str) -> Result<(), StoreError> {
    let message = if value.is_empty() {
        "must not be empty".to_owned()
    } else if value.len() > MAX_LEASE_FIELD_LEN {
        format!(
            "is {} bytes long; the limit is {MAX_LEASE_FIELD_LEN}",
            value.len()
        )
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidInput { field, message })
}

fn check_ttl(ttl: Duration) -> Result<Duration, StoreError> {
    if duration_millis(ttl) < 1 {
        return Err(StoreError::InvalidInput {
            field: "lease ttl",
            message: format!("must be at least 1ms, got {ttl:?}"),
        });
    }
    Ok(ttl)
}

pub(crate) const COLUMNS: &str = "name, holder, token, acquired_at, expires_at";

#[derive(sqlx::FromRow)]
pub(crate) struct LeaseRow {
    name: String,
    holder: String,
    token: i64,
    acquired_at: i64,
    expires_at: i64,
}

impl LeaseRow {
    fn into_lease(self) -> Lease {
        Lease {
            name: self.name,
            holder: self.holder,
            token: self.token,
            acquired_at: Timestamp(self.acquired_at),
            expires_at: Timestamp(self.expires_at),
        }
    }
}
