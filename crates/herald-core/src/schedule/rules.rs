//! The scheduler's small decisions: states, backoff, when a schedule fires,
//! what to do about a run still going, and when to notify.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::definition::{NotifyWhen, Overlap, Schedule};
use crate::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Not started: waiting for its dependencies.
    Pending,
    Running,
    /// An attempt failed; the next starts at the task's `next_attempt_at`.
    Retrying,
    /// Its executable finished; it waits for the explicit success call.
    AwaitingSuccess,
    Succeeded,
    Failed,
    /// Never ran: a dependency that had to succeed did not.
    Skipped,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for the previous run to end (overlap = wait).
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($ty))),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(TaskState {
    Pending = "pending",
    Running = "running",
    Retrying = "retrying",
    AwaitingSuccess = "awaiting_success",
    Succeeded = "succeeded",
    Failed = "failed",
    Skipped = "skipped",
    Cancelled = "cancelled",
});

text_enum!(RunState {
    Queued = "queued",
    Running = "running",
    Succeeded = "succeeded",
    Failed = "failed",
    Cancelled = "cancelled",
});

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
        )
    }
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

/// Exponential backoff between attempts: `base * exponent^(n-1)` after the
/// n-th failure, never more than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(default = "two")]
    pub exponent: f64,
    #[serde(default = "an_hour", with = "humantime_serde")]
    pub cap: Duration,
}

fn two() -> f64 {
    2.0
}

fn an_hour() -> Duration {
    Duration::from_secs(3600)
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            exponent: two(),
            cap: an_hour(),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failed attempt (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let power = self
            .exponent
            .powi(i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX));
        let seconds = self.base.as_secs_f64() * power;
        if !seconds.is_finite() || seconds >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(seconds)
        }
    }

    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.exponent.is_finite() || self.exponent < 1.0 {
            return Err(("exponent", "must be a number of at least 1".into()));
        }
        if self.cap < self.base {
            return Err(("cap", "must be at least the base".into()));
        }
        Ok(())
    }
}

/// The first fire of a schedule that was just set (created, changed or
/// resumed): a cron's next match after `now`, a continuous process at once.
pub fn first_fire(schedule: &Schedule, now: Timestamp) -> Option<Timestamp> {
    match schedule {
        Schedule::None => None,
        Schedule::Cron(cron) => cron.next_after(now),
        Schedule::Continuous(_) => Some(now),
    }
}

/// A scheduled run that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The time the run is for; one run per process and scheduled time.
    pub scheduled_for: Timestamp,
    /// The next fire after this one: the cron's next match after `now`, so
    /// times missed while Herald was down run once, not once each. `None`
    /// for continuous processes, whose next fire is set when the run ends.
    pub following: Option<Timestamp>,
}

/// Whether the fire stored as `next_fire_at` is due at `now`.
pub fn due(schedule: &Schedule, next_fire_at: Option<Timestamp>, now: Timestamp) -> Option<Fire> {
    let scheduled_for = next_fire_at.filter(|at| *at <= now)?;
    let following = match schedule {
        Schedule::None => return None,
        Schedule::Cron(cron) => cron.next_after(now),
        Schedule::Continuous(_) => None,
    };
    Some(Fire {
        scheduled_for,
        following,
    })
}

/// The next fire of a continuous process whose run ended at `ended_at`.
pub fn after_run(schedule: &Schedule, ended_at: Timestamp) -> Option<Timestamp> {
    match schedule {
        Schedule::Continuous(interval) => Some(ended_at.plus(*interval)),
        _ => None,
    }
}

/// What to do with a new run given whether one is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapDecision {
    Start,
    Skip,
    /// Record it queued; it starts when the running one ends.
    Queue,
    /// Cancel the running one, then start.
    TerminateThenStart,
}

pub fn on_new_run(overlap: Overlap, active: bool) -> OverlapDecision {
    match (active, overlap) {
        (false, _) => OverlapDecision::Start,
        (true, Overlap::Skip) => OverlapDecision::Skip,
        (true, Overlap::Wait) => OverlapDecision::Queue,
        (true, Overlap::Terminate) => OverlapDecision::TerminateThenStart,
    }
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RetryAt(Timestamp),
    GiveUp,
}

pub fn after_failure(
    backoff: &Backoff,
    max_attempts: u32,
    attempts_made: u32,
    now: Timestamp,
) -> AfterFailure {
    if attempts_made >= max_attempts {
        AfterFailure::GiveUp
    } else {
        AfterFailure::RetryAt(now.plus(backoff.delay(attempts_made)))
    }
}

/// Whether a finished run is announced, given the state of the run before.
pub fn should_notify(when: NotifyWhen, previous: Option<RunState>, now: RunState) -> bool {
    match when {
        NotifyWhen::Never => false,
        NotifyWhen::Always => true,
        NotifyWhen::OnStateChangeAndFailures => {
            now != RunState::Succeeded || previous.is_some_and(|p| p != now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::cron::tests::utc;
    use crate::schedule::cron::CronSchedule;
    use crate::{Clock, ManualClock};

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_secs(10),
            exponent: 2.0,
            cap: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
        let flat = Backoff { exponent: 1.0, ..b };
        assert_eq!(flat.delay(5), Duration::from_secs(10));
    }

    #[test]
    fn retries_until_max_attempts() {
        let clock = ManualClock::at(Timestamp(1_000));
        let b = Backoff {
            base: Duration::from_secs(1),
            exponent: 3.0,
            cap: Duration::from_secs(100),
        };
        assert_eq!(
            after_failure(&b, 3, 1, clock.now()),
            AfterFailure::RetryAt(Timestamp(2_000))
        );
        assert_eq!(
            after_failure(&b, 3, 2, clock.now()),
            AfterFailure::RetryAt(Timestamp(4_000))
        );
        assert_eq!(after_failure(&b, 3, 3, clock.now()), AfterFailure::GiveUp);
    }

    #[test]
    fn missed_cron_fires_run_once() {
        let schedule = Schedule::Cron(Box::new(CronSchedule::parse("*/5 * * * *", "UTC").unwrap()));
        let clock = ManualClock::at(utc("2026-11-25T12:00:00Z"));
        let next = first_fire(&schedule, clock.now());
        assert_eq!(next, Some(utc("2026-11-25T12:05:00Z")));
        clock.advance(Duration::from_secs(60));
        assert_eq!(due(&schedule, next, clock.now()), None, "not yet");
        // Down for three hours: 36 fires missed.
        clock.set(utc("2026-11-25T15:02:00Z"));
        let fire = due(&schedule, next, clock.now()).expect("due");
        assert_eq!(fire.scheduled_for, utc("2026-11-25T12:05:00Z"));
        assert_eq!(fire.following, Some(utc("2026-11-25T15:05:00Z")));
        assert_eq!(
            due(&schedule, fire.following, clock.now()),
            None,
            "one run for all the missed fires"
        );
    }

    #[test]
    fn continuous_starts_at_once_then_after_each_run() {
        let schedule = Schedule::Continuous(Duration::from_secs(30));
        let now = Timestamp(10_000);
        assert_eq!(first_fire(&schedule, now), Some(now));
        let fire = due(&schedule, Some(now), now).unwrap();
        assert_eq!(fire.following, None, "set when the run ends");
        assert_eq!(
            after_run(&schedule, Timestamp(50_000)),
            Some(Timestamp(80_000))
        );
        assert_eq!(first_fire(&Schedule::None, now), None);
        assert_eq!(due(&Schedule::None, Some(now), now), None);
    }

    #[test]
    fn overlap_modes() {
        assert_eq!(on_new_run(Overlap::Skip, false), OverlapDecision::Start);
        assert_eq!(on_new_run(Overlap::Skip, true), OverlapDecision::Skip);
        assert_eq!(on_new_run(Overlap::Wait, true), OverlapDecision::Queue);
        assert_eq!(
            on_new_run(Overlap::Terminate, true),
            OverlapDecision::TerminateThenStart
        );
    }

    #[test]
    fn notifications_follow_the_policy() {
        use RunState::*;
        let when = NotifyWhen::OnStateChangeAndFailures;
        assert!(should_notify(when, Some(Failed), Failed));
        assert!(should_notify(when, Some(Failed), Succeeded));
        assert!(!should_notify(when, Some(Succeeded), Succeeded));
        assert!(!should_notify(when, None, Succeeded));
        assert!(should_notify(
            NotifyWhen::Always,
            Some(Succeeded),
            Succeeded
        ));
        assert!(!should_notify(NotifyWhen::Never, Some(Succeeded), Failed));
    }

    #[test]
    fn states_round_trip_as_text() {
        for s in [
            TaskState::Pending,
            TaskState::AwaitingSuccess,
            TaskState::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        assert!("nope".parse::<RunState>().is_err());
    }
}
