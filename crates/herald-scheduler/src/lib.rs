//! The scheduler role: process definitions run on their schedules by one
//! active instance at a time.
//!
//! - [`engine`]: [`Scheduler`], leadership through the store's lease and the
//!   deterministic [`Scheduler::tick`].
//! - [`exec`]: shell commands (own process group, capped log tail) and HTTP
//!   calls.
//! - [`builtin`]: the jobs Herald runs in-process.
//! - [`notify`]: webhook (Standard Webhooks), PagerDuty and email.
//! - [`files`]: process definitions from a folder of TOML or JSON files.
#![forbid(unsafe_code)]

pub mod builtin;
pub mod engine;
pub mod exec;
pub mod files;
pub mod notify;

pub use builtin::{BuiltinJob, Builtins};
pub use engine::{Scheduler, SchedulerError, SchedulerSettings, TickReport};
pub use notify::{EmailSender, Notifier, TransportEmail};
