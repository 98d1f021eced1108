//! Times as RFC 3339 UTC text and durations like `30m`, without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MS_PER_DAY: i64 = 86_400_000;

/// Unix milliseconds of a time (negative before 1970).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `2026-11-22T10:04:05Z`.
pub(crate) fn format(t: SystemTime) -> String {
    let ms = unix_ms(t);
    format_ms(ms - ms.rem_euclid(1000), false)
}

/// `2026-11-22T10:04:05.123Z`.
pub(crate) fn format_ms_precise(ms: i64) -> String {
    format_ms(ms, true)
}

fn format_ms(ms: i64, millis: bool) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1000;
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    if millis {
        let frac = in_day % 1000;
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:03}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// The civil date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction: 1..=31 and 1..=12.
    (y, m as u32, d as u32)
}

/// The day count since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let (m, d) = (i64::from(m), i64::from(d));
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
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
    let ms = parse_rfc3339_ms(text).ok_or_else(|| {
        "expected RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) or Unix seconds".to_owned()
    })?;
    let d = Duration::from_millis(ms.unsigned_abs());
    Ok(if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    })
}

fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = num(&b[0..4])?;
    let m = u32::try_from(num(&b[5..7])?).ok()?;
    let d = u32::try_from(num(&b[8..10])?).ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let day_ms = days_from_civil(y, m, d) * MS_PER_DAY;
    let rest = &b[10..];
    if rest.is_empty() {
        return Some(day_ms);
    }
    if !matches!(rest[0], b'T' | b't' | b' ') || rest.len() < 9 || rest[3] != b':' {
        return None;
    }
    let hh = num(&rest[1..3])?;
    let mm = num(&rest[4..6])?;
    if rest[6] != b':' {
        return None;
    }
    let ss = num(&rest[7..9])?;
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &rest[9..];
    let mut frac_ms = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let digits = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut ms_digits = [b'0'; 3];
        for (slot, digit) in ms_digits.iter_mut().zip(&after_dot[..digits]) {
            *slot = *digit;
        }
        frac_ms = num(&ms_digits)?;
        rest = &after_dot[digits..];
    }
    let offset_min = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = num(&[*h1, *h2])?;
            let om = num(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 60 + om;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let secs = hh * 3600 + mm * 60 + ss.min(59) - offset_min * 60;
    Some(day_ms + secs * 1000 + frac_ms)
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
    }

    #[test]
    fn days_round_trip_over_centuries() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert!(d <= days_in_month(y, m), "{y}-{m}-{d}");
            assert_eq!(days_from_civil(y, m, d), days);
        }
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
        for bad in [
            "",
            "yesterday",
            "2023-02-29",
            "2023-13-01",
            "2023-11-14T22:13Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0200",
            "-5",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
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
