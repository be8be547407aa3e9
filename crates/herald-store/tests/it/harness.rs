//! A fresh database per test. SQLite: a new file in a temp folder.
//! PostgreSQL (`HERALD_TEST_DATABASE_URL`): a new schema, reached through
//! `search_path`, dropped afterwards. Without that variable the PostgreSQL
//! cases print why they skipped and pass, unless `HERALD_REQUIRE_POSTGRES=1`.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use herald_core::{Clock, ManualClock, Timestamp};
use herald_store::{PgDb, SqliteDb, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tempfile::TempDir;

const DATABASE_URL_VAR: &str = "HERALD_TEST_DATABASE_URL";
const REQUIRE_VAR: &str = "HERALD_REQUIRE_POSTGRES";

/// 2024-01-01T00:00:00Z: a fixed start so timestamps in failures are readable.
pub const START: Timestamp = Timestamp(1_704_067_200_000);

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct TestDb {
    pub store: Store,
    pub clock: Arc<ManualClock>,
    target: Target,
}

#[derive(Clone)]
enum Target {
    Sqlite { dir: Arc<TempDir> },
    Postgres { url: String, schema: String },
}

impl TestDb {
    async fn open(backend: Backend) -> Option<TestDb> {
        let clock = Arc::new(ManualClock::at(START));
        let (store, target) = match backend {
            Backend::Sqlite => {
                let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
                let db = SqliteDb::open(dir.path().join("herald.db"))
                    .await
                    .expect("open sqlite");
                (
                    Store::from_sqlite(db, clock.clone()),
                    Target::Sqlite { dir },
                )
            }
            Backend::Postgres => {
                let url = postgres_url()?;
                let schema = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&url)
                    .await
                    .expect("connect to postgres");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test schema");
                let _ = admin.close().await;
                let db = PgDb::connect_with(schema_options(&url, &schema))
                    .await
                    .expect("connect to postgres");
                let target = Target::Postgres { url, schema };
                (Store::from_postgres(db, clock.clone()), target)
            }
        };
        store.migrate().await.expect("migrate");
        Some(TestDb {
            store,
            clock,
            target,
        })
    }

    pub fn clock_now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A second store on the same database with its own connections, as
    /// another process would have; it shares this test's clock.
    pub async fn connect_again(&self) -> Store {
        match &self.target {
            Target::Sqlite { dir } => {
                let db = SqliteDb::open(dir.path().join("herald.db"))
                    .await
                    .expect("reopen sqlite");
                Store::from_sqlite(db, self.clock.clone())
            }
            Target::Postgres { url, schema } => {
                let db = PgDb::connect_with(schema_options(url, schema))
                    .await
                    .expect("reconnect");
                Store::from_postgres(db, self.clock.clone())
            }
        }
    }

    /// The stored secret hash of a key, read behind the store's back.
    pub async fn stored_secret_hash(&self, id: &str) -> Vec<u8> {
        let sql = "SELECT secret_hash FROM api_keys WHERE id = ";
        match (&self.store.sqlite(), &self.store.postgres()) {
            (Some(db), _) => sqlx::query_scalar(&format!("{sql}?1"))
                .bind(id)
                .fetch_one(&db.reader)
                .await
                .expect("read secret hash"),
            (_, Some(db)) => sqlx::query_scalar(&format!("{sql}$1"))
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .expect("read secret hash"),
            (None, None) => unreachable!("a store has one backend"),
        }
    }

    async fn cleanup(self) {
        self.store.close().await;
        if let Target::Postgres { url, schema, .. } = self.target {
            // Best effort: a leftover schema only costs disk space.
            if let Ok(mut admin) = PgConnection::connect(&url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        }
    }
}

/// Connection options whose every session sees only `schema`.
fn schema_options(url: &str, schema: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(url)
        .expect("postgres url")
        .options([("search_path", schema)])
}

fn postgres_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_VAR}=1 but {DATABASE_URL_VAR} is not set: the PostgreSQL store tests cannot run")
        }
        _ => {
            eprintln!("skipped: set {DATABASE_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run the PostgreSQL store tests");
            None
        }
    }
}

/// Runs one case on a fresh database and cleans up even when it fails.
pub async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = TestDb::open(backend).await else {
        return;
    };
    let outcome = tokio::spawn(case(db.clone())).await;
    db.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task ended without finishing: {e}"),
        }
    }
}

/// One `#[tokio::test]` per case per backend: `<module>::sqlite::<case>`
/// and `<module>::postgres::<case>`.
macro_rules! store_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::harness::run($crate::harness::Backend::Sqlite, super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::harness::run($crate::harness::Backend::Postgres, super::$case).await;
                }
            )+
        }
    };
}
