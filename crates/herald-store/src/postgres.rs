//! The PostgreSQL side of the store: one connection pool, shared by every
//! aggregate and by any bus backend that lives in the same database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::url::mask_password;
use crate::StoreError;

pub(crate) const BACKEND: &str = "postgres";

/// How long opening a connection may take before the store gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operation waits for a free pooled connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: u32 = 10;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone)]
pub struct PgDb {
    pub pool: PgPool,
}

impl PgDb {
    /// Connects to the database named by a `postgres://` or `postgresql://`
    /// URL.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
            url: mask_password(url),
            message: e.to_string(),
        })?;
        Self::connect_with(options).await
    }

    /// Connects with explicit options (tests use this to pin `search_path`
    /// to a schema of their own).
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self, StoreError> {
        // One direct connection first: the pool retries a refused connection
        // until its acquire timeout and then reports only "timed out", which
        // hides the real cause from whoever is starting Herald.
        let target = describe(&options);
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| StoreError::Backend {
                backend: BACKEND,
                message: format!(
                    "cannot connect to {target}: no answer within {CONNECT_TIMEOUT:?}"
                ),
            })?
            .map_err(|e| StoreError::postgres(e, &format!("cannot connect to {target}")))?;
        // The probe has done its job; a failure to say goodbye changes nothing.
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration {
                backend: BACKEND,
                message: e.to_string(),
            })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::postgres(e, "ping"))?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn describe(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or(options.get_username());
    match options.get_socket() {
        Some(socket) => format!("{} (database {database})", socket.display()),
        None => format!(
            "{}:{} (database {database})",
            options.get_host(),
            options.get_port()
        ),
    }
}
