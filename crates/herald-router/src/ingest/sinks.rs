//! The [`EventSink`] of each store+bus pairing that shares one database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_bus::{EmbeddedBus, OutgoingMessage, PostgresBus};
use herald_core::email_event::EmailEvent;
use herald_core::{Clock, TopicName};
use herald_store::email_events::{self, EventRows};
use tokio::sync::{mpsc, oneshot};

use super::{
    email_events_topic, event_message, event_message_with, EventSink, IngestError, IngestOutcome,
};

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
///
/// Everything about a batch that is not a statement (the rows' JSON
/// columns, the messages' bodies) is built by the request's own task before
/// it queues, so that work runs on every core while the writer only writes.
/// After each commit the writer asks the store's checkpointer
/// ([`herald_store::SqliteDb::checkpoint_soon`]) to copy the committed pages
/// from the write-ahead log into the database file on a connection of its
/// own, so commits do not pay for checkpoints.
pub struct EmbeddedSink {
    requests: mpsc::Sender<GroupRequest>,
    stats: Arc<Counters>,
}

/// A batch ready for the writer. It goes back to the request's task with
/// the answer, so that freeing it (thousands of allocations made on that
/// task) is not the writer's work either.
struct Prepared {
    rows: EventRows,
    /// One per event, in batch order.
    messages: Vec<OutgoingMessage>,
}

impl Prepared {
    fn of(events: &[EmailEvent]) -> Result<Self, IngestError> {
        let rows = EventRows::of(events)?;
        let messages = events
            .iter()
            .enumerate()
            .map(|(i, event)| match rows.json(i) {
                Some(json) => event_message_with(event, json),
                None => event_message(event),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rows, messages })
    }
}

struct GroupRequest {
    batch: Prepared,
    reply: oneshot::Sender<Reply>,
}

struct Reply {
    /// The indexes of the events stored (and published) now.
    new: Result<Vec<usize>, IngestError>,
    _batch: Prepared,
}

/// What the writer of an [`EmbeddedSink`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Batches stored in them.
    pub batches: u64,
    /// Time spent inside the transactions, from `BEGIN` to the end of the
    /// commit.
    pub busy: Duration,
    /// Of `busy`: beginning the transaction and inserting the events.
    pub store: Duration,
    /// Of `busy`: publishing them.
    pub publish: Duration,
    /// Of `busy`: the commit.
    pub commit: Duration,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    batches: AtomicU64,
    busy_nanos: AtomicU64,
    store_nanos: AtomicU64,
    publish_nanos: AtomicU64,
    commit_nanos: AtomicU64,
}

/// When each step of a group transaction ended.
struct Steps {
    started: Instant,
    stored: Instant,
    published: Instant,
    committed: Instant,
}

impl Counters {
    fn record(&self, batches: usize, steps: &Steps) {
        let add = |counter: &AtomicU64, d: Duration| {
            counter.fetch_add(
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        };
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(batches as u64, Ordering::Relaxed);
        add(&self.busy_nanos, steps.committed - steps.started);
        add(&self.store_nanos, steps.stored - steps.started);
        add(&self.publish_nanos, steps.published - steps.stored);
        add(&self.commit_nanos, steps.committed - steps.published);
    }
}

/// Events one group transaction takes at most (a single larger batch still
/// goes alone).
const MAX_GROUP_EVENTS: usize = 10_000;
/// Requests waiting for the writer before senders wait too.
const QUEUE_DEPTH: usize = 256;

impl EmbeddedSink {
    /// Starts the writer on a thread of its own; must be called within a
    /// Tokio runtime. It ends when the sink is dropped.
    ///
    /// The writer gets its own thread (and a single-threaded runtime on it)
    /// because every statement of its transactions is a round trip to its
    /// SQLite connection's thread: on the shared runtime each wake-up could
    /// queue behind request tasks that verify and parse a large body for
    /// milliseconds without yielding, and the one writer would sit idle.
    pub fn new(bus: Arc<EmbeddedBus>, clock: Arc<dyn Clock>) -> Self {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Counters::default());
        let writer = write_groups(bus, email_events_topic(), clock, queue, stats.clone());
        let started = std::thread::Builder::new()
            .name("herald-ingest-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(writer),
                    // Dropping the queue answers every request `Stopped`.
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the event writer's runtime")
                    }
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the event writer's thread");
        }
        Self { requests, stats }
    }

    pub fn stats(&self) -> WriterStats {
        let load = |counter: &AtomicU64| Duration::from_nanos(counter.load(Ordering::Relaxed));
        WriterStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
            busy: load(&self.stats.busy_nanos),
            store: load(&self.stats.store_nanos),
            publish: load(&self.stats.publish_nanos),
            commit: load(&self.stats.commit_nanos),
        }
    }
}

#[async_trait]
impl EventSink for EmbeddedSink {
    async fn ingest(&self, events: Vec<EmailEvent>) -> Result<IngestOutcome, IngestError> {
        if events.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let batch = Prepared::of(&events)?;
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(GroupRequest { batch, reply })
            .await
            .map_err(|_| IngestError::Stopped)?;
        let reply = answer.await.map_err(|_| IngestError::Stopped)?;
        Ok(IngestOutcome::of(&events, &reply.new?))
    }
}

async fn write_groups(
    bus: Arc<EmbeddedBus>,
    topic: TopicName,
    clock: Arc<dyn Clock>,
    mut queue: mpsc::Receiver<GroupRequest>,
    stats: Arc<Counters>,
) {
    while let Some(first) = queue.recv().await {
        let mut size = first.batch.rows.len();
        let mut group = vec![first];
        while size < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(next) => {
                    size += next.batch.rows.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let mut batches: Vec<&mut Prepared> = group.iter_mut().map(|r| &mut r.batch).collect();
        match write_group(&bus, &topic, clock.as_ref(), &mut batches, &stats).await {
            Ok(news) => {
                bus.db().checkpoint_soon();
                for (request, new) in group.into_iter().zip(news) {
                    request.answer(Ok(new));
                }
            }
            Err(e) if group.len() == 1 => group.remove(0).answer(Err(e)),
            Err(_) => {
                for mut request in group {
                    let new = write_group(
                        &bus,
                        &topic,
                        clock.as_ref(),
                        &mut [&mut request.batch],
                        &stats,
                    )
                    .await
                    .map(|mut news| news.remove(0));
                    if new.is_ok() {
                        bus.db().checkpoint_soon();
                    }
                    request.answer(new);
                }
            }
        }
    }
}

impl GroupRequest {
    fn answer(self, new: Result<Vec<usize>, IngestError>) {
        // A sender that stopped waiting is told nothing: its provider
        // retries and finds the events stored.
        let _ = self.reply.send(Reply {
            new,
            _batch: self.batch,
        });
    }
}

/// Stores and publishes several batches in one transaction; returns the
/// indexes of each batch's new events, batch by batch. The batches are left
/// as they came, whatever the outcome, so a failed group can be retried.
async fn write_group(
    bus: &EmbeddedBus,
    topic: &TopicName,
    clock: &dyn Clock,
    batches: &mut [&mut Prepared],
    stats: &Counters,
) -> Result<Vec<Vec<usize>>, IngestError> {
    let started = Instant::now();
    let now = clock.now();
    let mut tx = bus.begin_tx().await?;
    let rows: Vec<&EventRows> = batches.iter().map(|batch| &batch.rows).collect();
    let news = email_events::sqlite::insert_batches(tx.conn(), &rows, now).await?;
    let stored = Instant::now();
    // One publish for the group: a batch whose events are all new lends its
    // messages (moved, not copied) and gets them back below.
    let mut messages = Vec::new();
    let mut lent = Vec::with_capacity(batches.len());
    for (batch, new) in batches.iter_mut().zip(&news) {
        let whole = new.len() == batch.messages.len();
        if whole {
            messages.append(&mut batch.messages);
        } else {
            messages.extend(new.iter().map(|&i| batch.messages[i].clone()));
        }
        lent.push(whole);
    }
    let written = async {
        if !messages.is_empty() {
            tx.publish_batch(topic, &messages).await?;
        }
        let published = Instant::now();
        tx.commit().await?;
        Ok::<_, IngestError>(published)
    }
    .await;
    let mut copies = messages.into_iter();
    for ((batch, new), whole) in batches.iter_mut().zip(&news).zip(lent) {
        let copies = copies.by_ref().take(new.len());
        if whole {
            batch.messages.extend(copies);
        } else {
            copies.for_each(drop);
        }
    }
    let published = written?;
    let steps = Steps {
        started,
        stored,
        published,
        committed: Instant::now(),
    };
    stats.record(batches.len(), &steps);
    Ok(news)
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
