//! herald-mail's integration tests: real SMTP (aiosmtpd), local stand-ins
//! for the SendGrid and SparkPost APIs, and the outbox folder.

mod outbox;
mod provider;
mod sendgrid;
mod smtp;
mod sparkpost;
mod support;
