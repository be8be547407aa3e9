//! Operator commands: each opens the backends from configuration, does one
//! thing, and prints the result for a person (or JSON where asked).

use std::time::Duration;

use anyhow::{bail, Context};
use herald_bus::bench::{run_bus_bench_on, BenchBackend, BusBenchOptions};
use herald_bus::{Bus, OutgoingMessage, QueueConfig};
use herald_core::api_key::{ApiKeyId, ApiKeyName, Scope, Scopes};
use herald_core::QueueName;
use herald_store::members::import::{
    self as importer, ImportError, ImportFormat, ImportKind, ImportOptions, ImportReport,
};
use herald_store::Store;
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::Backends;
use crate::cli::{
    BenchCommand, ConfigCommand, ImportArgs, ImportFileFormat, ImportTarget, KeysCommand,
    QueuesCommand,
};
use crate::config::{Config, DEFAULT_CONFIG};

pub fn config(command: &ConfigCommand, config: &Config) {
    match command {
        ConfigCommand::Show => print!("{}", config.to_masked_toml()),
        ConfigCommand::Defaults => print!("{DEFAULT_CONFIG}"),
    }
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let backends = Backends::open(config)
        .await
        .context("cannot open the store")?;
    println!(
        "migrations applied to the {} store",
        backends.store.backend()
    );
    backends.close().await;
    Ok(())
}

/// The settings a queue created by an operator gets from configuration.
pub fn queue_config(config: &Config, max_receives: Option<u32>) -> QueueConfig {
    QueueConfig {
        max_receives: max_receives.unwrap_or(config.bus.max_receives),
        dead_letter_queue: None,
        dedup_window: config.bus.dedup_window,
        max_body_bytes: config.bus.max_body_bytes,
    }
}

fn queue_name(raw: &str) -> anyhow::Result<QueueName> {
    QueueName::parse(raw).map_err(anyhow::Error::from)
}

pub async fn queues(command: &QueuesCommand, config: &Config) -> anyhow::Result<()> {
    let backends = Backends::open(config)
        .await
        .context("cannot open the backends")?;
    let result = run_queues(command, config, backends.bus.as_ref()).await;
    backends.close().await;
    result
}

async fn run_queues(command: &QueuesCommand, config: &Config, bus: &dyn Bus) -> anyhow::Result<()> {
    match command {
        QueuesCommand::List { json } => {
            let mut rows = Vec::new();
            for queue in bus.list_queues().await? {
                let stats = bus.stats(&queue.name).await?;
                rows.push((queue.name, stats));
            }
            if *json {
                let value: Vec<_> = rows
                    .iter()
                    .map(|(name, stats)| serde_json::json!({"queue": name, "stats": stats}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no queues yet");
                return Ok(());
            }
            let width = rows
                .iter()
                .map(|(n, _)| n.as_str().len())
                .max()
                .unwrap_or(5)
                .max(5);
            println!(
                "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}",
                "QUEUE", "VISIBLE", "IN FLIGHT", "DELAYED", "DLQ", "OLDEST"
            );
            for (name, s) in rows {
                println!(
                    "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}",
                    name.as_str(),
                    s.visible,
                    s.in_flight,
                    s.delayed,
                    s.dead_lettered,
                    s.oldest_age.map(format_age).unwrap_or_else(|| "-".into())
                );
            }
        }
        QueuesCommand::Stats { queue } => {
            let stats = bus.stats(&queue_name(queue)?).await?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
        QueuesCommand::Peek { queue, max } => {
            for message in bus.peek(&queue_name(queue)?, *max).await? {
                println!("{}", serde_json::to_string(&message)?);
            }
        }
        QueuesCommand::Purge { queue, yes } => {
            if !yes {
                bail!("purging {queue} deletes every message in it; add --yes to confirm");
            }
            let purged = bus.purge(&queue_name(queue)?).await?;
            println!("purged {purged} messages from {queue}");
        }
        QueuesCommand::Redrive {
            dead_letter,
            to,
            limit,
        } => {
            let to = match to {
                Some(to) => to.clone(),
                None => match dead_letter.strip_suffix(".dlq") {
                    Some(source) => source.to_owned(),
                    None => {
                        bail!("{dead_letter} does not end in .dlq; name the destination with --to")
                    }
                },
            };
            let moved = bus
                .redrive(&queue_name(dead_letter)?, &queue_name(&to)?, *limit)
                .await?;
            println!("moved {moved} messages from {dead_letter} to {to}");
        }
        QueuesCommand::Create {
            queue,
            max_receives,
        } => {
            bus.ensure_queue(&queue_name(queue)?, queue_config(config, *max_receives))
                .await?;
            println!("queue {queue} is ready");
        }
        QueuesCommand::Send {
            queue,
            body,
            attributes,
        } => {
            let mut message = OutgoingMessage::new(body.clone().into_bytes());
            for attribute in attributes {
                let Some((key, value)) = attribute.split_once('=') else {
                    bail!("attribute {attribute:?} is not KEY=VALUE");
                };
                message = message.attribute(key, value);
            }
            let id = bus.send(&queue_name(queue)?, message).await?;
            println!("{id}");
        }
    }
    Ok(())
}

pub async fn keys(command: &KeysCommand, config: &Config) -> anyhow::Result<()> {
    let backends = Backends::open(config)
        .await
        .context("cannot open the store")?;
    let keys = backends.store.api_keys();
    let result = async {
        match command {
            KeysCommand::Create { name, scopes } => {
                let name = ApiKeyName::parse(name.as_str())?;
                let scopes = Scopes::new(
                    scopes
                        .iter()
                        .map(|s| s.trim().parse())
                        .collect::<Result<Vec<_>, _>>()?,
                )?;
                let (key, token) = keys.create(&name, &scopes).await?;
                eprintln!(
                    "created API key {} ({}) with scopes {}",
                    key.id.as_str(),
                    key.name.as_str(),
                    key.scopes
                );
                eprintln!("this is the only time the key is shown; store it now:");
                println!("{}", token.expose());
            }
            KeysCommand::List => {
                println!(
                    "{:<24}  {:<24}  {:<30}  {:<8}",
                    "ID", "NAME", "SCOPES", "STATE"
                );
                for key in keys.list().await? {
                    let state = if key.is_revoked() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<24}  {:<24}  {:<30}  {:<8}",
                        key.id.as_str(),
                        key.name.as_str(),
                        key.scopes.to_string(),
                        state
                    );
                }
            }
            KeysCommand::Revoke { id } => {
                let key = keys.revoke(&ApiKeyId::parse(id.as_str())?).await?;
                println!(
                    "revoked API key {} ({})",
                    key.id.as_str(),
                    key.name.as_str()
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    backends.close().await;
    result
}

pub async fn bench(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Bus(args) => {
            let options = BusBenchOptions {
                dir: args.dir.clone(),
                messages: args.messages,
                batch: args.batch,
                consumers: args.consumers,
                body_bytes: args.body_bytes,
            };
            eprintln!(
                "raw SQL reference first, then Herald: {} messages in batches of {}, consumed by {} consumers",
                options.messages, options.batch, options.consumers
            );
            let backend = match &args.postgres {
                Some(url) => BenchBackend::Postgres { url: url.clone() },
                None => BenchBackend::Embedded,
            };
            let report = run_bus_bench_on(&backend, options).await?;
            println!("{report}");
        }
        BenchCommand::Audience(args) if args.phase.as_deref() == Some("build") => {
            let (Some(db), Some(alert_id)) = (args.db.clone(), args.alert.clone()) else {
                bail!("--phase build needs --db and --alert");
            };
            let measurement = crate::bench::run_build_phase(&crate::bench::BuildPhaseOptions {
                db,
                alert_id,
                batch_size: args.batch_size,
            })
            .await?;
            println!("{}", serde_json::to_string(&measurement)?);
        }
        BenchCommand::Audience(args) => {
            if let Some(phase) = &args.phase {
                bail!("unknown --phase {phase:?}");
            }
            let options = crate::bench::AudienceBenchOptions {
                dir: args.dir.clone(),
                members: args.members,
                brands: args.brands,
                affinities_per_member: args.affinities_per_member,
                alert_brands: args.alert_brands,
                threshold: args.threshold,
                batch_size: args.batch_size,
                build_process: crate::bench::BuildProcess::Child {
                    program: std::env::current_exe()?,
                    args: ["bench", "audience", "--phase", "build"]
                        .map(String::from)
                        .to_vec(),
                },
            };
            let report = crate::bench::run_audience_bench(options).await?;
            println!("{report}");
        }
        BenchCommand::Routing(args) => {
            let options = crate::bench::RoutingBenchOptions {
                dir: args.dir.clone(),
                events: args.events,
                customers: args.customers,
                shards: args.shards,
                migrating_percent: args.migrating_percent,
                batch: args.batch,
                held: args.held,
            };
            let report = crate::bench::run_routing_bench(options).await?;
            println!("{report}");
        }
        BenchCommand::Delivery(args) => {
            let options = crate::bench::DeliveryBenchOptions {
                dir: args.dir.clone(),
                messages: args.messages,
                sessions: args.sessions,
                concurrency: args.concurrency,
                receive_batch: args.receive_batch,
            };
            let rounds = crate::bench::run_delivery_rounds(options, args.rounds).await?;
            print!("{rounds}");
        }
        BenchCommand::Ingest(args) => {
            let private_key_pem =
                match &args.private_key {
                    Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read the signing key {}", path.display())
                    })?),
                    None => None,
                };
            let options = crate::bench::IngestBenchOptions {
                dir: args.dir.clone(),
                batches: args.batches,
                batch_size: args.batch_size,
                connections: args.connections,
                private_key_pem,
            };
            let report = crate::bench::run_ingest_bench(options).await?;
            println!("{report}");
        }
    }
    Ok(())
}

/// `herald import`: streams the file through the store's importer with a
/// progress bar on stderr. Bad lines are printed; without `--skip-invalid`
/// they make the command fail (exit 1) and nothing is stored.
pub async fn import(args: &ImportArgs, config: &Config) -> anyhow::Result<()> {
    let kind = match args.kind {
        ImportTarget::Members => ImportKind::Members,
        ImportTarget::Affinities => ImportKind::Affinities,
        ImportTarget::Subscriptions => ImportKind::Subscriptions,
    };
    let format = match args.format {
        Some(ImportFileFormat::Ndjson) => ImportFormat::Ndjson,
        Some(ImportFileFormat::Csv) => ImportFormat::Csv,
        None => args
            .file
            .extension()
            .and_then(|e| e.to_str())
            .and_then(ImportFormat::from_extension)
            .with_context(|| {
                format!(
                    "cannot tell the format of {} from its extension; give --format ndjson or --format csv",
                    args.file.display()
                )
            })?,
    };
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let backends = Backends::open(config)
        .await
        .context("cannot open the store")?;
    let mut options = ImportOptions::new(kind, format);
    options.skip_invalid = args.skip_invalid;
    // Spool beside the database rather than in a temporary folder that
    // may live in memory.
    options.spool_dir = Some(config.store.data_dir.clone()).filter(|dir| dir.is_dir());

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = import_file(&backends.store, file, &options, bar.clone()).await;
    bar.finish_and_clear();
    backends.close().await;
    let report = result.with_context(|| format!("cannot import {}", args.file.display()))?;

    for error in &report.invalid {
        eprintln!("{}: {error}", args.file.display());
    }
    if report.truncated_errors > 0 {
        eprintln!(
            "{}: ... and {} more invalid lines",
            args.file.display(),
            report.truncated_errors
        );
    }
    let invalid = report.invalid_rows();
    if invalid > 0 && !args.skip_invalid {
        bail!(
            "{invalid} of {} lines are invalid; nothing was imported (fix them, or pass --skip-invalid to import the rest)",
            report.rows
        );
    }
    println!(
        "imported {} {kind} from {} ({} lines, {invalid} invalid{})",
        report.applied,
        args.file.display(),
        report.rows,
        if invalid > 0 { " and skipped" } else { "" }
    );
    Ok(())
}

async fn import_file(
    store: &herald_store::Store,
    file: tokio::fs::File,
    options: &ImportOptions,
    bar: ProgressBar,
) -> Result<ImportReport, ImportError> {
    let applying = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rows stored",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    importer::import(store, file, options, move |progress| {
        if progress.applied == 0 {
            bar.set_message(format!(
                "checked {} lines, {} invalid",
                progress.validated, progress.invalid
            ));
        } else {
            if bar.length().is_none() {
                bar.set_style(applying.clone());
                bar.set_length(progress.validated - progress.invalid);
            }
            bar.set_position(progress.applied);
        }
    })
    .await
}

fn format_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Seeds the demo data and says what to look at; with `with_key`, also
/// creates a marketing API key to explore the API with.
pub async fn demo_seed(
    config: &Config,
    store: &Store,
    args: &crate::cli::DemoArgs,
    with_key: bool,
) -> anyhow::Result<()> {
    eprintln!("Loading demo data ({} members)...", args.members);
    let summary = crate::demo::seed(store, args.members, args.send_in).await?;
    let send_at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(summary.send_at.millis().max(0) as u64),
    );
    println!(
        "Demo data: {} brands, {} members, {} affinities ({} unsubscribed, {} suppressed).",
        summary.brands,
        summary.members,
        summary.affinities,
        summary.unsubscribed,
        summary.suppressed
    );
    println!(
        "Brand alert {} is scheduled for {send_at}.",
        summary.alert_id
    );
    let outbox = config
        .transports()
        .get(&config.mailer.default_transport)
        .and_then(|t| match t {
            herald_mail::TransportConfig::Outbox(outbox) => Some(outbox.dir.clone()),
            _ => None,
        });
    if let Some(dir) = outbox {
        println!("Its emails will appear as .eml files in {}", dir.display());
    }
    if with_key {
        let name = ApiKeyName::parse(format!("demo-{}", summary.send_at.millis()))?;
        let (_, token) = store
            .api_keys()
            .create(&name, &Scopes::new([Scope::Marketing])?)
            .await?;
        println!(
            "API key for the demo (marketing scope, shown once): {}",
            token.expose()
        );
        println!(
            "  try: curl -H 'Authorization: Bearer {}' http://{}/api/brand-alerts/{}/stats",
            token.expose(),
            config.server.listen,
            summary.alert_id
        );
        let password = crate::users::demo_account(store).await?;
        println!(
            "Web UI: http://{}/ui  sign in as {} with the password {password}",
            config.server.listen,
            crate::users::DEMO_EMAIL
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(format_age(Duration::from_secs(5)), "5s");
        assert_eq!(format_age(Duration::from_secs(125)), "2m5s");
        assert_eq!(format_age(Duration::from_secs(7_380)), "2h3m");
    }
}
