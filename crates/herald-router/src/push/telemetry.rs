//! Notable events of push delivery: each `emit()` logs the event and bumps
//! its metric, so logs and `/metrics` never disagree.

use std::time::Duration;

/// How one POST of one message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx within the timeout.
    Delivered,
    /// The endpoint answered with another status.
    Rejected(u16),
    /// No answer within the timeout.
    Timeout,
    /// No connection, or the connection broke.
    Unreachable(String),
}

impl AttemptOutcome {
    /// The `outcome` label of `herald_push_attempts_total`.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Rejected(_) => "rejected",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Unreachable(_) => "unreachable",
        }
    }

    /// Why the attempt failed, for logs and the dead-letter copy.
    pub fn reason(&self) -> String {
        match self {
            AttemptOutcome::Delivered => "delivered".to_owned(),
            AttemptOutcome::Rejected(status) => format!("the endpoint answered HTTP {status}"),
            AttemptOutcome::Timeout => "no answer within the timeout".to_owned(),
            AttemptOutcome::Unreachable(error) => format!("the endpoint is unreachable: {error}"),
        }
    }
}

/// One delivery attempt finished.
pub struct PushAttempt<'a> {
    pub shard: &'a str,
    pub message_id: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub outcome: &'a AttemptOutcome,
    pub elapsed: Duration,
}

impl PushAttempt<'_> {
    pub fn emit(&self) {
        metrics::counter!(
            "herald_push_attempts_total",
            "shard" => self.shard.to_owned(),
            "outcome" => self.outcome.label(),
        )
        .increment(1);
        if *self.outcome == AttemptOutcome::Delivered {
            tracing::debug!(shard = self.shard, message_id = self.message_id, attempt = self.attempt, elapsed = ?self.elapsed, "event pushed");
        } else {
            tracing::warn!(shard = self.shard, message_id = self.message_id, attempt = self.attempt, elapsed = ?self.elapsed, reason = %self.outcome.reason(), "push attempt failed");
        }
    }
}

/// A message failed its last attempt and was copied to the dead-letter
/// queue.
pub struct PushDeadLettered<'a> {
    pub shard: &'a str,
    pub message_id: &'a str,
    pub dead_letter_queue: &'a str,
    pub attempts: u32,
    pub reason: &'a str,
}

impl PushDeadLettered<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_push_dead_lettered_total", "shard" => self.shard.to_owned())
            .increment(1);
        tracing::error!(
            shard = self.shard,
            message_id = self.message_id,
            dead_letter_queue = self.dead_letter_queue,
            attempts = self.attempts,
            reason = self.reason,
            "push retries exhausted; message dead-lettered"
        );
    }
}
