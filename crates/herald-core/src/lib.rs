//! Herald's domain: values that can only hold valid data, and the pure rules
//! of the pipelines. Nothing in this crate performs I/O.
#![forbid(unsafe_code)]

pub mod alert;
pub mod api_key;
pub mod cadence;
pub mod catalog;
pub mod email_event;
pub mod names;
pub mod providers;
pub mod routing;
pub mod schedule;
pub mod sharding;
pub mod time;

pub use names::{NameError, QueueName, TopicName};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
