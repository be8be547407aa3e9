//! The roles one `herald serve` process can play.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// REST API and its OpenAPI document.
    Api,
    /// Server-rendered UI for marketing and operators.
    Web,
    /// Provider webhook receivers.
    Ingest,
    /// Routing of email events to shard queues.
    Router,
    /// Builds brand alert audiences.
    Audience,
    /// Renders and sends brand alert emails.
    Mailer,
    /// Runs process definitions; one active instance at a time.
    Scheduler,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Api,
        Role::Web,
        Role::Ingest,
        Role::Router,
        Role::Audience,
        Role::Mailer,
        Role::Scheduler,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Web => "web",
            Role::Ingest => "ingest",
            Role::Router => "router",
            Role::Audience => "audience",
            Role::Mailer => "mailer",
            Role::Scheduler => "scheduler",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {s:?}; known roles: {}", known.join(", "))
            })
    }
}

/// The set of roles a process runs; every role when none is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    pub fn all() -> Self {
        Roles(Role::ALL.into_iter().collect())
    }

    pub fn contains(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    pub fn from_list(roles: &[Role]) -> Self {
        if roles.is_empty() {
            Self::all()
        } else {
            Roles(roles.iter().copied().collect())
        }
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|r| r.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_roles_means_all() {
        assert_eq!(Roles::from_list(&[]), Roles::all());
        assert_eq!(
            Roles::all().to_string(),
            "api,web,ingest,router,audience,mailer,scheduler"
        );
    }

    #[test]
    fn parsing_names_the_known_roles() {
        assert_eq!("mailer".parse::<Role>().unwrap(), Role::Mailer);
        let err = "mailman".parse::<Role>().unwrap_err();
        assert!(
            err.contains("mailman") && err.contains("scheduler"),
            "{err}"
        );
    }
}
