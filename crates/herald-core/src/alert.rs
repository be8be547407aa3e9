//! The brand alert lifecycle: `draft → scheduled → building → sending → sent`,
//! and `cancelled` or `failed` from any state before `sent`.
//!
//! Every change of state goes through [`AlertState::apply`], so the API, the
//! audience job and the mailer agree on which moves are legal and the API can
//! answer an illegal one with a 409 that says what was refused and why.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::time::{duration_millis, Timestamp};

/// Where a brand alert is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Being written; the only state in which the alert can be edited.
    Draft,
    /// Waiting for its send time.
    Scheduled,
    /// The audience job is enqueueing one message per member; resumable.
    Building,
    /// Every message is enqueued and the mailers are sending; resumable.
    Sending,
    /// Every message was handled. Terminal.
    Sent,
    /// Stopped by a person. Terminal.
    Cancelled,
    /// Stopped by an error that retrying would not fix. Terminal.
    Failed,
}

impl AlertState {
    /// Every state, in lifecycle order.
    pub const ALL: [AlertState; 7] = [
        AlertState::Draft,
        AlertState::Scheduled,
        AlertState::Building,
        AlertState::Sending,
        AlertState::Sent,
        AlertState::Cancelled,
        AlertState::Failed,
    ];

    /// The name used in JSON, in the database and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Draft => "draft",
            AlertState::Scheduled => "scheduled",
            AlertState::Building => "building",
            AlertState::Sending => "sending",
            AlertState::Sent => "sent",
            AlertState::Cancelled => "cancelled",
            AlertState::Failed => "failed",
        }
    }

    /// Only a draft's content, brands, template or send time may change.
    pub fn is_editable(self) -> bool {
        self == AlertState::Draft
    }

    /// No action leads out of a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AlertState::Sent | AlertState::Cancelled | AlertState::Failed
        )
    }

    /// The state after `action`, or why `action` is not allowed now.
    pub fn apply(self, action: AlertAction) -> Result<AlertState, TransitionError> {
        use AlertAction as A;
        use AlertState as S;
        let next = match (self, action) {
            (S::Draft, A::Edit) => Some(S::Draft),
            (S::Draft, A::Schedule) => Some(S::Scheduled),
            (S::Scheduled, A::Unschedule) => Some(S::Draft),
            (S::Scheduled, A::StartBuilding) => Some(S::Building),
            (S::Building, A::StartSending) => Some(S::Sending),
            (S::Sending, A::Complete) => Some(S::Sent),
            (S::Draft | S::Scheduled | S::Building | S::Sending, A::Cancel) => Some(S::Cancelled),
            (S::Draft | S::Scheduled | S::Building | S::Sending, A::Fail) => Some(S::Failed),
            _ => None,
        };
        next.ok_or(TransitionError { from: self, action })
    }

    /// Shorthand for `apply(AlertAction::Edit)`, for the API's update handlers.
    pub fn ensure_editable(self) -> Result<(), TransitionError> {
        self.apply(AlertAction::Edit).map(|_| ())
    }

    /// How the state reads after "a brand alert that ...".
    fn described(self) -> &'static str {
        match self {
            AlertState::Draft => "is a draft",
            AlertState::Scheduled => "is scheduled",
            AlertState::Building => "is building",
            AlertState::Sending => "is sending",
            AlertState::Sent => "was already sent",
            AlertState::Cancelled => "was cancelled",
            AlertState::Failed => "has failed",
        }
    }
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown brand alert state {0:?}; expected one of draft, scheduled, building, sending, sent, cancelled, failed")]
pub struct UnknownAlertState(pub String);

impl FromStr for AlertState {
    type Err = UnknownAlertState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownAlertState(s.to_owned()))
    }
}

/// Something that can happen to a brand alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    /// Change the alert's content; keeps it a draft.
    Edit,
    Schedule,
    /// Move a scheduled alert back to draft.
    Unschedule,
    /// The send time came: the audience job takes the alert.
    StartBuilding,
    /// The audience is fully enqueued.
    StartSending,
    /// Every message was sent, suppressed or dead-lettered.
    Complete,
    Cancel,
    Fail,
}

impl AlertAction {
    /// Every action.
    pub const ALL: [AlertAction; 8] = [
        AlertAction::Edit,
        AlertAction::Schedule,
        AlertAction::Unschedule,
        AlertAction::StartBuilding,
        AlertAction::StartSending,
        AlertAction::Complete,
        AlertAction::Cancel,
        AlertAction::Fail,
    ];

    /// The verb used in messages: "cannot {verb} a brand alert that ...".
    pub fn verb(self) -> &'static str {
        match self {
            AlertAction::Edit => "edit",
            AlertAction::Schedule => "schedule",
            AlertAction::Unschedule => "unschedule",
            AlertAction::StartBuilding => "start building",
            AlertAction::StartSending => "start sending",
            AlertAction::Complete => "complete",
            AlertAction::Cancel => "cancel",
            AlertAction::Fail => "fail",
        }
    }
}

impl fmt::Display for AlertAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())
    }
}

/// An action that the alert's current state does not allow (HTTP 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a brand alert that {}", .action.verb(), .from.described())]
pub struct TransitionError {
    pub from: AlertState,
    pub action: AlertAction,
}

/// How far in the past a draft's send time may be when it is scheduled.
pub const SCHEDULE_GRACE: Duration = Duration::from_secs(60);

/// Whether scheduling an alert in `state` due at `send_at` should be refused
/// because its send time has passed by more than [`SCHEDULE_GRACE`]: it would
/// go out at once, which is rarely what was meant. Only drafts are checked;
/// other states are refused (or not) by the lifecycle.
pub fn send_time_passed(state: AlertState, send_at: Timestamp, now: Timestamp) -> bool {
    let earliest = Timestamp(now.0.saturating_sub(duration_millis(SCHEDULE_GRACE)));
    state == AlertState::Draft && send_at < earliest
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlertAction as A;
    use AlertState as S;

    /// The lifecycle written out as a table, independent of `apply`'s match.
    const LEGAL: &[(AlertState, AlertAction, AlertState)] = &[
        (S::Draft, A::Edit, S::Draft),
        (S::Draft, A::Schedule, S::Scheduled),
        (S::Draft, A::Cancel, S::Cancelled),
        (S::Draft, A::Fail, S::Failed),
        (S::Scheduled, A::Unschedule, S::Draft),
        (S::Scheduled, A::StartBuilding, S::Building),
        (S::Scheduled, A::Cancel, S::Cancelled),
        (S::Scheduled, A::Fail, S::Failed),
        (S::Building, A::StartSending, S::Sending),
        (S::Building, A::Cancel, S::Cancelled),
        (S::Building, A::Fail, S::Failed),
        (S::Sending, A::Complete, S::Sent),
        (S::Sending, A::Cancel, S::Cancelled),
        (S::Sending, A::Fail, S::Failed),
    ];

    #[test]
    fn every_state_action_pair_follows_the_table() {
        let mut checked = 0;
        for from in AlertState::ALL {
            for action in AlertAction::ALL {
                let expected = LEGAL
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                match (from.apply(action), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} --{action}-->"),
                    (Err(err), None) => {
                        assert_eq!(err, TransitionError { from, action });
                    }
                    (got, want) => panic!("{from} --{action}--> gave {got:?}, expected {want:?}"),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 7 * 8);
    }

    #[test]
    fn terminal_states_allow_nothing() {
        for from in AlertState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for action in AlertAction::ALL {
                assert!(from.apply(action).is_err(), "{from} allowed {action}");
            }
        }
        assert!(!S::Sending.is_terminal());
    }

    #[test]
    fn cancel_and_fail_work_from_every_state_before_sent() {
        for from in [S::Draft, S::Scheduled, S::Building, S::Sending] {
            assert_eq!(from.apply(A::Cancel), Ok(S::Cancelled));
            assert_eq!(from.apply(A::Fail), Ok(S::Failed));
        }
    }

    #[test]
    fn only_drafts_are_editable() {
        for state in AlertState::ALL {
            assert_eq!(state.is_editable(), state == S::Draft, "{state}");
            assert_eq!(state.ensure_editable().is_ok(), state == S::Draft);
        }
        assert_eq!(
            S::Scheduled.ensure_editable().unwrap_err().to_string(),
            "cannot edit a brand alert that is scheduled"
        );
    }

    #[test]
    fn errors_name_the_action_and_the_current_state() {
        let cases = [
            (
                S::Sending,
                A::Schedule,
                "cannot schedule a brand alert that is sending",
            ),
            (
                S::Draft,
                A::Unschedule,
                "cannot unschedule a brand alert that is a draft",
            ),
            (
                S::Sent,
                A::Cancel,
                "cannot cancel a brand alert that was already sent",
            ),
            (
                S::Cancelled,
                A::StartBuilding,
                "cannot start building a brand alert that was cancelled",
            ),
            (
                S::Failed,
                A::Complete,
                "cannot complete a brand alert that has failed",
            ),
        ];
        for (from, action, message) in cases {
            assert_eq!(from.apply(action).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn states_round_trip_through_text_and_json() {
        for state in AlertState::ALL {
            assert_eq!(state.as_str().parse::<AlertState>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<AlertState>(&json).unwrap(), state);
        }
        assert_eq!(
            serde_json::to_string(&A::StartBuilding).unwrap(),
            "\"start_building\""
        );
    }

    #[test]
    fn unknown_state_names_are_rejected() {
        for bad in ["", "Draft", "DRAFT", "sent ", "deleted"] {
            let err = bad.parse::<AlertState>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            assert!(serde_json::from_str::<AlertState>(&format!("\"{bad}\"")).is_err());
        }
    }

    #[test]
    fn a_draft_whose_send_time_passed_beyond_the_grace_is_refused() {
        let now = Timestamp(10_000_000);
        let grace = duration_millis(SCHEDULE_GRACE);
        let just_inside = Timestamp(now.0 - grace);
        let just_outside = Timestamp(now.0 - grace - 1);
        assert!(!send_time_passed(AlertState::Draft, just_inside, now));
        assert!(send_time_passed(AlertState::Draft, just_outside, now));
        assert!(!send_time_passed(
            AlertState::Draft,
            Timestamp(now.0 + 1),
            now
        ));
        assert!(!send_time_passed(AlertState::Scheduled, just_outside, now));
    }
}
