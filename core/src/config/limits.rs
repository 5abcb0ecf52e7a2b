//! The rule of every number in the configuration, in one table, so that `Config::validate`
//! and a binding that converts a number from its own types (a negative Python int, a JS
//! number of milliseconds) refuse a bad value with the same words, naming the same field.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Most workers one supervisor runs.
pub const MAX_WORKERS: usize = 4096;
/// Largest `max_message` that may be configured.
pub const MAX_MAX_MESSAGE: usize = 1 << 30;
/// Smallest `event_queue_limit` that may be configured.
pub const MIN_EVENT_QUEUE_LIMIT: usize = 4096;
/// Longest duration any option takes: past it, a value is a unit mistake, not a wish.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Integer fields: name as in `Config` (dotted below `restart`), smallest, largest value.
const COUNTS: &[(&str, u64, u64)] = &[
    ("workers", 1, MAX_WORKERS as u64),
    ("max_message", 1, MAX_MAX_MESSAGE as u64),
    // The real floor depends on max_message; `check_message_limits` applies it.
    ("send_queue_limit", 1, u64::MAX),
    ("event_queue_limit", MIN_EVENT_QUEUE_LIMIT as u64, u64::MAX),
    ("max_inflight", 1, u64::MAX),
    ("handoff_window", 1, 65536),
    ("queue_limit", 1, u64::MAX),
    ("max_surge", 1, MAX_WORKERS as u64),
    ("ready_min", 1, MAX_WORKERS as u64),
    ("max_memory", 1, u64::MAX),
    ("max_requests", 1, u64::MAX),
    ("max_requests_jitter", 0, u64::MAX),
    ("restart.max_restarts", 0, u32::MAX as u64),
    // An exit status is one byte: a code outside it could never match.
    ("restart.no_restart_codes", 0, 255),
];

/// Durations that may be zero (a restart at once); every other one must be more than zero.
const DELAYS: &[&str] = &[
    "restart.backoff_initial",
    "restart.backoff_max",
    "restart.min_uptime",
    // No delay: stop at once, as without it.
    "drain_delay",
];

/// What a field accepts, in words, for its error.
fn count_rule(field: &str) -> (u64, u64, String) {
    let (min, max) = COUNTS
        .iter()
        .find(|(f, _, _)| *f == field)
        .map_or((0, u64::MAX), |&(_, lo, hi)| (lo, hi));
    let words = if max == u64::MAX {
        format!("must be at least {min}")
    } else {
        format!("must be {min}..={max}")
    };
    (min, max, words)
}

/// Checks an integer field against its rule in `COUNTS`.
pub(crate) fn check_count(field: &'static str, value: impl Into<i128>) -> Result<()> {
    let value = value.into();
    let (min, max, words) = count_rule(field);
    if value < i128::from(min) || value > i128::from(max) {
        return Err(Error::config(field, value, words));
    }
    Ok(())
}

/// A binding's integer as the type of its field, refused (naming the field and its rule)
/// when it is outside the rule, negative numbers included.
pub(crate) fn count<T: TryFrom<i128>>(field: &'static str, value: i128) -> Result<T> {
    check_count(field, value)?;
    T::try_from(value).map_err(|_| Error::config(field, value, count_rule(field).2))
}

fn duration_rule(field: &str) -> &'static str {
    if DELAYS.contains(&field) {
        "must be 0 or more, and at most a year"
    } else {
        "must be more than 0, and at most a year"
    }
}

/// Checks a duration field: at most a year, and more than zero unless it is a delay.
pub(crate) fn check_duration(field: &'static str, d: Duration) -> Result<()> {
    if d > MAX_DURATION || (d.is_zero() && !DELAYS.contains(&field)) {
        // In seconds: `Duration`'s own form says "0ns" for a zero nobody wrote in nanoseconds.
        let shown = format!("{}s", d.as_secs_f64());
        return Err(Error::config(field, Raw(&shown), duration_rule(field)));
    }
    Ok(())
}

/// A binding's number of `unit`s (a float, maybe negative or NaN) as a checked duration; the
/// error shows the number as the host gave it.
pub(crate) fn duration(field: &'static str, amount: f64, unit: Unit) -> Result<Duration> {
    let shown = Shown(amount, unit);
    let secs = amount * unit.seconds();
    let d = Duration::try_from_secs_f64(secs)
        .map_err(|_| Error::config(field, shown, duration_rule(field)))?;
    check_duration(field, d).map_err(|_| Error::config(field, shown, duration_rule(field)))?;
    Ok(d)
}

/// The unit a host counts durations in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Millis,
}

impl Unit {
    fn seconds(self) -> f64 {
        match self {
            Unit::Seconds => 1.0,
            Unit::Millis => 0.001,
        }
    }
}

/// Text shown as it is (not quoted) in an error.
struct Raw<'a>(&'a str);

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A number with its unit, for an error message ("-5 ms").
#[derive(Clone, Copy)]
struct Shown(f64, Unit);

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.1 {
            Unit::Seconds => "s",
            Unit::Millis => "ms",
        };
        write!(f, "{} {unit}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_count_names_the_field_and_its_range() {
        let e = count::<usize>("workers", -3).unwrap_err().to_string();
        assert_eq!(e, "invalid config: workers = -3: must be 1..=4096");
        assert_eq!(count::<usize>("handoff_window", 65536).unwrap(), 65536);
        assert!(count::<usize>("handoff_window", 65537).is_err());
        let e = count::<usize>("queue_limit", -1).unwrap_err().to_string();
        assert!(e.ends_with("must be at least 1"), "{e}");
    }

    #[test]
    fn durations_from_hosts_keep_the_number_and_unit_they_gave() {
        let e = duration("kill_timeout", -5.0, Unit::Millis)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kill_timeout = -5 ms"), "{e}");
        assert!(duration("ready_timeout", 0.0, Unit::Seconds).is_err());
        assert!(duration("ready_timeout", f64::NAN, Unit::Seconds).is_err());
        assert_eq!(
            duration("restart.backoff_initial", 0.0, Unit::Seconds).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            duration("kill_timeout", 1500.0, Unit::Millis).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(duration("restart.window", 366.0 * 86400.0, Unit::Seconds).is_err());
    }
}
