//! Times as the database stores them: milliseconds since the Unix epoch, as `i64`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in Unix milliseconds, saturating far outside the representable range.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The instant of a stored Unix-millisecond value, clamped to the platform's range.
pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    // Checked: a stored value out of the platform's range clamps instead of panicking.
    let d = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(if ms >= 0 {
        UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX))
    } else {
        UNIX_EPOCH
    })
}

/// Now, in Unix milliseconds.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    expect(
        dead_code,
        reason = "only the built-in stores' migrations record a time"
    )
)]
pub(crate) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_round_trips_and_clamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        assert_eq!(unix_ms(t), 1_767_225_600_123);
        assert_eq!(from_unix_ms(1_767_225_600_123), t);
        assert_eq!(from_unix_ms(-5), UNIX_EPOCH - Duration::from_millis(5));
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_millis(5)), -5);
        // Out of range: no panic, a clamped instant.
        let _ = from_unix_ms(i64::MAX);
        let _ = from_unix_ms(i64::MIN);
    }
}
