//! Validity windows: days, clock-skew backdating, and time conversions.
//!
//! Certificates carry whole seconds, so every conversion here truncates to
//! seconds; conversions that fall outside what X.509 can encode are errors,
//! never panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::CertsError;

/// One day.
pub(crate) const DAY: Duration = Duration::from_secs(86_400);

/// How far `notBefore` is backdated, so a peer whose clock is a little behind
/// accepts a certificate minted a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// `days` days.
pub(crate) fn days(days: u32) -> Duration {
    DAY * days
}

/// Seconds since the Unix epoch, negative before it.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The instant `secs` seconds after the Unix epoch (before it when negative),
/// saturating at what `SystemTime` can hold.
pub(crate) fn from_unix_seconds(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let shifted = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    shifted.unwrap_or(UNIX_EPOCH)
}

/// `t` as the generator's date type, truncated to seconds.
pub(crate) fn to_datetime(t: SystemTime) -> Result<OffsetDateTime, CertsError> {
    OffsetDateTime::from_unix_timestamp(unix_seconds(t)).map_err(|e| CertsError::Mint {
        what: "a validity date".into(),
        detail: e.to_string(),
    })
}

/// `t` in RFC 3339, UTC, to the second (`2026-11-05T10:00:00Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}", unix_seconds(t)))
}

/// A human reading of a span: `3 days`, `5 hours`, `12 minutes`, `40 seconds`.
///
/// Rounds down to the largest unit that gives at least 2 (or 1 for seconds),
/// so `expires in 1 day` never hides that only 25 hours are left.
pub(crate) fn span(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 2 * 86_400 {
        (secs / 86_400, "day")
    } else if secs >= 2 * 3_600 {
        (secs / 3_600, "hour")
    } else if secs >= 2 * 60 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    if n == 1 {
        format!("{n} {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Whole days in `d`, rounded up.
pub(crate) fn days_rounded_up(d: Duration) -> u64 {
    d.as_secs().div_ceil(DAY.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_round_trip_truncates_to_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_750);
        assert_eq!(unix_seconds(t), 1_700_000_000);
        assert_eq!(
            from_unix_seconds(1_700_000_000),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(unix_seconds(before), -10);
        assert_eq!(from_unix_seconds(-10), before);
    }

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_750);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn spans_pick_a_readable_unit() {
        assert_eq!(span(Duration::from_secs(90 * 86_400)), "90 days");
        assert_eq!(span(Duration::from_secs(2 * 86_400)), "2 days");
        assert_eq!(span(Duration::from_secs(86_400 + 3_600)), "25 hours");
        assert_eq!(span(Duration::from_secs(3 * 60)), "3 minutes");
        assert_eq!(span(Duration::from_secs(1)), "1 second");
        assert_eq!(span(Duration::ZERO), "0 seconds");
    }

    #[test]
    fn days_round_up() {
        assert_eq!(days_rounded_up(Duration::ZERO), 0);
        assert_eq!(days_rounded_up(Duration::from_secs(1)), 1);
        assert_eq!(days_rounded_up(DAY), 1);
        assert_eq!(days_rounded_up(DAY + Duration::from_secs(1)), 2);
    }
}
