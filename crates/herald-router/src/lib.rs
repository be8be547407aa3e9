//! The inbound half of Herald: webhook ingest and event routing.
#![forbid(unsafe_code)]

pub mod ingest;
pub mod push;
pub mod routing;
pub mod sharding;
pub mod subscribers;
pub mod verify;
