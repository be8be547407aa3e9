//! Where each customer lives: the per-customer sharding state machine.
//!
//! | state          | event                  | next           | releases held events to |
//! |----------------|------------------------|----------------|-------------------------|
//! | unknown        | assigned(s)            | stable(s)      |                         |
//! | stable(a)      | assigned(b)            | stable(b)      |                         |
//! | stable(a)      | migration_started(a→b) | migrating(a→b) |                         |
//! | migrating(a→b) | migration_succeeded(b) | stable(b)      | b                       |
//! | migrating(a→b) | migration_failed       | stable(a)      | a                       |
//!
//! Every other pair is refused. Deduplicating event ids and ordering by
//! `occurred_at` is the store's job; this module only judges one step.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not valid: {rule}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:expr, $allowed:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let allowed: fn(char) -> bool = $allowed;
                if value.is_empty() || value.len() > Self::MAX_LEN || !value.chars().all(allowed) {
                    return Err(IdError { kind: $kind, value, rule: $rule });
                }
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A shard: `[A-Za-z0-9_-]{1,32}`, so it can be spliced into a queue name.
    ShardId,
    "shard id",
    32,
    |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'),
    "use 1 to 32 letters, digits, '_' or '-'"
);

id_type!(
    /// A customer key as it appears in events: any printable text up to 200
    /// characters without whitespace.
    CustomerId,
    "customer id",
    200,
    |c| !c.is_whitespace() && !c.is_control(),
    "use 1 to 200 characters, no whitespace or control characters"
);

id_type!(
    /// The id of a sharding event; the same id twice is one event.
    ShardingEventId,
    "sharding event id",
    200,
    |c| !c.is_whitespace() && !c.is_control(),
    "use 1 to 200 characters, no whitespace or control characters"
);

/// Where a customer's events go now.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Placement {
    #[default]
    Unknown,
    Stable {
        shard: ShardId,
    },
    Migrating {
        from: ShardId,
        to: ShardId,
    },
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Unknown => f.write_str("unknown"),
            Placement::Stable { shard } => write!(f, "stable({shard})"),
            Placement::Migrating { from, to } => write!(f, "migrating({from}→{to})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShardingEventKind {
    Assigned { shard: ShardId },
    MigrationStarted { from: ShardId, to: ShardId },
    MigrationSucceeded { shard: ShardId },
    MigrationFailed,
}

impl ShardingEventKind {
    pub fn name(&self) -> &'static str {
        match self {
            ShardingEventKind::Assigned { .. } => "assigned",
            ShardingEventKind::MigrationStarted { .. } => "migration_started",
            ShardingEventKind::MigrationSucceeded { .. } => "migration_succeeded",
            ShardingEventKind::MigrationFailed => "migration_failed",
        }
    }
}

impl fmt::Display for ShardingEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardingEventKind::Assigned { shard } => write!(f, "assigned({shard})"),
            ShardingEventKind::MigrationStarted { from, to } => {
                write!(f, "migration_started({from}→{to})")
            }
            ShardingEventKind::MigrationSucceeded { shard } => {
                write!(f, "migration_succeeded({shard})")
            }
            ShardingEventKind::MigrationFailed => f.write_str("migration_failed"),
        }
    }
}

/// One change to a customer's placement, as recorded in the append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardingEvent {
    pub id: ShardingEventId,
    pub customer: CustomerId,
    #[serde(flatten)]
    pub kind: ShardingEventKind,
    pub occurred_at: Timestamp,
}

/// The outcome of an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub placement: Placement,
    /// When a migration ends: the shard that the customer's held events go
    /// to, in the order they were held.
    pub release_to: Option<ShardId>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{event} is not allowed while the customer is {state}; allowed: {allowed}", allowed = state.allowed_events().join(", "))]
    NotAllowed {
        state: Placement,
        event: ShardingEventKind,
    },
    #[error("{event} does not match: the customer is {state}, so a migration must start from shard {current}")]
    WrongSource {
        state: Placement,
        event: ShardingEventKind,
        current: ShardId,
    },
    #[error("{event} does not match: the customer is {state}, so only migration_succeeded({target}) can end it")]
    WrongTarget {
        state: Placement,
        event: ShardingEventKind,
        target: ShardId,
    },
    #[error(
        "{event} is not a migration: the customer is {state} and the target is the same shard"
    )]
    SameShard {
        state: Placement,
        event: ShardingEventKind,
    },
}

impl TransitionError {
    /// The placement that refused the event.
    pub fn state(&self) -> &Placement {
        match self {
            TransitionError::NotAllowed { state, .. }
            | TransitionError::WrongSource { state, .. }
            | TransitionError::WrongTarget { state, .. }
            | TransitionError::SameShard { state, .. } => state,
        }
    }
}

impl Placement {
    /// The names of the events this state accepts.
    pub fn allowed_events(&self) -> &'static [&'static str] {
        match self {
            Placement::Unknown => &["assigned"],
            Placement::Stable { .. } => &["assigned", "migration_started"],
            Placement::Migrating { .. } => &["migration_succeeded", "migration_failed"],
        }
    }

    /// The shard that takes new events directly, if any.
    pub fn shard(&self) -> Option<&ShardId> {
        match self {
            Placement::Stable { shard } => Some(shard),
            _ => None,
        }
    }

    /// Judges one event against this state.
    pub fn apply(&self, event: &ShardingEventKind) -> Result<Transition, TransitionError> {
        use ShardingEventKind as E;
        let stay = |placement| Transition {
            placement,
            release_to: None,
        };
        match (self, event) {
            (Placement::Unknown | Placement::Stable { .. }, E::Assigned { shard }) => {
                Ok(stay(Placement::Stable {
                    shard: shard.clone(),
                }))
            }
            (Placement::Stable { shard: current }, E::MigrationStarted { from, to }) => {
                if from != current {
                    Err(TransitionError::WrongSource {
                        state: self.clone(),
                        event: event.clone(),
                        current: current.clone(),
                    })
                } else if to == current {
                    Err(TransitionError::SameShard {
                        state: self.clone(),
                        event: event.clone(),
                    })
                } else {
                    Ok(stay(Placement::Migrating {
                        from: from.clone(),
                        to: to.clone(),
                    }))
                }
            }
            (Placement::Migrating { to, .. }, E::MigrationSucceeded { shard }) => {
                if shard == to {
                    Ok(Transition {
                        placement: Placement::Stable { shard: to.clone() },
                        release_to: Some(to.clone()),
                    })
                } else {
                    Err(TransitionError::WrongTarget {
                        state: self.clone(),
                        event: event.clone(),
                        target: to.clone(),
                    })
                }
            }
            (Placement::Migrating { from, .. }, E::MigrationFailed) => Ok(Transition {
                placement: Placement::Stable {
                    shard: from.clone(),
                },
                release_to: Some(from.clone()),
            }),
            _ => Err(TransitionError::NotAllowed {
                state: self.clone(),
                event: event.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str) -> ShardId {
        ShardId::parse(id).unwrap()
    }

    fn stable(id: &str) -> Placement {
        Placement::Stable { shard: s(id) }
    }

    fn migrating(from: &str, to: &str) -> Placement {
        Placement::Migrating {
            from: s(from),
            to: s(to),
        }
    }

    fn assigned(id: &str) -> ShardingEventKind {
        ShardingEventKind::Assigned { shard: s(id) }
    }

    fn started(from: &str, to: &str) -> ShardingEventKind {
        ShardingEventKind::MigrationStarted {
            from: s(from),
            to: s(to),
        }
    }

    fn succeeded(id: &str) -> ShardingEventKind {
        ShardingEventKind::MigrationSucceeded { shard: s(id) }
    }

    #[test]
    fn every_legal_transition() {
        let cases = [
            (Placement::Unknown, assigned("a"), stable("a"), None),
            (stable("a"), assigned("b"), stable("b"), None),
            (stable("a"), assigned("a"), stable("a"), None),
            (stable("a"), started("a", "b"), migrating("a", "b"), None),
            (
                migrating("a", "b"),
                succeeded("b"),
                stable("b"),
                Some(s("b")),
            ),
            (
                migrating("a", "b"),
                ShardingEventKind::MigrationFailed,
                stable("a"),
                Some(s("a")),
            ),
        ];
        for (state, event, next, release_to) in cases {
            let t = state
                .apply(&event)
                .unwrap_or_else(|e| panic!("{state} + {event}: {e}"));
            assert_eq!(t.placement, next, "{state} + {event}");
            assert_eq!(t.release_to, release_to, "{state} + {event}");
        }
    }

    #[test]
    fn every_illegal_pair_is_refused_naming_the_state() {
        let cases = [
            (Placement::Unknown, started("a", "b")),
            (Placement::Unknown, succeeded("a")),
            (Placement::Unknown, ShardingEventKind::MigrationFailed),
            (stable("a"), succeeded("a")),
            (stable("a"), ShardingEventKind::MigrationFailed),
            (migrating("a", "b"), assigned("c")),
            (migrating("a", "b"), started("b", "c")),
        ];
        for (state, event) in cases {
            let err = state.apply(&event).unwrap_err();
            assert!(
                matches!(err, TransitionError::NotAllowed { .. }),
                "{state} + {event}: {err:?}"
            );
            assert_eq!(err.state(), &state);
            let message = err.to_string();
            assert!(message.contains(&state.to_string()), "{message}");
            assert!(message.contains(event.name()), "{message}");
        }
        let err = migrating("a", "b").apply(&assigned("c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "assigned(c) is not allowed while the customer is migrating(a→b); allowed: migration_succeeded, migration_failed"
        );
    }

    #[test]
    fn events_must_agree_with_the_state() {
        let err = stable("a").apply(&started("c", "b")).unwrap_err();
        assert!(matches!(err, TransitionError::WrongSource { .. }));
        assert_eq!(
            err.to_string(),
            "migration_started(c→b) does not match: the customer is stable(a), so a migration must start from shard a"
        );

        let err = stable("a").apply(&started("a", "a")).unwrap_err();
        assert!(matches!(err, TransitionError::SameShard { .. }), "{err}");

        let err = migrating("a", "b").apply(&succeeded("a")).unwrap_err();
        assert!(matches!(err, TransitionError::WrongTarget { .. }));
        assert!(
            err.to_string().contains("only migration_succeeded(b)"),
            "{err}"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(ShardId::parse("shard_7-eu").is_ok());
        assert!(ShardId::parse("x".repeat(32)).is_ok());
        for bad in ["", "a.b", "a b", "é", &"x".repeat(33)] {
            let err = ShardId::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("shard id"), "{err}");
        }
        assert!(CustomerId::parse("c-1001@acme").is_ok());
        assert!(CustomerId::parse("has space").is_err());
        assert!(CustomerId::parse("").is_err());
        assert!(serde_json::from_str::<ShardId>("\"a/b\"").is_err());
    }

    #[test]
    fn events_and_placements_serialise_with_tags() {
        let event = ShardingEvent {
            id: ShardingEventId::parse("se-1").unwrap(),
            customer: CustomerId::parse("c-1").unwrap(),
            kind: started("a", "b"),
            occurred_at: Timestamp(5),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "se-1", "customer": "c-1", "kind": "migration_started", "from": "a", "to": "b", "occurred_at": 5})
        );
        assert_eq!(
            serde_json::from_value::<ShardingEvent>(json).unwrap(),
            event
        );

        let failed: ShardingEvent = serde_json::from_str(
            r#"{"id": "se-2", "customer": "c-1", "kind": "migration_failed", "occurred_at": 6}"#,
        )
        .unwrap();
        assert_eq!(failed.kind, ShardingEventKind::MigrationFailed);

        let p = migrating("a", "b");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "migrating", "from": "a", "to": "b"})
        );
        assert_eq!(serde_json::from_value::<Placement>(json).unwrap(), p);
        assert_eq!(Placement::default(), Placement::Unknown);
        assert_eq!(stable("a").shard(), Some(&s("a")));
        assert_eq!(migrating("a", "b").shard(), None);
    }
}
