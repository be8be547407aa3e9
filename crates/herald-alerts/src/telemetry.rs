//! Notable events of the audience job and the mailer: each `emit()` logs the
//! event and bumps its metric, so logs and `/metrics` never disagree.

use std::time::Duration;

use herald_store::brand_alerts::{BuildStep, SkipReason};

/// One audience batch enqueued and recorded.
pub struct AudienceBatch<'a> {
    pub alert_id: &'a str,
    pub batch: u64,
    pub step: &'a BuildStep,
    /// Members the Affinity API named that Herald does not know (or that
    /// are inactive): counted nowhere else.
    pub unknown_members: u64,
}

/// Progress is logged at info level every this many batches.
const PROGRESS_EVERY: u64 = 10;

impl AudienceBatch<'_> {
    pub fn emit(&self) {
        let step = self.step;
        metrics::counter!("herald_audience_enqueued_total").increment(step.enqueued);
        for (reason, count) in [
            ("unsubscribed", step.excluded_unsubscribed),
            ("suppressed", step.excluded_suppressed),
            ("cadence", step.excluded_cadence),
            ("unknown_member", self.unknown_members),
        ] {
            if count > 0 {
                metrics::counter!("herald_audience_excluded_total", "reason" => reason)
                    .increment(count);
            }
        }
        metrics::counter!("herald_audience_batches_total").increment(1);
        if self.batch.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(alert_id = self.alert_id, batch = self.batch, cursor = %step.cursor, "audience build in progress");
        } else {
            tracing::debug!(alert_id = self.alert_id, batch = self.batch, enqueued = step.enqueued, cursor = %step.cursor, "audience batch enqueued");
        }
    }
}

/// An alert's audience is fully enqueued.
pub struct AudienceBuilt<'a> {
    pub alert_id: &'a str,
    pub audience_size: u64,
    pub batches: u64,
    pub elapsed: Duration,
}

impl AudienceBuilt<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_audience_builds_total").increment(1);
        tracing::info!(
            alert_id = self.alert_id,
            audience_size = self.audience_size,
            batches = self.batches,
            elapsed = ?self.elapsed,
            "audience built; the alert is sending"
        );
    }
}

/// An alert was moved to failed because sending it cannot succeed.
pub struct AlertFailed<'a> {
    pub alert_id: &'a str,
    pub reason: &'a str,
    /// `audience` or `mailer`.
    pub by: &'static str,
}

impl AlertFailed<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_alerts_failed_total", "by" => self.by).increment(1);
        tracing::error!(
            alert_id = self.alert_id,
            reason = self.reason,
            by = self.by,
            "brand alert failed"
        );
    }
}

/// Sends confirmed in the send log.
pub struct EmailsSent<'a> {
    pub alert_id: &'a str,
    pub transport: &'a str,
    pub count: u64,
}

impl EmailsSent<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_mailer_sent_total", "transport" => self.transport.to_owned())
            .increment(self.count);
        tracing::debug!(
            alert_id = self.alert_id,
            transport = self.transport,
            count = self.count,
            "emails sent and confirmed"
        );
    }
}

/// A send taken over from a claim that lapsed: the process that held it
/// may have sent the email already.
pub struct PossibleDuplicate<'a> {
    pub alert_id: &'a str,
    pub member_id: &'a str,
}

impl PossibleDuplicate<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_mailer_possible_duplicates_total").increment(1);
        tracing::warn!(
            alert_id = self.alert_id,
            member_id = self.member_id,
            "resending a send left unconfirmed by a stopped mailer; possibly a duplicate"
        );
    }
}

/// Why a member's email ended in the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The template or the member's data did not make an email.
    Render,
    /// The transport refused it for good.
    Permanent,
    /// Transient failures used up every delivery of the message.
    RetriesExhausted,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Render => "render",
            FailureKind::Permanent => "permanent",
            FailureKind::RetriesExhausted => "retries_exhausted",
        }
    }
}

pub struct SendFailed<'a> {
    pub alert_id: &'a str,
    pub member_id: &'a str,
    pub kind: FailureKind,
    pub reason: &'a str,
}

impl SendFailed<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_mailer_failed_total", "kind" => self.kind.as_str()).increment(1);
        tracing::warn!(
            alert_id = self.alert_id,
            member_id = self.member_id,
            kind = self.kind.as_str(),
            reason = self.reason,
            "email not sent; dead-lettered"
        );
    }
}

pub struct SendRetried<'a> {
    pub alert_id: &'a str,
    pub member_id: &'a str,
    pub attempt: u32,
    pub delay: Duration,
    pub reason: &'a str,
}

impl SendRetried<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_mailer_retries_total").increment(1);
        tracing::info!(alert_id = self.alert_id, member_id = self.member_id, attempt = self.attempt, delay = ?self.delay, reason = self.reason, "transient send failure; retrying later");
    }
}

pub struct SendSkipped<'a> {
    pub alert_id: &'a str,
    pub member_id: &'a str,
    pub reason: SkipReason,
}

impl SendSkipped<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_mailer_skipped_total", "reason" => self.reason.as_str())
            .increment(1);
        tracing::debug!(
            alert_id = self.alert_id,
            member_id = self.member_id,
            reason = self.reason.as_str(),
            "member no longer eligible; not sent"
        );
    }
}

pub struct AddressSuppressed<'a> {
    pub member_id: &'a str,
    pub reason: &'a str,
}

impl AddressSuppressed<'_> {
    pub fn emit(&self) {
        metrics::counter!("herald_mailer_suppressed_total").increment(1);
        tracing::info!(
            member_id = self.member_id,
            reason = self.reason,
            "address suppressed after a permanent send failure"
        );
    }
}

/// How long one transport call took.
pub fn record_send_duration(transport: &str, elapsed: Duration) {
    metrics::histogram!("herald_mailer_send_duration_seconds", "transport" => transport.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Alerts whose every message is handled moved to sent.
pub fn alerts_completed(alert_ids: &[String]) {
    for alert_id in alert_ids {
        metrics::counter!("herald_alerts_completed_total").increment(1);
        tracing::info!(alert_id = %alert_id, "brand alert sent to its whole audience");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// Counter values by name and `key=value` labels.
    fn counters(emit: impl FnOnce()) -> BTreeMap<(String, Vec<String>), u64> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, emit);
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => {
                    let labels = key
                        .key()
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect();
                    Some(((key.key().name().to_owned(), labels), n))
                }
                _ => None,
            })
            .collect()
    }

    fn counter(name: &str, labels: &[&str]) -> (String, Vec<String>) {
        (
            name.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
        )
    }

    #[test]
    fn events_bump_the_counters_they_are_reported_by() {
        let step = BuildStep {
            cursor: "m9".into(),
            enqueued: 7,
            excluded_unsubscribed: 2,
            excluded_suppressed: 0,
            excluded_cadence: 1,
        };
        let counts = counters(|| {
            AudienceBatch {
                alert_id: "a",
                batch: 1,
                step: &step,
                unknown_members: 3,
            }
            .emit();
            for member_id in ["m1", "m2"] {
                PossibleDuplicate {
                    alert_id: "a",
                    member_id,
                }
                .emit();
            }
            SendFailed {
                alert_id: "a",
                member_id: "m3",
                kind: FailureKind::Render,
                reason: "undefined value",
            }
            .emit();
            EmailsSent {
                alert_id: "a",
                transport: "smtp",
                count: 5,
            }
            .emit();
            SendSkipped {
                alert_id: "a",
                member_id: "m4",
                reason: SkipReason::Cadence,
            }
            .emit();
        });
        let expected = BTreeMap::from([
            (counter("herald_audience_batches_total", &[]), 1),
            (counter("herald_audience_enqueued_total", &[]), 7),
            (
                counter("herald_audience_excluded_total", &["reason=unsubscribed"]),
                2,
            ),
            (
                counter("herald_audience_excluded_total", &["reason=cadence"]),
                1,
            ),
            (
                counter("herald_audience_excluded_total", &["reason=unknown_member"]),
                3,
            ),
            (counter("herald_mailer_possible_duplicates_total", &[]), 2),
            (counter("herald_mailer_failed_total", &["kind=render"]), 1),
            (counter("herald_mailer_sent_total", &["transport=smtp"]), 5),
            (
                counter("herald_mailer_skipped_total", &["reason=cadence"]),
                1,
            ),
        ]);
        assert_eq!(counts, expected);
    }
}
