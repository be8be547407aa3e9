//! Integration tests of webhook verification and parsing against the shared
//! provider fixtures.

mod fixtures;
mod sendgrid;
mod sparkpost;
mod standard_webhooks;
