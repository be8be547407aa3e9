//! The [`EventSink`] of each store+bus pairing that shares one database.

use std::sync::Arc;

use async_trait::async_trait;
use herald_bus::{EmbeddedBus, OutgoingMessage, PostgresBus};
use herald_core::email_event::EmailEvent;
use herald_core::{Clock, TopicName};
use herald_store::email_events;
use tokio::sync::{mpsc, oneshot};

use super::{email_events_topic, event_message, EventSink, IngestError, IngestOutcome};

/// The messages for the new events, in batch order.
fn messages(events: &[EmailEvent], new: &[usize]) -> Result<Vec<OutgoingMessage>, IngestError> {
    new.iter().map(|&i| event_message(&events[i])).collect()
}

/// SQLite store + embedded bus: one transaction on the shared file.
///
/// SQLite has one writer, so batches are written by one task, and the
/// batches that arrive while a transaction is being written go together in
/// the next one (group commit): the cost of a transaction (the commit's log
/// write above all) is shared by every request waiting, which is what lets
/// throughput grow with concurrent senders. Each request still gets its own
/// outcome; a request whose group failed is retried alone, so one bad batch
/// cannot fail the batches that happened to share its transaction.
pub struct EmbeddedSink {
    requests: mpsc::Sender<GroupRequest>,
}

struct GroupRequest {
    events: Vec<EmailEvent>,
    reply: oneshot::Sender<Result<IngestOutcome, IngestError>>,
}

/// Events one group transaction takes at most (a single larger batch still
/// goes alone).
const MAX_GROUP_EVENTS: usize = 10_000;
/// Requests waiting for the writer before senders wait too.
const QUEUE_DEPTH: usize = 256;

impl EmbeddedSink {
    /// Starts the writer task; must be called within a Tokio runtime. The
    /// task ends when the sink is dropped.
    pub fn new(bus: Arc<EmbeddedBus>, clock: Arc<dyn Clock>) -> Self {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_groups(bus, email_events_topic(), clock, queue));
        Self { requests }
    }
}

#[async_trait]
impl EventSink for EmbeddedSink {
    async fn ingest(&self, events: Vec<EmailEvent>) -> Result<IngestOutcome, IngestError> {
        if events.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(GroupRequest { events, reply })
            .await
            .map_err(|_| IngestError::Stopped)?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }
}

async fn write_groups(
    bus: Arc<EmbeddedBus>,
    topic: TopicName,
    clock: Arc<dyn Clock>,
    mut queue: mpsc::Receiver<GroupRequest>,
) {
    while let Some(first) = queue.recv().await {
        let mut size = first.events.len();
        let mut group = vec![first];
        while size < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(next) => {
                    size += next.events.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<&[EmailEvent]> = group.iter().map(|r| r.events.as_slice()).collect();
        match write_group(&bus, &topic, clock.as_ref(), &batches).await {
            Ok(outcomes) => {
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    // A sender that stopped waiting is told nothing: its
                    // provider retries and finds the events stored.
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            Err(e) if group.len() == 1 => {
                let _ = group.remove(0).reply.send(Err(e));
            }
            Err(_) => {
                for request in group {
                    let outcome = write_group(&bus, &topic, clock.as_ref(), &[&request.events])
                        .await
                        .map(|mut outcomes| outcomes.remove(0));
                    let _ = request.reply.send(outcome);
                }
            }
        }
    }
}

/// Stores and publishes several batches in one transaction; one outcome per
/// batch, in order.
async fn write_group(
    bus: &EmbeddedBus,
    topic: &TopicName,
    clock: &dyn Clock,
    batches: &[&[EmailEvent]],
) -> Result<Vec<IngestOutcome>, IngestError> {
    let now = clock.now();
    let mut tx = bus.begin_tx().await?;
    let mut outcomes = Vec::with_capacity(batches.len());
    let mut messages = Vec::new();
    for events in batches {
        let new = email_events::sqlite::insert_new(tx.conn(), events, now).await?;
        messages.extend(self::messages(events, &new)?);
        outcomes.push(IngestOutcome::of(events, &new));
    }
    if !messages.is_empty() {
        tx.publish_batch(topic, &messages).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// PostgreSQL store + PostgreSQL bus: one transaction in the shared database.
pub struct PostgresSink {
    bus: Arc<PostgresBus>,
    topic: TopicName,
    clock: Arc<dyn Clock>,
}

impl PostgresSink {
    pub fn new(bus: Arc<PostgresBus>, clock: Arc<dyn Clock>) -> Self {
        Self {
            bus,
            topic: email_events_topic(),
            clock,
        }
    }
}

#[async_trait]
impl EventSink for PostgresSink {
    async fn ingest(&self, events: Vec<EmailEvent>) -> Result<IngestOutcome, IngestError> {
        if events.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let mut tx = self.bus.begin_tx().await?;
        let new = email_events::postgres::insert_new(tx.conn(), &events, self.clock.now()).await?;
        if !new.is_empty() {
            tx.publish_batch(&self.topic, &messages(&events, &new)?)
                .await?;
        }
        tx.commit().await?;
        Ok(IngestOutcome::of(&events, &new))
    }
}
