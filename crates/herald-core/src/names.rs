//! Names of queues and topics: `[A-Za-z0-9._-]{1,80}`, checked once at the
//! edge so every backend can use them as keys, subjects or file names.

use std::fmt;

/// The longest queue or topic name any backend accepts.
pub const MAX_NAME_LEN: usize = 80;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        kind: &'static str,
        name: String,
        len: usize,
    },
    #[error("{kind} name {name:?} contains {found:?}; only letters, digits, '.', '_' and '-' are allowed")]
    InvalidCharacter {
        kind: &'static str,
        name: String,
        found: char,
    },
}

fn check(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::InvalidCharacter {
            kind,
            name: name.to_owned(),
            found,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

macro_rules! bus_name {
    ($ty:ident, $kind:literal) => {
        #[doc = concat!("A valid ", $kind, " name.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check($kind, &name)?;
                Ok(Self(name))
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

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

bus_name!(QueueName, "queue");
bus_name!(TopicName, "topic");

impl QueueName {
    /// The default dead-letter queue of this queue: `<queue>.dlq`.
    pub fn default_dead_letter(&self) -> Result<QueueName, NameError> {
        QueueName::parse(format!("{}.dlq", self.0))
    }

    pub fn is_dead_letter(&self) -> bool {
        self.0.ends_with(".dlq")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "brand-alert-emails", "shard-7.email-events", "A_b.c-9"] {
            assert_eq!(QueueName::parse(ok).unwrap().as_str(), ok);
        }
        assert!(QueueName::parse("x".repeat(80)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(
            QueueName::parse(""),
            Err(NameError::Empty { kind: "queue" })
        );
        assert!(matches!(
            TopicName::parse("x".repeat(81)),
            Err(NameError::TooLong { len: 81, .. })
        ));
        for bad in ["a b", "a/b", "é", "a*", "a>b"] {
            let err = QueueName::parse(bad).unwrap_err();
            assert!(matches!(err, NameError::InvalidCharacter { .. }), "{bad}");
            assert!(err.to_string().contains("only letters"), "{err}");
        }
    }

    #[test]
    fn dead_letter_name_is_derived_and_checked() {
        let q = QueueName::parse("brand-alert-emails").unwrap();
        assert_eq!(
            q.default_dead_letter().unwrap().as_str(),
            "brand-alert-emails.dlq"
        );
        assert!(q.default_dead_letter().unwrap().is_dead_letter());
        assert!(QueueName::parse("x".repeat(78))
            .unwrap()
            .default_dead_letter()
            .is_err());
    }

    #[test]
    fn deserialising_validates() {
        let ok: QueueName = serde_json::from_str("\"jobs\"").unwrap();
        assert_eq!(ok.as_str(), "jobs");
        assert!(serde_json::from_str::<QueueName>("\"no spaces\"").is_err());
    }
}
