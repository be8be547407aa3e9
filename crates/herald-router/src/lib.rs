//! The inbound half of Herald: webhook ingest and event routing.
#![forbid(unsafe_code)]

pub mod verify;
