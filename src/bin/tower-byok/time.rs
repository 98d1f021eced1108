//! Times as RFC 3339 UTC text, through jiff; durations like `30m`, by hand.
//!
//! Calendar arithmetic (leap years, offsets, the corners of RFC 3339) is jiff's: a
//! well-kept crate beats the 150 lines of it this file used to hold. Durations stay
//! hand-written: the tool takes exactly one whole number and a unit and prints the two
//! largest units, in 40 lines; jiff's and humantime's duration grammars are wider
//! (`1.5h`, `1h30m`, `P1D`, `2 days`) and their output longer, so either would change
//! the tool's interface for no gain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Unix milliseconds of a time (negative before 1970).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `2026-11-22T10:04:05Z`.
pub(crate) fn format(t: SystemTime) -> String {
    format_ms(unix_ms(t), 0)
}

/// `2026-11-22T10:04:05.123Z`.
pub(crate) fn format_ms_precise(ms: i64) -> String {
    format_ms(ms, 3)
}

fn format_ms(ms: i64, digits: usize) -> String {
    match Timestamp::from_millisecond(ms) {
        // The fraction is cut to `digits`, never rounded up to the next second.
        Ok(ts) => format!("{ts:.digits$}"),
        // Beyond the years -9999 to 9999: only a row written by hand holds such a time.
        Err(_) => format!("{ms} ms after 1970"),
    }
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-22T10:00:00Z`, `...+02:00`, with
/// optional fractional seconds; a space may stand for `T`), a date (`2026-11-22`,
/// midnight UTC), or Unix seconds.
pub(crate) fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text
            .parse()
            .map_err(|_| "Unix seconds out of range".to_owned())?;
        return UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| "Unix seconds out of range".to_owned());
    }
    text.parse::<Timestamp>()
        .or_else(|_| {
            Date::strptime("%Y-%m-%d", text)
                .and_then(|date| date.to_zoned_datetime(TimeZone::UTC))
                .map(|midnight| midnight.timestamp())
        })
        .and_then(SystemTime::try_from)
        .map_err(|_| {
            "expected RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) or Unix seconds"
                .to_owned()
        })
}

/// Parses a duration: a whole number and a unit, `s`, `m`, `h`, `d` or `w` (`90s`,
/// `30m`, `1h`, `2d`); `0` alone is zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || "expected a number and a unit: 90s, 30m, 1h, 2d or 1w".to_owned();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0)
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    // At most about a hundred years, so that adding it to the clock cannot overflow.
    n.checked_mul(unit_secs)
        .filter(|secs| *secs <= 100 * 366 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| "the duration is too long (at most 100 years)".to_owned())
}

/// A duration for people: `1h`, `2d 3h`, `45s`.
pub(crate) fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> SystemTime {
        let d = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            UNIX_EPOCH + d
        } else {
            UNIX_EPOCH - d
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(format(at(951_782_400_000)), "2000-02-29T00:00:00Z");
        assert_eq!(format(at(1_700_000_000_999)), "2023-11-14T22:13:20Z");
        assert_eq!(
            format_ms_precise(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format(at(-1)), "1969-12-31T23:59:59Z");
        assert_eq!(format(at(4_102_444_800_000)), "2100-01-01T00:00:00Z");
        assert_eq!(format_ms_precise(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_ms_precise(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(
            format_ms_precise(i64::MAX),
            format!("{} ms after 1970", i64::MAX)
        );
    }

    #[test]
    fn parses_times() {
        let ok = |text: &str| unix_ms(parse_time(text).expect(text));
        assert_eq!(ok("1700000000"), 1_700_000_000_000);
        assert_eq!(ok("2023-11-14T22:13:20Z"), 1_700_000_000_000);
        assert_eq!(ok("2023-11-14 22:13:20.5z"), 1_700_000_000_500);
        assert_eq!(ok("2023-11-15T00:13:20.123456+02:00"), 1_700_000_000_123);
        assert_eq!(ok("2023-11-14T21:13:20-01:00"), 1_700_000_000_000);
        assert_eq!(ok("2000-02-29"), 951_782_400_000);
        // ISO 8601 forms jiff reads too: no seconds, a basic offset, a leap second.
        assert_eq!(ok("2023-11-14T22:13Z"), 1_699_999_980_000);
        assert_eq!(ok("2023-11-15T00:13:20+0200"), 1_700_000_000_000);
        assert_eq!(ok("2016-12-31T23:59:60Z"), 1_483_228_799_000);
        let accepted: Vec<&str> = [
            "",
            "yesterday",
            "2023-02-29",
            "2023-13-01",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20Z[Europe/Paris]x",
            "2000-02-29T",
            "02/29/2000",
            "-5",
        ]
        .into_iter()
        .filter(|bad| parse_time(bad).is_ok())
        .collect();
        assert!(accepted.is_empty(), "{accepted:?}");
    }

    #[test]
    fn parses_and_formats_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "h",
            "5",
            "-1h",
            "1.5h",
            "1x",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(
            format_duration(Duration::from_secs(2 * 86_400 + 7200 + 5)),
            "2d 2h"
        );
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
