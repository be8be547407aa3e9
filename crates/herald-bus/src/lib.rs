//! Queues and topics: the [`Bus`] contract every backend implements, the
//! embedded SQLite backend, the PostgreSQL backend, and the conformance suite
//! each backend runs.
//!
//! The contract (see DESIGN.md, "The bus contract") behaves like SQS standard
//! queues fed by SNS topics, with the rough edges removed: delays of any
//! length, deduplication keys, ordered groups, stale-receipt protection and a
//! dead-letter queue per queue.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{NameError, QueueName, Timestamp, TopicName};
use serde::{Deserialize, Serialize};

pub mod bench;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod filter;
pub mod postgres;
mod wire;

pub use embedded::EmbeddedBus;
pub use filter::{Condition, FilterPolicy};
pub use postgres::PostgresBus;

/// Message attributes: small string key/values that filters match on.
pub type Attributes = BTreeMap<String, String>;

/// The default largest message body, in bytes (256 KiB, as SQS).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutgoingMessage {
    pub body: Bytes,
    pub attributes: Attributes,
    /// Invisible to receivers until this much time has passed. Any length.
    pub delay: Option<Duration>,
    /// A second send with the same key within the queue's dedup window is a
    /// no-op that returns the first message's id.
    pub dedup_key: Option<String>,
    /// Messages of one group are delivered one at a time, in send order.
    pub group: Option<String>,
}

impl OutgoingMessage {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
}

/// A message's id, stable across redeliveries, redrives and DLQ moves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub String);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Proof of one delivery. Only the latest delivery's receipt acts on a
/// message; an older one is refused with [`BusError::StaleReceipt`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Receipt(pub String);

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One delivery of a message to a receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: MessageId,
    pub receipt: Receipt,
    pub body: Bytes,
    pub attributes: Attributes,
    pub group: Option<String>,
    /// 1 on the first delivery.
    pub receive_count: u32,
    pub first_received_at: Timestamp,
    pub sent_at: Timestamp,
}

/// A message as `peek` shows it, without receiving it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeekedMessage {
    pub id: MessageId,
    #[serde(serialize_with = "serialize_body")]
    pub body: Bytes,
    pub attributes: Attributes,
    pub group: Option<String>,
    pub receive_count: u32,
    pub sent_at: Timestamp,
    pub visible_at: Timestamp,
    /// For a dead-lettered message: the queue it came from and why it moved.
    pub dead_letter: Option<DeadLetterInfo>,
}

fn serialize_body<S: serde::Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    pub source_queue: String,
    pub reason: String,
    pub moved_at: Timestamp,
}

/// How to receive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiveOptions {
    /// At most this many messages (1..=1000).
    pub max: usize,
    /// Long-poll up to this long when nothing is visible; zero returns at once.
    pub wait: Duration,
    /// How long received messages stay invisible to others.
    pub visibility: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self {
            max: 10,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(30),
        }
    }
}

/// A queue's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// A message is delivered at most this many times; the next receive past
    /// it moves the message to the dead-letter queue. Zero means never.
    pub max_receives: u32,
    /// Where dead letters go; `None` with `max_receives > 0` means
    /// `<queue>.dlq`.
    pub dead_letter_queue: Option<QueueName>,
    /// How long a dedup key is remembered.
    #[serde(with = "millis")]
    pub dedup_window: Duration,
    pub max_body_bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_receives: 5,
            dead_letter_queue: None,
            dedup_window: Duration::from_secs(3600),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A queue as `list_queues` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueInfo {
    pub name: QueueName,
    pub config: QueueConfig,
}

/// Counts for one queue at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Ready to be received now.
    pub visible: u64,
    /// Received and not yet acked, nacked or expired.
    pub in_flight: u64,
    /// Waiting for their delay (or nack delay) to pass.
    pub delayed: u64,
    /// Messages in this queue's dead-letter queue.
    pub dead_lettered: u64,
    /// Age of the oldest message in the queue, whatever its state.
    #[serde(with = "opt_millis")]
    pub oldest_age: Option<Duration>,
}

mod opt_millis {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

/// A topic subscription: messages published to `topic` whose attributes
/// match `filter` are copied into `queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub topic: TopicName,
    pub queue: QueueName,
    #[serde(default)]
    pub filter: FilterPolicy,
}

/// The messages a [`WriteBatch`] sends to one queue.
pub type QueueSends = (QueueName, Vec<OutgoingMessage>);

/// The receipts a [`WriteBatch`] acks on one queue.
pub type QueueAcks = (QueueName, Vec<Receipt>);

/// Writes that [`Bus::commit`] makes together: messages sent to any number
/// of queues and received messages acked, all or none.
///
/// A consumer that turns what it received into messages for other queues
/// (the router) commits both at once, so nothing it sends survives without
/// the ack of what it came from, and an ack never hides unsent work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    sends: Vec<QueueSends>,
    acks: Vec<QueueAcks>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message for `queue`; a queue's messages keep the order they
    /// were added in.
    pub fn send(&mut self, queue: &QueueName, message: OutgoingMessage) -> &mut Self {
        self.send_batch(queue, [message])
    }

    pub fn send_batch(
        &mut self,
        queue: &QueueName,
        messages: impl IntoIterator<Item = OutgoingMessage>,
    ) -> &mut Self {
        entry_of(&mut self.sends, queue).extend(messages);
        self
    }

    /// Acks a received message of `queue`.
    pub fn ack(&mut self, queue: &QueueName, receipt: Receipt) -> &mut Self {
        self.ack_batch(queue, [receipt])
    }

    pub fn ack_batch(
        &mut self,
        queue: &QueueName,
        receipts: impl IntoIterator<Item = Receipt>,
    ) -> &mut Self {
        entry_of(&mut self.acks, queue).extend(receipts);
        self
    }

    /// The messages per queue, queues in the order first named.
    pub fn sends(&self) -> &[QueueSends] {
        &self.sends
    }

    /// The receipts per queue, queues in the order first named.
    pub fn acks(&self) -> &[QueueAcks] {
        &self.acks
    }

    pub fn is_empty(&self) -> bool {
        self.sends.iter().all(|(_, m)| m.is_empty()) && self.acks.iter().all(|(_, r)| r.is_empty())
    }

    pub fn into_parts(self) -> (Vec<QueueSends>, Vec<QueueAcks>) {
        (self.sends, self.acks)
    }
}

/// The items listed for `queue`, a new empty list at the end if it has none
/// yet (queues keep the order they first appeared in).
fn entry_of<'a, T>(lists: &'a mut Vec<(QueueName, Vec<T>)>, queue: &QueueName) -> &'a mut Vec<T> {
    let at = match lists.iter().position(|(q, _)| q == queue) {
        Some(at) => at,
        None => {
            lists.push((queue.clone(), Vec::new()));
            lists.len() - 1
        }
    };
    &mut lists[at].1
}

/// The ids [`Bus::commit`] gave the messages it sent: per queue, in the
/// order of [`WriteBatch::sends`].
pub type Committed = Vec<(QueueName, Vec<MessageId>)>;

/// The outcome of one receipt in [`Bus::ack_batch`].
pub type AckOutcome = Result<(), BusError>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("message body is {size} bytes; queue {queue} accepts at most {limit}")]
    BodyTooLarge {
        queue: QueueName,
        size: usize,
        limit: usize,
    },
    #[error("queue {0} does not exist")]
    QueueNotFound(QueueName),
    #[error("topic {0} does not exist")]
    TopicNotFound(TopicName),
    #[error("receipt {0} is stale: the message was redelivered, acked or nacked since")]
    StaleReceipt(Receipt),
    #[error("invalid argument {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("the {backend} bus backend does not support {operation}")]
    Unsupported {
        backend: &'static str,
        operation: &'static str,
    },
    #[error("{backend} bus backend: {message}")]
    Backend {
        backend: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

pub type BusResult<T> = Result<T, BusError>;

/// Queues and topics. Delivery is at least once; every consumer must be
/// idempotent. Implementations must be usable from many tasks at once.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// The backend's name, for errors, logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// Checks that the backend is reachable.
    async fn ping(&self) -> BusResult<()>;

    /// Creates the queue, or updates its settings if it exists. Also creates
    /// its dead-letter queue when it has one.
    async fn ensure_queue(&self, name: &QueueName, config: QueueConfig) -> BusResult<()>;

    /// Deletes a queue, its messages and its subscriptions.
    async fn delete_queue(&self, name: &QueueName) -> BusResult<()>;

    async fn list_queues(&self) -> BusResult<Vec<QueueInfo>>;

    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> BusResult<MessageId> {
        let mut ids = self.send_batch(queue, vec![message]).await?;
        ids.pop().ok_or_else(|| BusError::Backend {
            backend: self.backend(),
            message: "send_batch returned no id".into(),
            source: None,
        })
    }

    /// Sends all messages or none; returns one id per message, in order.
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> BusResult<Vec<MessageId>>;

    async fn receive(&self, queue: &QueueName, options: ReceiveOptions)
        -> BusResult<Vec<Delivery>>;

    /// Sends and acks in one transaction: every message is stored (dedup
    /// keys honoured as by `send_batch`) and every receipt acked, or nothing
    /// is written and the error says why. One stale receipt fails the whole
    /// commit with [`BusError::StaleReceipt`]: the message was redelivered,
    /// so what was derived from it must not be written by this receiver.
    /// An unknown queue fails it with [`BusError::QueueNotFound`], a body
    /// past a queue's limit with [`BusError::BodyTooLarge`].
    async fn commit(&self, batch: WriteBatch) -> BusResult<Committed>;

    /// Deletes the message. A stale receipt is refused.
    async fn ack(&self, queue: &QueueName, receipt: &Receipt) -> BusResult<()>;

    /// Acks many receipts at once; one outcome per receipt, in order.
    async fn ack_batch(
        &self,
        queue: &QueueName,
        receipts: &[Receipt],
    ) -> BusResult<Vec<AckOutcome>>;

    /// Makes the message visible again after `delay`.
    async fn nack(&self, queue: &QueueName, receipt: &Receipt, delay: Duration) -> BusResult<()>;

    /// Keeps the message invisible for `visibility` from now.
    async fn extend(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        visibility: Duration,
    ) -> BusResult<()>;

    /// Moves up to `limit` messages (all when `None`) from `dead_letter` back
    /// to `to`, oldest first, keeping their order; returns how many moved.
    async fn redrive(
        &self,
        dead_letter: &QueueName,
        to: &QueueName,
        limit: Option<u64>,
    ) -> BusResult<u64>;

    /// Deletes every message in the queue; returns how many.
    async fn purge(&self, queue: &QueueName) -> BusResult<u64>;

    /// Up to `max` messages, oldest first, without receiving them.
    async fn peek(&self, queue: &QueueName, max: usize) -> BusResult<Vec<PeekedMessage>>;

    async fn stats(&self, queue: &QueueName) -> BusResult<QueueStats>;

    async fn ensure_topic(&self, topic: &TopicName) -> BusResult<()>;

    /// Adds or replaces the subscription of `queue` to `topic`.
    async fn subscribe(&self, subscription: Subscription) -> BusResult<()>;

    async fn unsubscribe(&self, topic: &TopicName, queue: &QueueName) -> BusResult<()>;

    async fn subscriptions(&self, topic: &TopicName) -> BusResult<Vec<Subscription>>;

    /// Copies the message into every subscribed queue whose filter matches,
    /// atomically where the backend can; returns the ids of the copies.
    async fn publish(
        &self,
        topic: &TopicName,
        message: OutgoingMessage,
    ) -> BusResult<Vec<MessageId>> {
        self.publish_batch(topic, vec![message]).await
    }

    /// Publishes many messages in one go (one transaction where possible).
    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<OutgoingMessage>,
    ) -> BusResult<Vec<MessageId>>;
}
