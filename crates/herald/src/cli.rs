//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;
use crate::roles::Role;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Triggered marketing email and the event traffic that comes back from it",
    long_about = "Herald sends brand alert emails and routes the provider events that come back.\n\
        With no configuration it runs all-in-one on ./herald-data/herald.db, listening on 127.0.0.1:8080.",
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file (default: ./herald.toml when it exists).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "HERALD_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log format; overrides log.format.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server and the role workers; stop with Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Apply the store's database migrations.
    Migrate,
    /// Inspect and manage queues.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sharding events, customer placements and migration holds.
    #[command(subcommand)]
    Shards(crate::shards::ShardsCommand),
    /// Measure Herald against a reference doing the same work in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Bulk-load members, affinities or subscriptions from an NDJSON or CSV file.
    Import(ImportArgs),
    /// Demo data: a catalog, members with affinities, and an alert due soon.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Manage web UI accounts.
    #[command(subcommand)]
    Users(crate::users::UsersCommand),
    /// The scheduler's processes and runs.
    #[command(subcommand)]
    Jobs(crate::jobs::JobsCommand),
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Load the demo catalog and members and schedule a demo brand alert.
    Seed(DemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many demo members to create.
    #[arg(long, default_value_t = 3000)]
    pub members: usize,
    /// How long from now the demo alert is sent, e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub send_in: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Roles to run in this process, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "ROLES")]
    pub roles: Vec<Role>,
    /// Address to listen on; overrides server.listen (0.0.0.0:8080 opens it to the network).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Load demo data first (as `herald demo seed` does) and print an API key
    /// to explore it with; the demo alert is sent a minute later.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Every queue with its counts.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts for one queue.
    Stats { queue: String },
    /// Show the oldest messages of a queue without receiving them.
    Peek {
        queue: String,
        /// How many messages.
        #[arg(long, default_value_t = 10)]
        max: usize,
    },
    /// Delete every message of a queue.
    Purge {
        queue: String,
        /// Confirm; purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Move dead-lettered messages back, oldest first.
    Redrive {
        /// The dead-letter queue, e.g. brand-alert-emails.dlq.
        dead_letter: String,
        /// Destination (default: the dead-letter queue's name without ".dlq").
        #[arg(long)]
        to: Option<String>,
        /// Move at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Create a queue (or update its settings) with its dead-letter queue.
    Create {
        queue: String,
        /// Deliveries before a message moves to the dead-letter queue (0: never).
        #[arg(long)]
        max_receives: Option<u32>,
    },
    /// Send one message (the body as given) to a queue.
    Send {
        queue: String,
        body: String,
        /// Attributes as key=value; repeatable.
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE")]
        attributes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration in force, secrets masked.
    Show,
    /// Print the commented default configuration file.
    Defaults,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its secret is printed once.
    Create {
        /// A label, e.g. the team or the shard using it.
        #[arg(long)]
        name: String,
        /// Scopes: admin, marketing, read-only, or queues:<prefix>; repeatable or comma-separated.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List API keys (never their secrets).
    List,
    /// Revoke an API key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Send N messages in batches, then receive and ack them with K consumers,
    /// on the embedded (or PostgreSQL) bus; the reference does the same row
    /// work with raw SQL.
    Bus(BusBenchArgs),
    /// Build a large alert's audience (default 1,000,000 members, 5,000,000
    /// affinities) on the embedded store and bus; the reference inserts the
    /// same number of queue rows with raw SQL. Reports peak memory too.
    Audience(AudienceBenchArgs),
    /// Send N rendered alert emails through the mailer over SMTP into
    /// Postfix's smtp-sink; the reference is Postfix's smtp-source sending the
    /// same number of messages of the same size over as many sessions.
    Delivery(DeliveryBenchArgs),
    /// Route events from the email-events topic to shard queues (default
    /// 100,000 events, 10,000 customers over 4 shards, 1% migrating) on the
    /// embedded store and bus; the reference does the same row work with raw
    /// SQLite. Then times the release of 1,000 held events.
    Routing(RoutingBenchArgs),
    /// Post signed SendGrid batches over concurrent connections to Herald's
    /// webhook receiver on a fresh embedded store; the reference is a bare
    /// HTTP handler that reads the body and answers 200, under the same load.
    Ingest(IngestBenchArgs),
}

#[derive(Debug, Args)]
pub struct IngestBenchArgs {
    /// Requests (batches) posted to each side.
    #[arg(long, default_value_t = 600)]
    pub batches: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// PKCS#8 PEM key to sign with (e.g. the SendGrid fixture's
    /// private_key.pem); a new key is generated when absent.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// Folder for the run's database (default: the system's temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AudienceBenchArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub members: u64,
    #[arg(long, default_value_t = 50)]
    pub brands: u32,
    #[arg(long, default_value_t = 5)]
    pub affinities_per_member: u32,
    /// Brands the alert is over.
    #[arg(long, default_value_t = 3)]
    pub alert_brands: u32,
    #[arg(long, default_value_t = 0.3)]
    pub threshold: f64,
    /// Members per audience batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u32,
    /// Folder for the generated database (default: the system's temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Internal: the build measured in a child process, so its peak memory
    /// is its own and not the data generator's.
    #[arg(long, hide = true)]
    pub phase: Option<String>,
    #[arg(long, hide = true)]
    pub db: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub alert: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeliveryBenchArgs {
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// SMTP sessions: Herald's pool size and smtp-source's -s.
    #[arg(long, default_value_t = 16)]
    pub sessions: u32,
    /// The mailer's concurrency (default: 8 per session, each session
    /// pipelining its share).
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub receive_batch: usize,
    /// Rounds of Herald then smtp-source, each on a fresh store; the
    /// ratio reported is the median of the rounds'.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Folder for the run's database (default: the system's temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RoutingBenchArgs {
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    #[arg(long, default_value_t = 10_000)]
    pub customers: u64,
    #[arg(long, default_value_t = 4)]
    pub shards: u64,
    /// Percent of customers migrating while the events are routed.
    #[arg(long, default_value_t = 1.0)]
    pub migrating_percent: f64,
    /// Events per worker batch (routing.batch_size).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Events held for the release measurement.
    #[arg(long, default_value_t = 1_000)]
    pub held: u64,
    /// Folder for the run's databases (default: the system's temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BusBenchArgs {
    /// Messages to send and receive.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Messages per send batch and per receive.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Bytes in every message body.
    #[arg(long, default_value_t = 128)]
    pub body_bytes: usize,
    /// Folder for the benchmark's databases (default: the system's temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run on a PostgreSQL server instead of the embedded SQLite bus (a
    /// fresh schema, dropped afterwards); the reference is raw PostgreSQL.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Columns (CSV header) or fields (NDJSON):\n  \
    members: id, email; optional name, first_name, locale, time_zone, status, customer_id\n  \
    affinities: member_id, brand_id, score (0.0-1.0)\n  \
    subscriptions: member_id, subscribed; optional email_type (brand_alerts), source (import)\n\
    A bad line stores nothing unless --skip-invalid is given; a later line for the same key wins.")]
pub struct ImportArgs {
    /// What the file holds.
    #[arg(value_enum)]
    pub kind: ImportTarget,
    /// The file to import.
    pub file: PathBuf,
    /// File format (default: from the extension: .ndjson or .jsonl, .csv).
    #[arg(long, value_enum)]
    pub format: Option<ImportFileFormat>,
    /// Store the good lines even when some are bad (they are listed either way).
    #[arg(long)]
    pub skip_invalid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportTarget {
    Members,
    Affinities,
    Subscriptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFileFormat {
    Ndjson,
    Csv,
}
