//! The `herald` binary's library: configuration, wiring of roles and the
//! operator commands, so tests start the app exactly as `herald serve` does.
#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod ingest;
pub mod jobs;
pub mod roles;
pub mod shards;
pub mod telemetry;
pub mod users;
