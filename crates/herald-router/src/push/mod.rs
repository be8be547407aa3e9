//! Push delivery: a shard that would rather not poll the queue API gets its
//! queue's messages POSTed to an HTTP endpoint of its own.
//!
//! Each `[[push]]` entry of the configuration names a queue, a URL and a
//! Standard Webhooks secret. Every request carries `webhook-id` (the bus
//! message id, stable across retries: deduplicate on it),
//! `webhook-timestamp` and `webhook-signature` (HMAC-SHA256, verifiable with
//! any Standard Webhooks library or [`crate::verify::StandardWebhooks`]).
//! The body is the message body, unchanged.
//!
//! A 2xx within the timeout acks the message. Anything else (another
//! status, a timeout, no connection) nacks it with the next delay of the
//! retry schedule, chosen by the message's receive count. When the last
//! retry fails, the message is copied to the queue's dead-letter queue with
//! `reason`, `source_queue`, `attempts` and `original_message_id`
//! attributes, then acked; redrive it from there once the endpoint is
//! fixed. The queue's `max_receives` is set to the number of attempts, so
//! a message whose worker dies mid-attempt also ends in the dead-letter
//! queue (moved by the bus, with the bus's reason) rather than retrying
//! forever.

mod settings;
mod telemetry;
mod worker;

pub use settings::{
    PushSettings, PushSettingsError, PushTarget, DEFAULT_CONCURRENCY, DEFAULT_RETRY_SCHEDULE,
    DEFAULT_TIMEOUT, MAX_CONCURRENCY, MAX_TIMEOUT,
};
pub use telemetry::AttemptOutcome;
pub use worker::{
    PushError, PushReport, PushWorker, ATTEMPTS_ATTRIBUTE, ORIGINAL_ID_ATTRIBUTE, REASON_ATTRIBUTE,
    SOURCE_QUEUE_ATTRIBUTE,
};
