//! Integration tests: each starts the real app on a random port with a fresh
//! database, exactly as `herald serve` wires it.

mod alerts_api;
mod cli;
mod delivery;
mod helpers;
mod http;
mod ingest_kill;
mod jobs;
