//! `herald shards`: sharding events, placements and holds, straight on the
//! store (as `herald keys` does). An event recorded here follows the same
//! rules as `POST /api/sharding-events`; held events it releases leave at
//! the router's next sweep (`routing.release_interval`), since this process
//! runs no releaser to wake.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use herald_core::sharding::{CustomerId, ShardId, ShardingEventId};
use herald_core::Timestamp;
use herald_router::sharding::{ShardingEventInput, ShardingEventKindName};
use herald_store::page::PageRequest;
use herald_store::sharding::RecordedEvent;

use crate::app::Backends;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ShardsCommand {
    /// Record a sharding event (the state machine decides; an illegal
    /// transition is refused naming the customer's state).
    Event(EventArgs),
    /// Where a customer's events go now.
    Placement { customer: String },
    /// A customer's sharding events, oldest first.
    History {
        customer: String,
        /// Show at most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Every shard a sharding event has named.
    List,
    /// Events held for migrating customers, per route and customer.
    Holds {
        /// Show at most this many holds.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventKind {
    Assigned,
    MigrationStarted,
    MigrationSucceeded,
    MigrationFailed,
}

#[derive(Debug, Args)]
pub struct EventArgs {
    #[arg(value_enum)]
    pub kind: EventKind,
    #[arg(long)]
    pub customer: String,
    /// assigned, migration-succeeded: the shard.
    #[arg(long)]
    pub shard: Option<String>,
    /// migration-started: the shard the customer leaves.
    #[arg(long)]
    pub from: Option<String>,
    /// migration-started: the shard the customer moves to.
    #[arg(long)]
    pub to: Option<String>,
    /// The event's id (default: a new one); sending an id again is a no-op.
    #[arg(long)]
    pub id: Option<String>,
    /// When it happened, RFC 3339 (default: now).
    #[arg(long)]
    pub at: Option<String>,
}

pub async fn run(command: &ShardsCommand, config: &Config) -> anyhow::Result<()> {
    let backends = Backends::open(config)
        .await
        .context("cannot open the store")?;
    let result = dispatch(command, &backends).await;
    backends.close().await;
    result
}

async fn dispatch(command: &ShardsCommand, backends: &Backends) -> anyhow::Result<()> {
    let store = &backends.store;
    match command {
        ShardsCommand::Event(args) => {
            let event = event_of(args)?;
            let recorded = store.sharding().record(&[event]).await?;
            for answer in recorded {
                let note = if answer.duplicate {
                    " (already recorded: nothing changed)"
                } else {
                    ""
                };
                println!("{}{note}", describe(&answer.record));
            }
        }
        ShardsCommand::Placement { customer } => {
            let customer = CustomerId::parse(customer.as_str())?;
            let placement = store.sharding().placement(&customer).await?;
            match (placement.last_event_id, placement.last_occurred_at) {
                (Some(id), Some(at)) => println!(
                    "{customer}: {} (since event {id} at {})",
                    placement.placement,
                    time(at)
                ),
                _ => println!("{customer}: {}", placement.placement),
            }
        }
        ShardsCommand::History { customer, limit } => {
            let customer = CustomerId::parse(customer.as_str())?;
            let page = store
                .sharding()
                .history(&customer, &PageRequest::first(*limit))
                .await?;
            if page.items.is_empty() {
                println!("no sharding events for {customer}");
            }
            for record in &page.items {
                println!("{}", describe(record));
            }
            if page.next_cursor.is_some() {
                println!("... more; raise --limit to see them");
            }
        }
        ShardsCommand::List => {
            for shard in store.sharding().shards().await? {
                println!("{shard}");
            }
        }
        ShardsCommand::Holds { limit } => {
            let holds = store.holds().customers(*limit).await?;
            if holds.is_empty() {
                println!("no events are held");
                return Ok(());
            }
            println!(
                "{:<16}  {:<24}  {:>8}  {:<24}  RELEASE TO",
                "ROUTE", "CUSTOMER", "EVENTS", "OLDEST"
            );
            for hold in holds {
                println!(
                    "{:<16}  {:<24}  {:>8}  {:<24}  {}",
                    hold.route,
                    hold.customer.as_str(),
                    hold.events,
                    time(hold.oldest_held_at),
                    hold.release_to
                        .map(|s| format!("{s} (at the next sweep)"))
                        .unwrap_or_else(|| "- (migrating)".to_owned())
                );
            }
        }
    }
    Ok(())
}

fn event_of(args: &EventArgs) -> anyhow::Result<herald_core::sharding::ShardingEvent> {
    let shard = |value: &Option<String>| value.as_deref().map(ShardId::parse).transpose();
    let id = match &args.id {
        Some(id) => ShardingEventId::parse(id.as_str())?,
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            ShardingEventId::parse(format!("cli-{nanos}-{}", std::process::id()))?
        }
    };
    let occurred_at = match &args.at {
        Some(at) => at.clone(),
        None => humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let input = ShardingEventInput {
        id,
        customer: CustomerId::parse(args.customer.as_str())?,
        kind: match args.kind {
            EventKind::Assigned => ShardingEventKindName::Assigned,
            EventKind::MigrationStarted => ShardingEventKindName::MigrationStarted,
            EventKind::MigrationSucceeded => ShardingEventKindName::MigrationSucceeded,
            EventKind::MigrationFailed => ShardingEventKindName::MigrationFailed,
        },
        shard: shard(&args.shard)?,
        from: shard(&args.from)?,
        to: shard(&args.to)?,
        occurred_at,
    };
    match input.into_event() {
        Ok(event) => Ok(event),
        Err(e) => {
            let flag = if e.field == "occurred_at" {
                "at"
            } else {
                e.field
            };
            bail!("--{flag}: {}", e.message)
        }
    }
}

fn describe(record: &RecordedEvent) -> String {
    let release = record
        .release_to
        .as_ref()
        .map(|shard| format!("; held events go to {shard}"))
        .unwrap_or_default();
    format!(
        "#{} {} {} of {} at {}: {} → {}{release}",
        record.seq,
        record.event.id,
        record.event.kind,
        record.event.customer,
        time(record.event.occurred_at),
        record.outcome.as_str(),
        record.placement,
    )
}

fn time(t: Timestamp) -> String {
    let millis = u64::try_from(t.millis()).unwrap_or_default();
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}
