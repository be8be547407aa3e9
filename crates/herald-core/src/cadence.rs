//! The cadence limit: at most `max_alerts` brand alerts per member in any
//! rolling `window` (default 3 per 7 days).
//!
//! The audience job applies it when it builds an audience and the mailer
//! applies it again just before sending, counting sends that other alerts
//! have claimed but not yet confirmed, so two alerts in flight at once cannot
//! together exceed the limit.

use std::time::Duration;

use crate::time::{duration_millis, Timestamp};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A validated cadence policy. Build it with [`CadencePolicy::new`] or
/// deserialize it from `{"max_alerts": 3, "window_secs": 604800}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "CadencePolicyRepr", into = "CadencePolicyRepr")]
pub struct CadencePolicy {
    max_alerts: u32,
    window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CadenceError {
    #[error("max_alerts must be at least 1")]
    ZeroMaxAlerts,
    #[error("window must be longer than zero")]
    ZeroWindow,
    #[error("window must be a whole number of seconds")]
    FractionalWindow,
    /// The send log is only kept as long as the longest window needs, so an
    /// accidental "70 years" would silently keep every row forever.
    #[error("window must be at most {} days", CadencePolicy::MAX_WINDOW.as_secs() / DAY.as_secs())]
    WindowTooLong,
}

impl CadencePolicy {
    pub const DEFAULT_MAX_ALERTS: u32 = 3;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

    pub fn new(max_alerts: u32, window: Duration) -> Result<Self, CadenceError> {
        if max_alerts == 0 {
            return Err(CadenceError::ZeroMaxAlerts);
        }
        if window.is_zero() {
            return Err(CadenceError::ZeroWindow);
        }
        if window.subsec_nanos() != 0 {
            return Err(CadenceError::FractionalWindow);
        }
        if window > Self::MAX_WINDOW {
            return Err(CadenceError::WindowTooLong);
        }
        Ok(Self { max_alerts, window })
    }

    pub fn max_alerts(&self) -> u32 {
        self.max_alerts
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// A send at `t` counts at `now` exactly when `t > window_start(now)`:
    /// a send made exactly one window ago no longer counts. Use it to bound
    /// the send-log query.
    pub fn window_start(&self, now: Timestamp) -> Timestamp {
        Timestamp(now.0.saturating_sub(duration_millis(self.window)))
    }

    /// Whether one more brand alert may go to a member now.
    ///
    /// `sent_at` holds when each of the member's *other* brand alerts was
    /// sent or claimed (older entries are ignored, so the caller may pass a
    /// superset). `in_flight` counts claims whose time is unknown or that
    /// must count regardless of it; they count as if made at `now`.
    /// Timestamps after `now` (clock skew between machines) count.
    pub fn check(&self, now: Timestamp, sent_at: &[Timestamp], in_flight: u32) -> CadenceDecision {
        let start = self.window_start(now);
        let mut recent: Vec<Timestamp> = sent_at.iter().copied().filter(|t| *t > start).collect();
        let counted = u64::try_from(recent.len())
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(in_flight));
        if counted < u64::from(self.max_alerts) {
            return CadenceDecision::Allowed {
                counted: saturate(counted),
            };
        }
        // One more fits once `counted - max_alerts + 1` of the timed sends
        // have left the window; in-flight claims never leave it on their own.
        let must_expire = counted - u64::from(self.max_alerts) + 1;
        recent.sort_unstable();
        let until = usize::try_from(must_expire)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| recent.get(i))
            .map(|t| t.plus(self.window));
        CadenceDecision::Limited {
            counted: saturate(counted),
            until,
        }
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Default for CadencePolicy {
    fn default() -> Self {
        Self {
            max_alerts: Self::DEFAULT_MAX_ALERTS,
            window: Self::DEFAULT_WINDOW,
        }
    }
}

/// The outcome of [`CadencePolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CadenceDecision {
    /// `counted` alerts are in the window; one more fits.
    Allowed { counted: u32 },
    /// The window is full. `until` is the first moment one more fits if
    /// nothing else is sent, or `None` when in-flight claims alone fill it.
    Limited {
        counted: u32,
        until: Option<Timestamp>,
    },
}

impl CadenceDecision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, CadenceDecision::Allowed { .. })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CadencePolicyRepr {
    max_alerts: u32,
    window_secs: u64,
}

impl TryFrom<CadencePolicyRepr> for CadencePolicy {
    type Error = CadenceError;

    fn try_from(repr: CadencePolicyRepr) -> Result<Self, Self::Error> {
        CadencePolicy::new(repr.max_alerts, Duration::from_secs(repr.window_secs))
    }
}

impl From<CadencePolicy> for CadencePolicyRepr {
    fn from(policy: CadencePolicy) -> Self {
        Self {
            max_alerts: policy.max_alerts,
            window_secs: policy.window.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(60 * 60);
    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    fn ago(d: Duration) -> Timestamp {
        Timestamp(NOW.0 - duration_millis(d))
    }

    fn policy(max: u32, window: Duration) -> CadencePolicy {
        CadencePolicy::new(max, window).unwrap()
    }

    #[test]
    fn default_is_three_per_seven_days() {
        let p = CadencePolicy::default();
        assert_eq!(p.max_alerts(), 3);
        assert_eq!(p.window(), 7 * DAY);
        assert_eq!(CadencePolicy::new(3, 7 * DAY), Ok(p));
    }

    #[test]
    fn invalid_policies_are_rejected_with_a_reason() {
        assert_eq!(CadencePolicy::new(0, DAY), Err(CadenceError::ZeroMaxAlerts));
        assert_eq!(
            CadencePolicy::new(1, Duration::ZERO),
            Err(CadenceError::ZeroWindow)
        );
        assert_eq!(
            CadencePolicy::new(1, Duration::from_millis(1500)),
            Err(CadenceError::FractionalWindow)
        );
        assert_eq!(
            CadencePolicy::new(1, CadencePolicy::MAX_WINDOW + Duration::from_secs(1)),
            Err(CadenceError::WindowTooLong)
        );
        assert!(CadencePolicy::new(1, CadencePolicy::MAX_WINDOW).is_ok());
        assert!(CadencePolicy::new(u32::MAX, Duration::from_secs(1)).is_ok());
        assert_eq!(
            CadenceError::WindowTooLong.to_string(),
            "window must be at most 366 days"
        );
    }

    #[test]
    fn below_the_limit_is_allowed() {
        let p = CadencePolicy::default();
        assert_eq!(
            p.check(NOW, &[], 0),
            CadenceDecision::Allowed { counted: 0 }
        );
        assert_eq!(
            p.check(NOW, &[ago(DAY), ago(2 * DAY)], 0),
            CadenceDecision::Allowed { counted: 2 }
        );
    }

    #[test]
    fn at_the_limit_is_refused_until_the_oldest_send_leaves_the_window() {
        let p = CadencePolicy::default();
        let sends = [ago(HOUR), ago(6 * DAY), ago(3 * DAY)];
        assert_eq!(
            p.check(NOW, &sends, 0),
            CadenceDecision::Limited {
                counted: 3,
                until: Some(ago(6 * DAY).plus(7 * DAY)),
            }
        );
    }

    #[test]
    fn a_send_exactly_one_window_ago_no_longer_counts() {
        let p = policy(1, 7 * DAY);
        let edge = ago(7 * DAY);
        assert_eq!(p.window_start(NOW), edge);
        assert!(p.check(NOW, &[edge], 0).is_allowed());
        let just_inside = Timestamp(edge.0 + 1);
        assert_eq!(
            p.check(NOW, &[just_inside], 0),
            CadenceDecision::Limited {
                counted: 1,
                until: Some(Timestamp(NOW.0 + 1)),
            }
        );
        // The `until` it reports is itself the first allowed moment.
        assert!(p
            .check(Timestamp(NOW.0 + 1), &[just_inside], 0)
            .is_allowed());
        assert!(!p.check(NOW, &[just_inside], 0).is_allowed());
    }

    #[test]
    fn sends_outside_the_window_are_ignored() {
        let p = policy(2, DAY);
        let sends = [ago(DAY), ago(2 * DAY), ago(30 * DAY), ago(HOUR)];
        assert_eq!(
            p.check(NOW, &sends, 0),
            CadenceDecision::Allowed { counted: 1 }
        );
    }

    #[test]
    fn in_flight_claims_count() {
        let p = CadencePolicy::default();
        assert_eq!(
            p.check(NOW, &[ago(DAY)], 1),
            CadenceDecision::Allowed { counted: 2 }
        );
        // Two timed sends plus one claim fill the window; it frees up when
        // the older timed send expires.
        assert_eq!(
            p.check(NOW, &[ago(DAY), ago(2 * DAY)], 1),
            CadenceDecision::Limited {
                counted: 3,
                until: Some(ago(2 * DAY).plus(7 * DAY)),
            }
        );
    }

    #[test]
    fn claims_alone_filling_the_window_give_no_retry_time() {
        let p = policy(2, DAY);
        assert_eq!(
            p.check(NOW, &[], 2),
            CadenceDecision::Limited {
                counted: 2,
                until: None,
            }
        );
        assert_eq!(
            p.check(NOW, &[ago(HOUR)], 3),
            CadenceDecision::Limited {
                counted: 4,
                until: None,
            }
        );
    }

    #[test]
    fn over_the_limit_waits_for_enough_sends_to_expire() {
        let p = policy(2, 10 * DAY);
        // Four sends in the window: two must leave before a fifth fits (3rd oldest).
        let sends = [ago(DAY), ago(9 * DAY), ago(5 * DAY), ago(2 * DAY)];
        assert_eq!(
            p.check(NOW, &sends, 0),
            CadenceDecision::Limited {
                counted: 4,
                until: Some(ago(2 * DAY).plus(10 * DAY)),
            }
        );
    }

    #[test]
    fn future_timestamps_from_clock_skew_count() {
        let p = policy(1, DAY);
        let ahead = NOW.plus(HOUR);
        assert_eq!(
            p.check(NOW, &[ahead], 0),
            CadenceDecision::Limited {
                counted: 1,
                until: Some(ahead.plus(DAY)),
            }
        );
    }

    #[test]
    fn serde_uses_whole_seconds_and_validates() {
        let p = CadencePolicy::default();
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"max_alerts": 3, "window_secs": 604_800})
        );
        assert_eq!(serde_json::from_value::<CadencePolicy>(json).unwrap(), p);

        let zero = serde_json::json!({"max_alerts": 0, "window_secs": 60});
        let err = serde_json::from_value::<CadencePolicy>(zero).unwrap_err();
        assert!(
            err.to_string().contains("max_alerts must be at least 1"),
            "{err}"
        );

        let unknown = serde_json::json!({"max_alerts": 1, "window_secs": 60, "window": 1});
        let err = serde_json::from_value::<CadencePolicy>(unknown).unwrap_err();
        assert!(err.to_string().contains("unknown field `window`"), "{err}");

        let missing = serde_json::json!({"max_alerts": 1});
        let err = serde_json::from_value::<CadencePolicy>(missing).unwrap_err();
        assert!(err.to_string().contains("window_secs"), "{err}");
    }
}
