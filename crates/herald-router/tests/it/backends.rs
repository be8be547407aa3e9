//! A fresh store and bus per test, on each pairing that has an event sink:
//! SQLite + embedded bus (a temp file) and PostgreSQL + PostgreSQL bus (a
//! schema of its own in `HERALD_TEST_DATABASE_URL`, dropped afterwards).
//! Without that variable the PostgreSQL cases print why they skipped and
//! pass, unless `HERALD_REQUIRE_POSTGRES=1`.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use herald_bus::{Bus, EmbeddedBus, PostgresBus, QueueConfig};
use herald_core::{Clock, ManualClock, Timestamp};
use herald_router::ingest::{ensure_topology, EmbeddedSink, EventSink, PostgresSink};
use herald_store::{PgDb, SqliteDb, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;

const DATABASE_URL_VAR: &str = "HERALD_TEST_DATABASE_URL";
const REQUIRE_VAR: &str = "HERALD_REQUIRE_POSTGRES";

pub const START: Timestamp = Timestamp(1_795_000_100_000);

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct TestEnv {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub sink: Arc<dyn EventSink>,
    /// Keeps the SQLite file alive; the PostgreSQL schema to drop.
    _dir: Option<Arc<tempfile::TempDir>>,
    schema: Option<(String, String)>,
}

impl TestEnv {
    async fn open(backend: Backend) -> Option<TestEnv> {
        let dyn_clock: Arc<dyn Clock> = Arc::new(ManualClock::at(START));
        let env = match backend {
            Backend::Sqlite => {
                let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
                let db = SqliteDb::open(dir.path().join("herald.db"))
                    .await
                    .expect("open sqlite");
                db.migrate().await.expect("migrate");
                let bus = Arc::new(EmbeddedBus::new(db.clone()));
                TestEnv {
                    store: Store::from_sqlite(db, dyn_clock.clone()),
                    sink: Arc::new(EmbeddedSink::new(bus.clone(), dyn_clock)),
                    bus,
                    _dir: Some(dir),
                    schema: None,
                }
            }
            Backend::Postgres => {
                let url = postgres_url()?;
                let schema = format!("herald_ingest_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&url).await.expect("connect");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut admin)
                    .await
                    .expect("create schema");
                let _ = admin.close().await;
                let options = PgConnectOptions::from_str(&url)
                    .expect("postgres url")
                    .options([("search_path", schema.as_str())]);
                let db = PgDb::connect_with(options).await.expect("connect");
                db.migrate().await.expect("migrate");
                let bus = Arc::new(PostgresBus::new(db.clone()).await.expect("bus"));
                TestEnv {
                    store: Store::from_postgres(db, dyn_clock.clone()),
                    sink: Arc::new(PostgresSink::new(bus.clone(), dyn_clock)),
                    bus,
                    _dir: None,
                    schema: Some((url, schema)),
                }
            }
        };
        ensure_topology(env.bus.as_ref(), QueueConfig::default())
            .await
            .expect("topology");
        Some(env)
    }

    /// Runs SQL on the store's database, behind the store's back (test
    /// setup only).
    pub async fn exec(&self, sql: &str) {
        if let Some(db) = self.store.sqlite() {
            sqlx::raw_sql(sql)
                .execute(&db.writer)
                .await
                .expect("setup SQL");
        } else {
            let db = self.store.postgres().expect("one backend");
            sqlx::raw_sql(sql)
                .execute(&db.pool)
                .await
                .expect("setup SQL");
        }
    }

    async fn cleanup(self) {
        self.store.close().await;
        if let Some((url, schema)) = &self.schema {
            if let Ok(mut admin) = PgConnection::connect(url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        }
    }
}

fn postgres_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_VAR}=1 but {DATABASE_URL_VAR} is not set")
        }
        _ => {
            eprintln!("skipped: set {DATABASE_URL_VAR} to run the PostgreSQL cases");
            None
        }
    }
}

/// Runs one case on a fresh pairing and cleans up even when it fails.
pub async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(env) = TestEnv::open(backend).await else {
        return;
    };
    let outcome = tokio::spawn(case(env.clone())).await;
    env.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task ended without finishing: {e}"),
        }
    }
}

/// One `#[tokio::test]` per case per pairing: `<module>::sqlite::<case>`
/// and `<module>::postgres::<case>`.
macro_rules! pairing_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::backends::run($crate::backends::Backend::Sqlite, super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::backends::run($crate::backends::Backend::Postgres, super::$case).await;
                }
            )+
        }
    };
}
