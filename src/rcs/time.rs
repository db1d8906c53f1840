//! RFC 3339 timestamps in UTC, as the envelope carries them
//! (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`), to and from Unix milliseconds.

/// Why a text is not a timestamp [`parse_utc_ms`] takes; each carries the
/// text's first 40 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// Not written as RFC 3339 in UTC.
    #[error("{0:?} is not RFC 3339 in UTC (YYYY-MM-DDTHH:MM:SS.sssZ)")]
    NotUtc(String),
    /// Written so, but no such date and time (a 30 February, a 25th hour).
    #[error("{0:?} is not a valid date and time")]
    NoSuchInstant(String),
}

/// Unix milliseconds of `s`, an RFC 3339 timestamp in UTC: the date, `T`,
/// the time with 0 to 9 fraction digits (past milliseconds truncated), and
/// `Z` (`t` and `z` too, as RFC 3339 allows). A numeric offset, even
/// `+00:00`, is refused: the specification asks for UTC written as `Z`.
pub fn parse_utc_ms(s: &str) -> Result<i64, TimestampError> {
    let bad = || TimestampError::NotUtc(s.chars().take(40).collect());
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 30 {
        return Err(bad());
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if !seps.iter().all(|(i, c)| b[*i] == *c) || !matches!(b[10], b'T' | b't') {
        return Err(bad());
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return Err(bad());
    };
    let rest = &b[19..];
    let (fraction, zone) = match rest.first() {
        Some(b'.') => {
            let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return Err(bad());
            }
            (&rest[1..=digits], &rest[1 + digits..])
        }
        _ => (&rest[..0], rest),
    };
    if !matches!(zone, b"Z" | b"z") {
        return Err(bad());
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return Err(TimestampError::NoSuchInstant(s.chars().take(40).collect()));
    }
    let millis = fraction
        .iter()
        .chain(b"000".iter())
        .take(3)
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    // A leap second (":60") counts as the second after ":59".
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    Ok(seconds * 1000 + millis)
}

/// `ms` (Unix milliseconds) as `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn format_utc_ms(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (rest / 3_600_000, rest % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m1_rfc3339_utc_timestamps() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_utc_ms("2025-07-31T17:47:53.123Z"),
            Ok(1_753_984_073_123)
        );
        assert_eq!(
            parse_utc_ms("2025-07-31T17:47:53.1239Z"),
            Ok(1_753_984_073_123)
        );
        assert_eq!(
            parse_utc_ms("2025-07-31t17:47:53.1z"),
            Ok(1_753_984_073_100)
        );
        assert_eq!(parse_utc_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "2025-07-31T17:47:53.123+00:00",
            "2025-07-31 17:47:53Z",
            "2025-07-31T17:47:53.Z",
            "2025-07-31T17:47:53.1234567890Z",
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-07-31T24:00:00Z",
            "2025-07-31T17:47Z",
            "2025-07-31",
            "２025-07-31T17:47:53Z",
        ] {
            assert!(parse_utc_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn m1_timestamps_round_trip() {
        for ms in [0, 1_753_984_073_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_utc_ms(&format_utc_ms(ms)), Ok(ms));
        }
        assert_eq!(format_utc_ms(1_753_984_073_123), "2025-07-31T17:47:53.123Z");
    }
}
