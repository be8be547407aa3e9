//! `herald jobs`: the scheduler's processes and runs from the command line,
//! through the store as the API does. Output is JSON, one document per
//! command, so it can be piped to `jq`.

use anyhow::{bail, Context};
use clap::Subcommand;
use herald_store::page::PageRequest;
use herald_store::Store;
use serde::Serialize;

use crate::app::Backends;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List every process with its schedule state.
    List,
    /// Show one process's definition and state.
    Show { name: String },
    /// List a process's runs, newest first.
    Runs {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one run with its tasks and every attempt's log tail.
    RunShow { id: String },
    /// Queue a manual run of a process.
    Trigger { name: String },
    /// Stop a process's scheduled runs.
    Pause { name: String },
    /// Schedule a paused process again, from now.
    Resume { name: String },
    /// Cancel a queued or running run.
    Cancel { id: String },
}

pub async fn run(command: &JobsCommand, config: &Config) -> anyhow::Result<()> {
    let backends = Backends::open(config)
        .await
        .context("cannot open the store")?;
    let result = run_on(command, &backends.store).await;
    backends.close().await;
    result
}

/// Runs `command` on `store` and prints its JSON result.
pub async fn run_on(command: &JobsCommand, store: &Store) -> anyhow::Result<()> {
    let processes = store.processes();
    match command {
        JobsCommand::List => print(&processes.list().await?),
        JobsCommand::Show { name } => match processes.get(name).await? {
            Some(process) => print(&process),
            None => bail!("process {name:?} not found"),
        },
        JobsCommand::Runs { name, limit } => print(
            &processes
                .runs(name, PageRequest::first(*limit))
                .await?
                .items,
        ),
        JobsCommand::RunShow { id } => match processes.run(id).await? {
            Some(run) => print(&run),
            None => bail!("run {id} not found"),
        },
        JobsCommand::Trigger { name } => print(&processes.trigger(name).await?),
        JobsCommand::Pause { name } => print(&processes.set_paused(name, true).await?),
        JobsCommand::Resume { name } => print(&processes.set_paused(name, false).await?),
        JobsCommand::Cancel { id } => print(&processes.request_cancel(id).await?),
    }
}

fn print(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
