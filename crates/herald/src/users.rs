//! `herald users`: accounts for the web UI, and the demo's account.

use std::io::Read;

use anyhow::{bail, Context};
use clap::Subcommand;
use herald_core::catalog::{EmailAddress, TimeZone};
use herald_store::users::{NewUser, UserRole, MAX_PASSWORD_BYTES};
use herald_store::{Store, StoreError};

use crate::app::Backends;
use crate::config::Config;

/// The demo's web UI account: an admin, so every page can be tried.
pub const DEMO_EMAIL: &str = "demo@example.com";
pub const DEMO_TIME_ZONE: &str = "Europe/Paris";
/// Characters of a generated password (about 95 bits).
const GENERATED_PASSWORD_CHARS: usize = 16;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a web UI account. The password is read from stdin with
    /// --password-stdin; otherwise one is generated and printed once.
    Create {
        #[arg(long)]
        email: String,
        /// admin (everything), marketer (alerts, catalog, templates) or viewer (read-only).
        #[arg(long, value_parser = parse_role)]
        role: UserRole,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        /// IANA zone the UI shows and reads times in, e.g. Europe/Paris (default UTC).
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// List web UI accounts.
    List,
    /// Replace an account's password and end its sessions.
    SetPassword {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn parse_role(text: &str) -> Result<UserRole, String> {
    text.parse()
}

pub async fn run(command: &UsersCommand, config: &Config) -> anyhow::Result<()> {
    let backends = Backends::open(config)
        .await
        .context("cannot open the store")?;
    let result = run_on(command, &backends.store).await;
    backends.close().await;
    result
}

async fn run_on(command: &UsersCommand, store: &Store) -> anyhow::Result<()> {
    let users = store.users();
    match command {
        UsersCommand::Create {
            email,
            role,
            password_stdin,
            time_zone,
        } => {
            let (password, generated) = password(*password_stdin)?;
            let new = NewUser {
                email: EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?,
                role: *role,
                password,
                time_zone: time_zone
                    .as_deref()
                    .map(TimeZone::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--time-zone: {e}"))?,
            };
            let user = users.create(&new).await.map_err(describe)?;
            eprintln!("created {} user {}", user.role, user.email);
            if generated {
                eprintln!("its password, shown only now:");
                println!("{}", new.password);
            }
        }
        UsersCommand::List => {
            println!("{:<40}  {:<9}  {:<20}", "EMAIL", "ROLE", "TIME ZONE");
            for user in users.list().await? {
                println!(
                    "{:<40}  {:<9}  {:<20}",
                    user.email,
                    user.role.as_str(),
                    user.time_zone.as_deref().unwrap_or("UTC")
                );
            }
        }
        UsersCommand::SetPassword {
            email,
            password_stdin,
        } => {
            let (password, generated) = password(*password_stdin)?;
            let user = users
                .set_password(email, &password)
                .await
                .map_err(describe)?;
            eprintln!(
                "changed the password of {}; its sessions have ended",
                user.email
            );
            if generated {
                println!("{password}");
            }
        }
    }
    Ok(())
}

/// A store refusal phrased for the command line.
fn describe(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::InvalidInput { field, message } => anyhow::anyhow!("{field} {message}"),
        other => other.into(),
    }
}

/// The password from stdin (its first line), or a generated one.
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((generate_password(), true));
    }
    let mut input = String::new();
    std::io::stdin()
        .take(MAX_PASSWORD_BYTES as u64 + 2)
        .read_to_string(&mut input)
        .context("cannot read the password from stdin")?;
    let line = input.lines().next().unwrap_or_default().to_owned();
    if line.is_empty() {
        bail!("--password-stdin: no password on standard input");
    }
    Ok((line, false))
}

fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..GENERATED_PASSWORD_CHARS)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Makes sure the demo account exists with a fresh password, and returns
/// that password.
pub async fn demo_account(store: &Store) -> anyhow::Result<String> {
    let password = generate_password();
    let users = store.users();
    if users.by_email(DEMO_EMAIL).await?.is_some() {
        users.set_password(DEMO_EMAIL, &password).await?;
    } else {
        users
            .create(&NewUser {
                email: EmailAddress::parse(DEMO_EMAIL)?,
                role: UserRole::Admin,
                password: password.clone(),
                time_zone: Some(TimeZone::parse(DEMO_TIME_ZONE)?),
            })
            .await?;
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_enough_and_differ() {
        let a = generate_password();
        assert_eq!(a.chars().count(), GENERATED_PASSWORD_CHARS);
        assert!(a.chars().count() >= herald_store::users::MIN_PASSWORD_CHARS);
        assert_ne!(a, generate_password());
    }

    #[test]
    fn roles_are_named_on_the_command_line() {
        assert_eq!(parse_role("viewer"), Ok(UserRole::Viewer));
        assert!(parse_role("owner").unwrap_err().contains("admin"));
    }
}
