//! Writing to the store and publishing in one PostgreSQL transaction.
//!
//! The PostgreSQL bus lives in the store's database, so a caller that must
//! store something and publish it (the webhook ingest) can do both in one
//! transaction: [`PostgresBus::begin_tx`], the caller's writes through
//! [`PostgresTx::conn`], [`PostgresTx::publish_batch`], then
//! [`PostgresTx::commit`], which queues the NOTIFY that wakes long polls in
//! the same transaction, so it is delivered only once the messages are
//! visible. Dropping the transaction uncommitted rolls both back.

use std::collections::BTreeSet;

use herald_core::{QueueName, TopicName};
use sqlx::{PgConnection, Postgres, Transaction};

use super::sql::TOPIC_SUBSCRIPTIONS;
use super::{
    check_body_sizes, check_topic, corrupt, db_err, insert_messages, load_queue, lock_groups,
    notify, PostgresBus, QueueRow,
};
use crate::{BusResult, FilterPolicy, MessageId, OutgoingMessage};

/// A transaction on one of the store's connections that can also publish.
pub struct PostgresTx {
    tx: Transaction<'static, Postgres>,
    /// Queues that received messages, notified at commit.
    targets: BTreeSet<String>,
}

impl std::fmt::Debug for PostgresTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTx")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl PostgresBus {
    pub async fn begin_tx(&self) -> BusResult<PostgresTx> {
        Ok(PostgresTx {
            tx: self.begin("begin transaction").await?,
            targets: BTreeSet::new(),
        })
    }
}

impl PostgresTx {
    /// The connection the transaction runs on, for the caller's own writes.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// As [`crate::Bus::publish_batch`], inside this transaction: the copies
    /// exist only if the transaction commits.
    pub async fn publish_batch(
        &mut self,
        topic: &TopicName,
        messages: &[OutgoingMessage],
    ) -> BusResult<Vec<MessageId>> {
        const OP: &str = "publish";
        let conn: &mut PgConnection = &mut self.tx;
        check_topic(conn, OP, topic).await?;
        let subs: Vec<(String, String)> = sqlx::query_as(TOPIC_SUBSCRIPTIONS)
            .bind(topic.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err(OP))?;
        let mut targets: Vec<(QueueRow, Vec<usize>)> = Vec::new();
        for (queue, filter) in subs {
            let filter: FilterPolicy =
                serde_json::from_str(&filter).map_err(|e| corrupt(OP, format!("filter ({e})")))?;
            let matching: Vec<usize> = (0..messages.len())
                .filter(|&i| filter.matches(&messages[i].attributes))
                .collect();
            if matching.is_empty() {
                continue;
            }
            let queue = QueueName::parse(queue).map_err(|e| corrupt(OP, e))?;
            let q = load_queue(conn, OP, &queue).await?;
            let refs: Vec<&OutgoingMessage> = matching.iter().map(|&i| &messages[i]).collect();
            check_body_sizes(&q, &refs)?;
            targets.push((q, matching));
        }
        // Groups first, in the global lock order, as publish_batch does.
        let pairs: Vec<(i64, &str)> = targets
            .iter()
            .flat_map(|(q, matching)| {
                matching
                    .iter()
                    .filter_map(|&i| messages[i].group.as_deref())
                    .map(|group| (q.id, group))
            })
            .collect();
        lock_groups(conn, OP, &pairs).await?;
        let mut copies: Vec<Vec<MessageId>> = vec![Vec::new(); messages.len()];
        for (q, matching) in &targets {
            let refs: Vec<&OutgoingMessage> = matching.iter().map(|&i| &messages[i]).collect();
            let ids = insert_messages(conn, OP, q, &refs).await?;
            for (&i, id) in matching.iter().zip(ids) {
                copies[i].push(id);
            }
            self.targets.insert(q.name.as_str().to_owned());
        }
        Ok(copies.into_iter().flatten().collect())
    }

    /// Commits the caller's writes and the published messages together;
    /// receivers waiting on the queues that got messages are notified.
    pub async fn commit(mut self) -> BusResult<()> {
        const OP: &str = "commit";
        if !self.targets.is_empty() {
            let names: Vec<&str> = self.targets.iter().map(String::as_str).collect();
            notify(&mut self.tx, OP, &names).await?;
        }
        self.tx.commit().await.map_err(db_err(OP))
    }
}
