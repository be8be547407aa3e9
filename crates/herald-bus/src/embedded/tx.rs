//! Writing to the store and publishing in one SQLite transaction.
//!
//! The embedded bus lives in the store's file, so a caller that must store
//! something and publish it (the webhook ingest: "stored" and "published"
//! must never disagree) can do both in one transaction: [`EmbeddedBus::begin_tx`]
//! takes the store's writer connection and starts `BEGIN IMMEDIATE`, the
//! caller writes through [`EmbeddedTx::conn`], publishes with
//! [`EmbeddedTx::publish_batch`], and [`EmbeddedTx::commit`] commits both and
//! then wakes the long polls of the queues that received messages. Dropping
//! the transaction uncommitted rolls both back.
//!
//! While an [`EmbeddedTx`] is open it holds the single writer connection:
//! calling the bus (or the store's writes) from the same task before it ends
//! would wait for that connection forever.

use std::collections::BTreeSet;

use herald_core::{Clock, TopicName};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::{db_err, publish_in, EmbeddedBus};
use crate::{BusResult, MessageId, OutgoingMessage};

/// A transaction on the store's writer connection that can also publish.
pub struct EmbeddedTx<'b> {
    bus: &'b EmbeddedBus,
    tx: Transaction<'static, Sqlite>,
    /// Queues that received messages, woken after the commit.
    targets: BTreeSet<String>,
}

impl std::fmt::Debug for EmbeddedTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedTx")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBus {
    /// Starts a write transaction on the store's writer connection (see the
    /// module documentation for what not to do while it is open).
    pub async fn begin_tx(&self) -> BusResult<EmbeddedTx<'_>> {
        const OP: &str = "begin transaction";
        let tx = self
            .db
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err(OP))?;
        Ok(EmbeddedTx {
            bus: self,
            tx,
            targets: BTreeSet::new(),
        })
    }
}

impl EmbeddedTx<'_> {
    /// The connection the transaction runs on, for the caller's own writes.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// As [`crate::Bus::publish_batch`], inside this transaction: the copies
    /// exist only if the transaction commits.
    pub async fn publish_batch(
        &mut self,
        topic: &TopicName,
        messages: &[OutgoingMessage],
    ) -> BusResult<Vec<MessageId>> {
        let now = self.bus.clock.now();
        let (copies, queues) =
            publish_in(&mut self.tx, topic, messages, &self.bus.sweep, now).await?;
        self.targets
            .extend(queues.iter().map(|q| q.as_str().to_owned()));
        Ok(copies)
    }

    /// Commits the caller's writes and the published messages together,
    /// then wakes the receivers waiting on the queues that got messages.
    pub async fn commit(self) -> BusResult<()> {
        self.tx.commit().await.map_err(db_err("commit"))?;
        for queue in &self.targets {
            self.bus.wake(queue);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::QueueName;

    use super::*;
    use crate::{Bus, ReceiveOptions, Subscription};

    async fn bus_with_subscriber() -> (tempfile::TempDir, EmbeddedBus, TopicName, QueueName) {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path().join("tx.db")).await.unwrap();
        let topic = TopicName::parse("events").unwrap();
        let queue = QueueName::parse("sub").unwrap();
        bus.ensure_topic(&topic).await.unwrap();
        bus.ensure_queue(&queue, Default::default()).await.unwrap();
        bus.subscribe(Subscription {
            topic: topic.clone(),
            queue: queue.clone(),
            filter: Default::default(),
        })
        .await
        .unwrap();
        (dir, bus, topic, queue)
    }

    async fn rows(bus: &EmbeddedBus) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM tx_probe")
            .fetch_one(&bus.db().reader)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_keeps_the_write_and_the_copies_and_wakes_receivers() {
        let (_dir, bus, topic, queue) = bus_with_subscriber().await;
        sqlx::query("CREATE TABLE tx_probe (x INTEGER)")
            .execute(&bus.db().writer)
            .await
            .unwrap();
        let waiting = {
            let options = ReceiveOptions {
                max: 10,
                wait: Duration::from_secs(30),
                visibility: Duration::from_secs(30),
            };
            let bus = &bus;
            let queue = queue.clone();
            async move { bus.receive(&queue, options).await.unwrap() }
        };
        let publishing = async {
            let mut tx = bus.begin_tx().await.unwrap();
            sqlx::query("INSERT INTO tx_probe VALUES (1)")
                .execute(tx.conn())
                .await
                .unwrap();
            let ids = tx
                .publish_batch(
                    &topic,
                    &[OutgoingMessage::new("a"), OutgoingMessage::new("b")],
                )
                .await
                .unwrap();
            assert_eq!(ids.len(), 2);
            tx.commit().await.unwrap();
        };
        let started = tokio::time::Instant::now();
        let (received, ()) = tokio::join!(waiting, publishing);
        assert_eq!(received.len(), 2);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the long poll was woken, not timed out"
        );
        assert_eq!(rows(&bus).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_uncommitted_rolls_back_both() {
        let (_dir, bus, topic, queue) = bus_with_subscriber().await;
        sqlx::query("CREATE TABLE tx_probe (x INTEGER)")
            .execute(&bus.db().writer)
            .await
            .unwrap();
        {
            let mut tx = bus.begin_tx().await.unwrap();
            sqlx::query("INSERT INTO tx_probe VALUES (1)")
                .execute(tx.conn())
                .await
                .unwrap();
            tx.publish_batch(&topic, &[OutgoingMessage::new("a")])
                .await
                .unwrap();
        }
        assert_eq!(rows(&bus).await, 0);
        assert_eq!(bus.stats(&queue).await.unwrap().visible, 0);
        // The writer connection is usable again.
        bus.publish(&topic, OutgoingMessage::new("b"))
            .await
            .unwrap();
        assert_eq!(bus.stats(&queue).await.unwrap().visible, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_topic_is_an_error_and_dedup_keys_hold_inside() {
        let (_dir, bus, topic, queue) = bus_with_subscriber().await;
        let mut tx = bus.begin_tx().await.unwrap();
        let missing = TopicName::parse("missing").unwrap();
        assert!(matches!(
            tx.publish_batch(&missing, &[OutgoingMessage::new("a")])
                .await
                .unwrap_err(),
            crate::BusError::TopicNotFound(_)
        ));
        drop(tx);
        let keyed = || OutgoingMessage::new("a").dedup_key("k");
        let mut tx = bus.begin_tx().await.unwrap();
        let first = tx.publish_batch(&topic, &[keyed()]).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = bus.begin_tx().await.unwrap();
        let second = tx.publish_batch(&topic, &[keyed()]).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(first, second);
        assert_eq!(bus.stats(&queue).await.unwrap().visible, 1);
    }
}
