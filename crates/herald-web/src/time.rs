//! Times as a person reads and types them: in their own zone, to the minute.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use herald_core::Timestamp;

/// A user's time zone (UTC when they have none or it is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    pub fn utc() -> Self {
        Zone(Tz::UTC)
    }

    pub fn named(name: Option<&str>) -> Self {
        Zone(name.and_then(|n| n.parse().ok()).unwrap_or(Tz::UTC))
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    fn local(self, t: Timestamp) -> Option<DateTime<Tz>> {
        DateTime::<Utc>::from_timestamp_millis(t.millis()).map(|t| t.with_timezone(&self.0))
    }

    /// `2024-05-01 14:00`.
    pub fn format(self, t: Timestamp) -> String {
        self.local(t)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| t.millis().to_string())
    }

    /// The value of a `datetime-local` input: `2024-05-01T14:00`.
    pub fn input_value(self, t: Timestamp) -> String {
        self.local(t)
            .map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
            .unwrap_or_default()
    }

    /// Reads a `datetime-local` value as a time in this zone. A time the
    /// clocks skip (spring forward) is refused; one they pass twice (fall
    /// back) is the first of the two.
    pub fn parse_input(self, text: &str) -> Result<Timestamp, String> {
        let text = text.trim();
        let naive = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .ok_or_else(|| format!("{text:?} is not a date and time such as 2024-05-01T14:00"))?;
        self.resolve(naive, text)
    }

    /// The start of a `date` input's day in this zone.
    pub fn parse_day(self, text: &str) -> Result<Timestamp, String> {
        let text = text.trim();
        let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format!("{text:?} is not a date such as 2024-05-01"))?;
        self.resolve(day.and_time(chrono::NaiveTime::MIN), text)
    }

    fn resolve(self, naive: NaiveDateTime, text: &str) -> Result<Timestamp, String> {
        match self.0.from_local_datetime(&naive) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                Ok(Timestamp(t.timestamp_millis()))
            }
            LocalResult::None => Err(format!(
                "{text} does not exist in {} (the clocks skip it)",
                self.name()
            )),
        }
    }
}

/// `1h 5m`, `42s`: how long ago or how long, to the two largest units.
pub fn short_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAY_DAY_NOON_UTC: Timestamp = Timestamp(1_714_564_800_000);

    #[test]
    fn times_show_and_read_in_the_users_zone() {
        let paris = Zone::named(Some("Europe/Paris"));
        assert_eq!(paris.format(MAY_DAY_NOON_UTC), "2024-05-01 14:00");
        assert_eq!(paris.input_value(MAY_DAY_NOON_UTC), "2024-05-01T14:00");
        assert_eq!(paris.parse_input("2024-05-01T14:00"), Ok(MAY_DAY_NOON_UTC));
        assert_eq!(
            Zone::utc().parse_input("2024-05-01 12:00"),
            Ok(MAY_DAY_NOON_UTC)
        );
        assert_eq!(Zone::named(Some("Not/AZone")), Zone::utc());
        assert_eq!(Zone::named(None).name(), "UTC");
    }

    #[test]
    fn skipped_times_are_refused_and_repeated_ones_take_the_first() {
        let paris = Zone::named(Some("Europe/Paris"));
        let err = paris.parse_input("2024-03-31T02:30").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let first = paris.parse_input("2024-10-27T02:30").unwrap();
        assert_eq!(Zone::utc().format(first), "2024-10-27 00:30");
    }

    #[test]
    fn malformed_input_is_named() {
        for bad in ["", "tomorrow", "2024-13-01T10:00", "2024-05-01"] {
            assert!(Zone::utc().parse_input(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Zone::named(Some("Europe/Paris")).parse_day("2024-05-01"),
            Ok(Timestamp(MAY_DAY_NOON_UTC.millis() - 14 * 3_600_000))
        );
        assert!(Zone::utc().parse_day("01/05/2024").is_err());
    }

    #[test]
    fn durations_read_naturally() {
        use std::time::Duration;
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(3_900)), "1h 5m");
        assert_eq!(short_duration(Duration::from_secs(90_000)), "1d 1h");
    }
}
