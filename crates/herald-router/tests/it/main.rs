//! Integration tests of webhook verification and parsing against the shared
//! provider fixtures.

#[macro_use]
mod backends;
mod fixtures;
mod ingest;
mod sendgrid;
mod sparkpost;
mod standard_webhooks;
mod subscribers;
