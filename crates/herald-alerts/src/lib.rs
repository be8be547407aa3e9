//! Brand alerts in motion: the audience job that turns a due alert into one
//! queue message per eligible member, and the mailer that renders and sends
//! each message exactly once per member.
//!
//! - [`settings`]: the `[mailer]`, `[audience]` and `[transports]` sections
//!   of the configuration, and the unsubscribe signing key.
//! - [`audience`]: [`AudienceJob`] (one alert's build, step by step) and
//!   [`AudienceWorker`] (polls for due alerts, one lease per alert).
//! - [`affinity`]: the external Affinity API as an audience source.
//! - [`mailer`]: [`Mailer`], the consumer of `brand-alert-emails`.
//! - [`compose`]: [`Composer`], one member's email of an alert, previews and
//!   test sends.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod audience;
pub mod compose;
pub mod content;
pub mod mailer;
pub mod queue;
mod recipient;
pub mod settings;
mod telemetry;
pub mod transports;

pub use audience::{AudienceBuild, AudienceError, AudienceJob, AudienceWorker, BuildOutcome, Step};
pub use compose::{ComposeError, Composer, PreviewError, Recipient, TestSendOutcome};
pub use mailer::{Mailer, MailerError, MailerReport};
pub use queue::{EmailJob, EMAIL_QUEUE};
pub use settings::{
    load_or_create_key, AffinitySettings, AudienceSettings, HttpAffinitySettings, MailerSettings,
    SenderSettings, SettingsError,
};
pub use transports::Transports;
