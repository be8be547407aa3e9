//! The scheduler's pure rules: process definitions and their checks, cron
//! in a time zone, the task DAG, backoff, overlap and notification
//! decisions. Time comes in as [`crate::Timestamp`]s read from an injected
//! clock, so every rule is tested without waiting.

pub mod cron;
pub mod dag;
pub mod definition;
pub mod rules;

pub use cron::{CronError, CronSchedule};
pub use dag::{find_cycle, readiness, run_outcome, Readiness};
pub use definition::{
    ChannelSpec, DefinitionError, Dependency, Executable, NotifyWhen, Overlap, ProcessDefinition,
    ProcessName, ProcessSpec, Schedule, ScheduleSpec, TaskSpec, WebhookFormat, BUILTIN_JOBS,
};
pub use rules::{
    after_failure, after_run, due, first_fire, on_new_run, should_notify, AfterFailure, Backoff,
    Fire, OverlapDecision, RunState, TaskState,
};
