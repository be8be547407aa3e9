//! The SQLite side of the store: one file in WAL mode, reached through a
//! single-connection writer pool and a pool of readers.
//!
//! Pooled connections are not pinged before use (sqlx's default): a
//! connection to a local file cannot go stale, and the ping is a round trip
//! to the connection's worker thread, which costs as much as a small
//! statement itself.
//!
//! SQLite allows one writer at a time. Funnelling every write of this process
//! through one connection makes writers queue in the pool (an async wait)
//! instead of spinning in SQLite's busy handler; the busy timeout still
//! covers other processes that open the same file.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::StoreError;

pub(crate) const BACKEND: &str = "sqlite";

/// How long a statement waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Log pages after which a commit of the writer connection checkpoints
/// (SQLite's default is 1000, 4 MB). A group commit of the webhook ingest
/// or a batch of an audience build alone writes hundreds to thousands of
/// pages, so at the default many commits would also copy pages into the
/// database file and sync it while every other write waits. The
/// [`Checkpointer`] does that work on a connection of its own instead; this
/// bound (40 MB of log) only caps the log when it cannot keep up.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How often the [`Checkpointer`] copies committed log pages into the
/// database file. A page written many times between two checkpoints is
/// copied once, so checkpointing much more often only copies hot pages
/// (queue and send-log index pages) again; once a second keeps the log well
/// under the writer's own bound at the write rates the benchmarks reach.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// An open SQLite database: every write goes through `writer`.
#[derive(Debug, Clone)]
pub struct SqliteDb {
    pub writer: SqlitePool,
    pub reader: SqlitePool,
    path: PathBuf,
    checkpointer: Arc<Checkpointer>,
}

impl SqliteDb {
    /// Opens (creating if needed) the database at `path`, creating its
    /// parent folder too.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Backend {
                backend: BACKEND,
                message: format!("cannot create folder {}: {e}", parent.display()),
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32000");
        let lock = exclusive_setup(&path).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma(
                "wal_autocheckpoint",
                WRITER_AUTOCHECKPOINT_PAGES.to_string(),
            ))
            .await
            .map_err(|e| StoreError::sqlite(e, &format!("cannot open {}", path.display())))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| StoreError::sqlite(e, &format!("cannot open {}", path.display())))?;
        drop(lock);
        let checkpointer = Arc::new(Checkpointer::start(path.clone()));
        Ok(Self {
            writer,
            reader,
            path,
            checkpointer,
        })
    }

    /// Opens the database named by a `sqlite:` URL (`sqlite://path`,
    /// `sqlite:path`) or a plain path.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        Self::open(sqlite_path(url)?).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the migrations this build has that the file lacks, under
    /// the [`exclusive_setup`] lock: sqlx locks nothing around SQLite
    /// migrations (on PostgreSQL it takes an advisory lock), so two processes
    /// migrating a new file at once would both apply them and one would fail
    /// on a table the other made.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let lock = exclusive_setup(&self.path).await?;
        let applied = MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Migration {
                backend: BACKEND,
                message: e.to_string(),
            });
        drop(lock);
        applied
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(|e| StoreError::sqlite(e, "ping"))?;
        Ok(())
    }

    /// Asks for a checkpoint now rather than at the next tick: for a writer
    /// that commits large groups back to back (the webhook ingest), whose
    /// log would otherwise grow for a second at a time. Returns at once.
    pub fn checkpoint_soon(&self) {
        self.checkpointer.wake.notify_one();
    }

    pub async fn close(&self) {
        self.checkpointer.stop().await;
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Copies committed pages from the write-ahead log into the database file
/// (a passive checkpoint) every [`CHECKPOINT_INTERVAL`] or when asked
/// ([`SqliteDb::checkpoint_soon`]), on a connection of its own, so that the
/// writer connection's commits do not pay for it. A
/// passive checkpoint never waits for the writer or the readers; what it
/// cannot copy yet, the next one does. Stops when the database is closed
/// or its last handle dropped.
#[derive(Debug)]
struct Checkpointer {
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    fn start(path: PathBuf) -> Self {
        let (stop, stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(checkpoint_periodically(path, stopped, wake.clone()));
        Self {
            stop,
            wake,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops the task and waits until its connection is closed.
    async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().map(|mut t| t.take()).unwrap_or_default();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn checkpoint_periodically(
    path: PathBuf,
    mut stopped: watch::Receiver<bool>,
    wake: Arc<Notify>,
) {
    let mut conn: Option<SqliteConnection> = None;
    let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = ticks.tick() => {}
            () = wake.notified() => {}
        }
        if conn.is_none() {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::ZERO);
            match SqliteConnection::connect_with(&options).await {
                Ok(opened) => conn = Some(opened),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot open a checkpoint connection; the writer checkpoints alone");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *c)
            .await
        {
            tracing::warn!(error = %e, "checkpoint failed; the next one retries");
            conn = None;
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// Waits for, then holds until the file is dropped, an exclusive lock on a
/// file beside the database at `path` (its name with `-setup.lock` added,
/// as SQLite adds `-wal`). It serializes what processes opening one new
/// file at once must not do together: switching it to WAL (SQLite answers
/// "database is locked" at once instead of waiting) and migrating it.
async fn exclusive_setup(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push("-setup.lock");
    let lock_path = PathBuf::from(name);
    let locking = lock_path.clone();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&locking)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)
    .flatten()
    .map_err(|e| StoreError::Backend {
        backend: BACKEND,
        message: format!("cannot lock {}: {e}", lock_path.display()),
    })
}

/// The file path inside a `sqlite:` URL.
pub fn sqlite_path(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() || rest == ":memory:" {
        return Err(StoreError::InvalidUrl {
            url: url.to_owned(),
            message:
                "give a file path; an in-memory database cannot be shared by the store and the bus"
                    .into(),
        });
    }
    PathBuf::from_str(rest).map_err(|e| StoreError::InvalidUrl {
        url: url.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes started at once on a new data folder (an API and a
    /// mailer, or two schedulers) open the same new file: both must come up,
    /// each finding the migrations applied by itself or by the other.
    #[tokio::test(flavor = "multi_thread")]
    async fn stores_opened_at_once_on_a_new_file_both_migrate() {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("herald.db");
            let (first, second) = tokio::join!(SqliteDb::open(&path), SqliteDb::open(&path));
            let (first, second) = (first.unwrap(), second.unwrap());
            let (a, b) = tokio::join!(first.migrate(), second.migrate());
            a.unwrap();
            b.unwrap();
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
                .fetch_one(&first.reader)
                .await
                .unwrap();
            assert_eq!(applied, MIGRATOR.iter().count() as i64);
            first.close().await;
            second.close().await;
        }
    }

    /// Commits stay in the log until a checkpoint copies them into the
    /// database file; the writer alone would wait for 40 MB of log, so a
    /// file that grows by the megabyte written shows the checkpointer at
    /// work.
    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.db");
        let db = SqliteDb::open(&path).await.unwrap();
        sqlx::query("CREATE TABLE blobs (b BLOB NOT NULL)")
            .execute(&db.writer)
            .await
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for _ in 0..16 {
            sqlx::query("INSERT INTO blobs (b) VALUES (randomblob(65536))")
                .execute(&db.writer)
                .await
                .unwrap();
        }
        db.checkpoint_soon();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&path).unwrap().len() < before + 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file never received the committed pages"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.close().await;
    }

    #[test]
    fn url_forms_name_the_same_file() {
        for url in [
            "sqlite://data/h.db",
            "sqlite:data/h.db",
            "data/h.db",
            "sqlite://data/h.db?mode=rwc",
        ] {
            assert_eq!(
                sqlite_path(url).unwrap(),
                PathBuf::from("data/h.db"),
                "{url}"
            );
        }
        assert_eq!(
            sqlite_path("sqlite:///abs/h.db").unwrap(),
            PathBuf::from("/abs/h.db")
        );
        assert!(sqlite_path("sqlite::memory:").is_err());
        assert!(sqlite_path("sqlite://").is_err());
    }
}
