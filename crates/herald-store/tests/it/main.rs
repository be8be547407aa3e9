//! The store suite: every case is written once and runs on SQLite and on
//! PostgreSQL (see `harness` for how each test gets a fresh database).

#[macro_use]
mod harness;

mod api_keys;
mod brand_alerts;
mod catalog;
mod email_events;
mod imports;
mod leases;
mod lifecycle;
mod members;
mod processes;
mod sharding;
mod users;
