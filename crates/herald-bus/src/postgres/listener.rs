//! Wake-ups for long polls: one LISTEN connection per bus turns the
//! notifications that sends, publishes, nacks, redrives and dead-letter
//! moves issue on commit (from any process) into wake-ups of this process's
//! polls on the named queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::sql::CHANNEL;

/// How long to wait before listening again after the connection failed.
const RELISTEN_PAUSE: Duration = Duration::from_secs(1);

/// One wake-up per queue name for the long polls waiting in this process.
#[derive(Debug, Default)]
pub(super) struct Wakers(Mutex<HashMap<String, Arc<Notify>>>);

impl Wakers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn waker(&self, queue: &str) -> Arc<Notify> {
        self.map().entry(queue.to_owned()).or_default().clone()
    }

    pub fn wake(&self, queue: &str) {
        if let Some(waker) = self.map().get(queue) {
            waker.notify_waiters();
        }
    }

    /// Wakes every poll, for when notifications may have been missed.
    fn wake_all(&self) {
        for waker in self.map().values() {
            waker.notify_waiters();
        }
    }
}

/// Starts listening on the bus channel with a connection of `pool`; the
/// returned task runs until the pool closes or the task is aborted.
pub(super) async fn start(
    pool: &PgPool,
    wakers: Arc<Wakers>,
) -> Result<JoinHandle<()>, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(tokio::spawn(listen(listener, wakers)))
}

async fn listen(mut listener: PgListener, wakers: Arc<Wakers>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => wakers.wake(notification.payload()),
            // The connection dropped and was re-established: whatever was
            // sent in between went unannounced.
            Ok(None) => wakers.wake_all(),
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "bus notification listener failed; long polls fall back to re-checking"
                );
                wakers.wake_all();
                tokio::time::sleep(RELISTEN_PAUSE).await;
            }
        }
    }
}
