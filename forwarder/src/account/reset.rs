//! When a window clears, from a `-reset` header value. The API sends unix seconds, but milliseconds and
//! RFC 3339 dates have been seen, and a value from the network may be anything: garbage and resets
//! further away than any window lasts are ignored rather than believed, and a reset in the past means
//! "now".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest window is seven days; a reset further away than this is not one.
pub const MAX_AHEAD: Duration = Duration::from_secs(8 * 24 * 3600);

/// Epoch numbers at or above this are milliseconds: as seconds they would be past the year 5000.
const MILLIS_FROM: u64 = 100_000_000_000;

/// How long from `now` until the reset `value` names, or `None` when it names no believable time.
pub fn wait(value: &str, now: SystemTime) -> Option<Duration> {
    let at = parse(value.trim())?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    (wait <= MAX_AHEAD).then_some(wait)
}

/// A whole number of seconds for `retry-after`, rounded up and at least 1: a client that waits what it
/// is told must not arrive before the reset.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn parse(value: &str) -> Option<SystemTime> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = value.parse().ok()?;
        let d = if n >= MILLIS_FROM { Duration::from_millis(n) } else { Duration::from_secs(n) };
        return UNIX_EPOCH.checked_add(d);
    }
    rfc3339(value)
}

/// `2026-01-02T19:59:59.600956+00:00`, `2026-01-02T19:59:59Z`: the forms the usage endpoint and the
/// headers use. Anything else is `None`.
fn rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 || !s.is_ascii() {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(range)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<9}", &frac[..digits]);
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' {
                return None;
            }
            let sign = match rb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h = num_of(&rest[1..3])?;
            let m = num_of(&rest[4..6])?;
            if h > 23 || m > 59 {
                return None;
            }
            sign * (i64::from(h) * 3600 + i64::from(m) * 60)
        }
    };
    let days = days_from_civil(i64::from(year), month, day);
    let local = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    let epoch = u64::try_from(local - offset_secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(epoch, nanos))
}

fn num_of(s: &str) -> Option<u32> {
    s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T03:00:00Z.
    const NOW: u64 = 1_796_612_400;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn seconds_and_milliseconds() {
        assert_eq!(wait(&(NOW + 3600).to_string(), now()), Some(Duration::from_secs(3600)));
        assert_eq!(wait(&((NOW + 90) * 1000 + 500).to_string(), now()), Some(Duration::from_millis(90_500)));
        assert_eq!(wait(&format!(" {} ", NOW + 5), now()), Some(Duration::from_secs(5)), "trimmed");
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        assert_eq!(wait("2026-12-07T04:00:00Z", now()), Some(Duration::from_secs(3600)));
        assert_eq!(wait("2026-12-07T04:00:00+00:00", now()), Some(Duration::from_secs(3600)));
        assert_eq!(wait("2026-12-07T05:00:00+01:00", now()), Some(Duration::from_secs(3600)));
        assert_eq!(wait("2026-12-06T23:00:00-05:00", now()), Some(Duration::from_secs(3600)));
        assert_eq!(wait("2026-12-07T03:00:01.5Z", now()), Some(Duration::from_millis(1500)));
        assert_eq!(wait("2026-12-07T03:00:01.600956+00:00", now()), Some(Duration::from_micros(1_600_956)));
    }

    #[test]
    fn garbage_is_no_reset() {
        for v in [
            "",
            " ",
            "soon",
            "-1",
            "1.5e9",
            "0x6a",
            "99999999999999999999999",
            "2026-13-07T04:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T04:00:00",
            "2026-12-07T04:00:00+0100",
            "2026-12-07T04:00:00.Z",
            "2026-12-07T04:00:00.1234567890Z",
            "2026-12-07 04:00",
            "２０２６-12-07T04:00:00Z",
            "Mon, 07 Dec 2026 04:00:00 GMT",
        ] {
            assert_eq!(wait(v, now()), None, "{v:?}");
        }
    }

    #[test]
    fn the_past_is_now_and_the_far_future_is_ignored() {
        assert_eq!(wait(&(NOW - 60).to_string(), now()), Some(Duration::ZERO));
        assert_eq!(wait("0", now()), Some(Duration::ZERO));
        assert_eq!(wait(&(NOW + 7 * 86_400).to_string(), now()), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(wait(&(NOW + 9 * 86_400).to_string(), now()), None, "longer than any window");
        assert_eq!(wait("32503680000", now()), None, "year 3000");
        assert_eq!(wait("9999-12-31T23:59:59Z", now()), None);
        assert_eq!(wait(&u64::MAX.to_string(), now()), None, "milliseconds past any date");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3600)), 3600);
    }
}
