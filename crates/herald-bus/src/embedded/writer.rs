//! Turns at the store's single writer connection for bus writes.
//!
//! Every time sqlx's pool hands out a connection or takes it back it pings
//! it, a round trip to the connection's worker thread: a checkout cost about
//! 75 µs on the 2-core machine, against 30-45 µs for a statement on a held
//! connection. So while bus writes queue behind one another, the connection
//! passes straight from one to the next; it goes back to the pool when no
//! bus write is waiting, or after [`MAX_STREAK`] writes in a row so that the
//! store's own writes get their turn.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex as TurnLock, MutexGuard};

/// Bus writes in a row on one checkout of the connection.
const MAX_STREAK: u32 = 8;

#[derive(Debug)]
pub(super) struct Writer {
    pool: SqlitePool,
    /// Bus writes take turns here, first come first served.
    turn: TurnLock<()>,
    state: Mutex<Parked>,
}

#[derive(Debug, Default)]
struct Parked {
    /// Held between two bus writes; only ever set while `waiting > 0`.
    conn: Option<PoolConnection<Sqlite>>,
    /// Bus writes waiting for their turn.
    waiting: usize,
    /// Writes since the connection left the pool.
    streak: u32,
}

/// The writer connection for one bus write; hands it on when dropped.
pub(super) struct WriterConn<'a> {
    writer: &'a Writer,
    conn: Option<PoolConnection<Sqlite>>,
    _turn: MutexGuard<'a, ()>,
}

/// Counts a write as waiting until it has its turn, even if it is cancelled
/// while it waits.
struct Waiting<'a>(&'a Writer);

impl Writer {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            turn: TurnLock::new(()),
            state: Mutex::new(Parked::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn acquire(&self) -> Result<WriterConn<'_>, sqlx::Error> {
        self.state().waiting += 1;
        let waiting = Waiting(self);
        let turn = self.turn.lock().await;
        let parked = {
            let mut state = self.state();
            state.waiting -= 1;
            state.conn.take()
        };
        std::mem::forget(waiting);
        let conn = match parked {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(WriterConn {
            writer: self,
            conn: Some(conn),
            _turn: turn,
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.waiting -= 1;
        if state.waiting == 0 {
            // Parked for this write, which gave up: back to the pool.
            state.conn = None;
            state.streak = 0;
        }
    }
}

impl Drop for WriterConn<'_> {
    fn drop(&mut self) {
        let mut state = self.writer.state();
        if state.waiting > 0 && state.streak < MAX_STREAK {
            state.conn = self.conn.take();
            state.streak += 1;
        } else {
            state.streak = 0;
            // Dropping returns the connection to the pool.
            self.conn = None;
        }
    }
}

impl Deref for WriterConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn.as_deref().expect("held until drop")
    }
}

impl DerefMut for WriterConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_deref_mut().expect("held until drop")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let db = herald_store::SqliteDb::open(dir.path().join("w.db"))
            .await
            .unwrap();
        (dir, db.writer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_goes_back_to_the_pool_when_nobody_waits() {
        let (_dir, pool) = pool().await;
        let writer = Writer::new(pool.clone());
        {
            let mut conn = writer.acquire().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
        }
        // The store's own write gets the single connection.
        let store = tokio::time::timeout(std::time::Duration::from_secs(5), pool.acquire())
            .await
            .expect("the bus kept the connection")
            .unwrap();
        drop(store);
        assert!(writer.state().conn.is_none());
    }

    /// A write holding the connection, built by hand so the state around
    /// it can be set exactly.
    async fn holding<'a>(writer: &'a Writer, pool: &SqlitePool) -> WriterConn<'a> {
        WriterConn {
            writer,
            conn: Some(pool.acquire().await.unwrap()),
            _turn: writer.turn.lock().await,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parks_for_a_waiting_write_until_the_streak_is_long() {
        let (_dir, pool) = pool().await;
        let writer = Writer::new(pool.clone());
        writer.state().waiting = 1;
        drop(holding(&writer, &pool).await);
        assert!(
            writer.state().conn.is_some(),
            "parked for the waiting write"
        );
        assert_eq!(writer.state().streak, 1);

        let parked = writer.state().conn.take();
        drop(parked);
        writer.state().streak = MAX_STREAK;
        drop(holding(&writer, &pool).await);
        assert!(
            writer.state().conn.is_none(),
            "a long streak goes back to the pool"
        );
        assert_eq!(writer.state().streak, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_wait_releases_the_parked_connection() {
        let (_dir, pool) = pool().await;
        let writer = Writer::new(pool.clone());
        let conn = pool.acquire().await.unwrap();
        {
            let mut state = writer.state();
            state.waiting = 1;
            state.conn = Some(conn);
        }
        drop(Waiting(&writer));
        assert!(writer.state().conn.is_none());
        assert_eq!(writer.state().waiting, 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), pool.acquire())
            .await
            .expect("the connection went back to the pool")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_all_finish_and_leave_the_pool_whole() {
        let (_dir, pool) = pool().await;
        let writer = std::sync::Arc::new(Writer::new(pool.clone()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let mut conn = writer.acquire().await.unwrap();
                    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
                }
            }));
        }
        // One is cancelled midway, waiting or holding.
        tasks[0].abort();
        for task in tasks {
            let _ = task.await;
        }
        assert_eq!(writer.state().waiting, 0);
        assert!(writer.state().conn.is_none());
        tokio::time::timeout(std::time::Duration::from_secs(5), pool.acquire())
            .await
            .expect("the connection went back to the pool")
            .unwrap();
    }
}
