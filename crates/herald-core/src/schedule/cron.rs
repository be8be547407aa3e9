//! Cron schedules in a time zone.
//!
//! Parsing and matching are croner's: 5 fields (minute first) or 6 (seconds
//! first), and its DST rules, which are Vixie cron's. A job at a fixed time
//! that falls in the hour skipped by spring-forward runs once, right after
//! the gap; one in the hour repeated by fall-back runs once, on the first
//! pass. Wildcard and step jobs run at every wall-clock match that exists.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::Timestamp;

/// A parsed cron expression and the time zone it is read in.
#[derive(Clone)]
pub struct CronSchedule {
    cron: Cron,
    expression: String,
    zone: Tz,
}

/// Which part of a cron schedule is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("{expression:?} is not a cron expression of 5 or 6 fields: {message}")]
    Expression { expression: String, message: String },
    #[error("{0:?} is not a time zone of the IANA database (such as Europe/Paris or UTC)")]
    TimeZone(String),
}

impl CronSchedule {
    pub fn parse(expression: &str, time_zone: &str) -> Result<CronSchedule, CronError> {
        let zone: Tz = time_zone
            .parse()
            .map_err(|_| CronError::TimeZone(time_zone.to_owned()))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| CronError::Expression {
                expression: expression.to_owned(),
                message: e.to_string(),
            })?;
        Ok(CronSchedule {
            cron,
            expression: expression.to_owned(),
            zone,
        })
    }

    /// The first fire strictly after `after`; `None` when the expression
    /// never matches again (`0 0 30 2 *`, February 30th).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.zone.from_utc_datetime(&to_utc(after)?.naive_utc());
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(Timestamp(next.with_timezone(&Utc).timestamp_millis()))
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone(&self) -> &str {
        self.zone.name()
    }
}

fn to_utc(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(t.millis())
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} in {}", self.expression, self.zone.name())
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.zone == other.zone
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The instant of a UTC date and time, for readable cases.
    pub(crate) fn utc(text: &str) -> Timestamp {
        let t = DateTime::parse_from_rfc3339(text).expect("rfc3339");
        Timestamp(t.timestamp_millis())
    }

    fn fires(schedule: &CronSchedule, from: &str, count: usize) -> Vec<String> {
        let mut at = utc(from);
        let mut out = Vec::new();
        for _ in 0..count {
            let Some(next) = schedule.next_after(at) else {
                break;
            };
            out.push(
                to_utc(next)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            at = next;
        }
        out
    }

    #[test]
    fn five_and_six_fields() {
        let every_minute = CronSchedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(
            fires(&every_minute, "2026-11-25T12:00:30Z", 2),
            ["2026-11-25T12:01:00Z", "2026-11-25T12:02:00Z"]
        );
        let every_ten_seconds = CronSchedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            fires(&every_ten_seconds, "2026-11-25T12:00:00Z", 2),
            ["2026-11-25T12:00:10Z", "2026-11-25T12:00:20Z"]
        );
    }

    #[test]
    fn next_is_strictly_after() {
        let s = CronSchedule::parse("0 12 * * *", "UTC").unwrap();
        assert_eq!(
            fires(&s, "2026-11-25T12:00:00Z", 1),
            ["2026-11-26T12:00:00Z"]
        );
    }

    #[test]
    fn time_zone_shifts_the_fire() {
        let s = CronSchedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        // Paris is UTC+1 in winter, UTC+2 in summer.
        assert_eq!(
            fires(&s, "2026-01-10T00:00:00Z", 1),
            ["2026-01-10T08:00:00Z"]
        );
        assert_eq!(
            fires(&s, "2026-07-10T00:00:00Z", 1),
            ["2026-07-10T07:00:00Z"]
        );
    }

    #[test]
    fn spring_forward_runs_a_skipped_fixed_time_once() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let s = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&s, "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z", // 03:00 EDT, right after the gap
                "2026-03-09T06:30:00Z", // 02:30 EDT
                "2026-03-10T06:30:00Z",
            ]
        );
    }

    #[test]
    fn fall_back_runs_a_repeated_fixed_time_once() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z).
        let s = CronSchedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&s, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z", // 01:30 EDT, first pass only
                "2026-11-02T06:30:00Z", // 01:30 EST
                "2026-11-03T06:30:00Z",
            ]
        );
        let half_past_two = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&half_past_two, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"]
        );
    }

    #[test]
    fn month_ends_and_leap_days() {
        let last_of_31 = CronSchedule::parse("0 0 31 * *", "UTC").unwrap();
        assert_eq!(
            fires(&last_of_31, "2026-01-31T00:00:00Z", 2),
            ["2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"]
        );
        let leap_day = CronSchedule::parse("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            fires(&leap_day, "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
        let last_day = CronSchedule::parse("0 0 L * *", "UTC").unwrap();
        assert_eq!(
            fires(&last_day, "2028-02-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn a_date_that_never_comes_has_no_next() {
        let s = CronSchedule::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "every minute"] {
            assert!(
                matches!(
                    CronSchedule::parse(bad, "UTC"),
                    Err(CronError::Expression { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            CronSchedule::parse("* * * * *", "Mars/Olympus").unwrap_err(),
            CronError::TimeZone("Mars/Olympus".into())
        );
    }
}
