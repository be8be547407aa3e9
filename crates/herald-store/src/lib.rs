//! The data-access layer: the only code that writes SQL. One trait per
//! aggregate, each implemented for SQLite and PostgreSQL, reached through
//! [`Store`].
//!
//! Adding an aggregate means one trait with its rules (`src/<aggregate>/mod.rs`),
//! the statements per dialect (`sqlite.rs`, `postgres.rs` beside it), one
//! field and one accessor on [`Store`].
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod brand_alerts;
pub mod catalog;
pub mod email_events;
mod error;
pub mod holds;
pub mod leases;
pub mod members;
pub mod page;
pub mod postgres;
pub mod processes;
pub mod sharding;
pub mod sqlite;
mod url;
pub mod users;

use std::fmt;
use std::sync::Arc;

use herald_core::{Clock, SystemClock};

pub use api_keys::ApiKeyStore;
pub use brand_alerts::BrandAlertStore;
pub use catalog::CatalogStore;
pub use email_events::EmailEventStore;
pub use error::StoreError;
pub use holds::HoldStore;
pub use leases::{Lease, LeaseStore};
pub use members::MemberStore;
pub use postgres::PgDb;
pub use processes::ProcessStore;
pub use sharding::ShardingStore;
pub use sqlite::SqliteDb;
pub use url::mask_password;
pub use users::UserStore;

use api_keys::{postgres::PgApiKeySql, sqlite::SqliteApiKeySql, ApiKeys};
use brand_alerts::{postgres::PgBrandAlertSql, sqlite::SqliteBrandAlertSql, BrandAlerts};
use catalog::{postgres::PgCatalogSql, sqlite::SqliteCatalogSql, Catalog};
use email_events::{postgres::PgEmailEventSql, sqlite::SqliteEmailEventSql, EmailEvents};
use holds::{postgres::PgHoldSql, sqlite::SqliteHoldSql, Holds};
use leases::{postgres::PgLeaseSql, sqlite::SqliteLeaseSql, Leases};
use members::{postgres::PgMemberSql, sqlite::SqliteMemberSql, Members};
use processes::{postgres::PgProcessSql, sqlite::SqliteProcessSql, Processes};
use sharding::{postgres::PgShardingSql, sqlite::SqliteShardingSql, Sharding};
use url::BackendKind;
use users::{postgres::PgUserSql, sqlite::SqliteUserSql, Users};

/// The store: one database and every aggregate on it. Clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    sharding: Box<dyn ShardingStore>,
    holds: Box<dyn HoldStore>,
    api_keys: Box<dyn ApiKeyStore>,
    leases: Box<dyn LeaseStore>,
    processes: Box<dyn ProcessStore>,
    brand_alerts: Box<dyn BrandAlertStore>,
    catalog: Box<dyn CatalogStore>,
    members: Box<dyn MemberStore>,
    email_events: Box<dyn EmailEventStore>,
    users: Box<dyn UserStore>,
}

enum Db {
    Sqlite(SqliteDb),
    Postgres(PgDb),
}

impl Store {
    /// Opens the database the URL names: `sqlite:<path>`, `sqlite://<path>`
    /// or a plain path for SQLite, `postgres://` or `postgresql://` for
    /// PostgreSQL. Does not migrate.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with_clock(url, Arc::new(SystemClock)).await
    }

    /// As [`Store::connect`], reading the time from `clock`.
    pub async fn connect_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
        Ok(match url::backend_of(url)? {
            BackendKind::Sqlite => Self::from_sqlite(SqliteDb::open_url(url).await?, clock),
            BackendKind::Postgres => Self::from_postgres(PgDb::connect(url).await?, clock),
        })
    }

    pub fn from_sqlite(db: SqliteDb, clock: Arc<dyn Clock>) -> Store {
        Self::build(
            Box::new(Sharding::new(SqliteShardingSql(db.clone()), clock.clone())),
            Box::new(Holds::new(SqliteHoldSql(db.clone()), clock.clone())),
            Box::new(ApiKeys::new(SqliteApiKeySql(db.clone()), clock.clone())),
            Box::new(Leases::new(SqliteLeaseSql(db.clone()), clock.clone())),
            Box::new(Processes::new(SqliteProcessSql(db.clone()), clock.clone())),
            Box::new(BrandAlerts::new(
                SqliteBrandAlertSql(db.clone()),
                clock.clone(),
            )),
            Box::new(Catalog::new(SqliteCatalogSql(db.clone()), clock.clone())),
            Box::new(EmailEvents::new(
                SqliteEmailEventSql(db.clone()),
                clock.clone(),
            )),
            Box::new(Members::new(SqliteMemberSql(db.clone()), clock.clone())),
            Box::new(Users::new(SqliteUserSql(db.clone()), clock)),
            Db::Sqlite(db),
        )
    }

    pub fn from_postgres(db: PgDb, clock: Arc<dyn Clock>) -> Store {
        Self::build(
            Box::new(Sharding::new(PgShardingSql(db.pool.clone()), clock.clone())),
            Box::new(Holds::new(PgHoldSql(db.pool.clone()), clock.clone())),
            Box::new(ApiKeys::new(PgApiKeySql(db.pool.clone()), clock.clone())),
            Box::new(Leases::new(PgLeaseSql(db.pool.clone()), clock.clone())),
            Box::new(Processes::new(PgProcessSql(db.pool.clone()), clock.clone())),
            Box::new(BrandAlerts::new(
                PgBrandAlertSql(db.pool.clone()),
                clock.clone(),
            )),
            Box::new(Catalog::new(PgCatalogSql(db.pool.clone()), clock.clone())),
            Box::new(EmailEvents::new(
                PgEmailEventSql(db.pool.clone()),
                clock.clone(),
            )),
            Box::new(Members::new(PgMemberSql(db.pool.clone()), clock.clone())),
            Box::new(Users::new(PgUserSql(db.pool.clone()), clock)),
            Db::Postgres(db),
        )
    }

    // One argument per aggregate: the list grows with the store.
    #[allow(clippy::too_many_arguments)]
    fn build(
        sharding: Box<dyn ShardingStore>,
        holds: Box<dyn HoldStore>,
        api_keys: Box<dyn ApiKeyStore>,
        leases: Box<dyn LeaseStore>,
        processes: Box<dyn ProcessStore>,
        brand_alerts: Box<dyn BrandAlertStore>,
        catalog: Box<dyn CatalogStore>,
        email_events: Box<dyn EmailEventStore>,
        members: Box<dyn MemberStore>,
        users: Box<dyn UserStore>,
        db: Db,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                db,
                sharding,
                holds,
                api_keys,
                leases,
                processes,
                brand_alerts,
                catalog,
                email_events,
                members,
                users,
            }),
        }
    }

    /// `"sqlite"` or `"postgres"`, the name errors use too.
    pub fn backend(&self) -> &'static str {
        match self.inner.db {
            Db::Sqlite(_) => sqlite::BACKEND,
            Db::Postgres(_) => postgres::BACKEND,
        }
    }

    /// Brings the schema up to date; running it again is a no-op.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.inner.db {
            Db::Sqlite(db) => db.migrate().await,
            Db::Postgres(db) => db.migrate().await,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.inner.db {
            Db::Sqlite(db) => db.ping().await,
            Db::Postgres(db) => db.ping().await,
        }
    }

    /// Closes every connection; later operations fail with a backend error.
    pub async fn close(&self) {
        match &self.inner.db {
            Db::Sqlite(db) => db.close().await,
            Db::Postgres(db) => db.close().await,
        }
    }

    /// The SQLite database, which the embedded bus shares.
    pub fn sqlite(&self) -> Option<&SqliteDb> {
        match &self.inner.db {
            Db::Sqlite(db) => Some(db),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL database, for a bus backend that lives in it.
    pub fn postgres(&self) -> Option<&PgDb> {
        match &self.inner.db {
            Db::Postgres(db) => Some(db),
            Db::Sqlite(_) => None,
        }
    }

    pub fn api_keys(&self) -> &dyn ApiKeyStore {
        self.inner.api_keys.as_ref()
    }

    pub fn leases(&self) -> &dyn LeaseStore {
        self.inner.leases.as_ref()
    }

    pub fn processes(&self) -> &dyn ProcessStore {
        self.inner.processes.as_ref()
    }

    pub fn brand_alerts(&self) -> &dyn BrandAlertStore {
        self.inner.brand_alerts.as_ref()
    }

    pub fn catalog(&self) -> &dyn CatalogStore {
        self.inner.catalog.as_ref()
    }

    pub fn members(&self) -> &dyn MemberStore {
        self.inner.members.as_ref()
    }

    pub fn email_events(&self) -> &dyn EmailEventStore {
        self.inner.email_events.as_ref()
    }

    pub fn users(&self) -> &dyn UserStore {
        self.inner.users.as_ref()
    }
}

impl Store {
    pub fn sharding(&self) -> &dyn ShardingStore {
        self.inner.sharding.as_ref()
    }

    pub fn holds(&self) -> &dyn HoldStore {
        self.inner.holds.as_ref()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}
