//! How the commands print a report for people: one `label: value` line per field, values aligned in
//! one column, and times in words.

use crate::credentials::now_ms;
use std::time::Duration;

/// Values start in this column, so every report lines up the same way (`organization:` is the widest
/// label).
const VALUE_COLUMN: usize = 15;

/// One `label: value` line per row that has a value, values aligned.
pub fn fields<'a>(rows: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let mut out = String::new();
    for (label, value) in rows {
        if let Some(value) = value {
            let label = format!("{label}:");
            // At least one space, should a label ever outgrow the column.
            out.push_str(&format!("{label:<width$} {value}\n", width = VALUE_COLUMN - 1));
        }
    }
    out
}

/// A signed number of seconds in words (`1h 2m`, `-5s`).
pub fn human_secs(s: i64) -> String {
    let d = humantime::format_duration(Duration::from_secs(s.unsigned_abs()));
    if s < 0 {
        format!("-{d}")
    } else {
        d.to_string()
    }
}

/// How long ago an epoch-milliseconds time was.
pub fn human_ago(at_ms: u64) -> String {
    format!("{} ago", human_secs((now_ms().saturating_sub(at_ms) / 1000) as i64))
}

/// An epoch-milliseconds time as RFC 3339; a file's time past year 9999 shows as the last second of it.
pub fn rfc3339(ms: u64) -> String {
    crate::credentials::format_rfc3339(ms)
}

/// Seconds from `now_ms` until `at_ms`, negative once past. The time comes from a file or an answer,
/// so any `u64` must give a number, not an overflow.
pub fn secs_until(at_ms: u64, now_ms: u64) -> i64 {
    let ms = i128::from(at_ms) - i128::from(now_ms);
    i64::try_from(ms / 1000).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The `login age` line: how old the login is, since when, and from when it is reported.
/// `clock` is `login` (the login's own time) or `first_seen` (a login that carried no record of it).
pub fn login_age(started_at_ms: u64, clock: &str, now_ms: u64, max_age_s: Option<u64>) -> String {
    let age_s = now_ms.saturating_sub(started_at_ms) / 1000;
    let days = age_s / 86_400;
    let age =
        if days > 0 { format!("{days} days {}h", age_s % 86_400 / 3600) } else { human_secs(age_s as i64) };
    let since = rfc3339(started_at_ms);
    let limit = max_age_s.map(|m| format!("; reported past {} days", m / 86_400)).unwrap_or_default();
    match clock {
        "login" => format!("{age} (logged in {since}{limit})"),
        _ => format!(
            "at least {age} (no record of when it was made: counted from {since}, when an agent first saw it{limit})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_age_says_how_sure_it_is() {
        let day = 86_400_000;
        let start = 1_800_000_000_000;
        assert_eq!(
            login_age(start, "login", start + 12 * day + 3_600_000, Some(50 * 86_400)),
            "12 days 1h (logged in 2027-01-15T08:00:00Z; reported past 50 days)"
        );
        assert_eq!(
            login_age(start, "first_seen", start + 90_000, None),
            "at least 1m 30s (no record of when it was made: counted from 2027-01-15T08:00:00Z, when an \
             agent first saw it)"
        );
        // A start in the future, or any absurd time, is a number, not an overflow.
        assert!(login_age(u64::MAX, "login", 0, None).starts_with("0s (logged in 9999-12-31"));
        assert!(login_age(0, "login", u64::MAX, Some(u64::MAX)).starts_with("213503982334 days"));
    }

    #[test]
    fn rows_without_a_value_are_skipped_and_values_line_up() {
        let text = fields([
            ("state", Some("valid".to_owned())),
            ("message", None),
            ("organization", Some("Org".to_owned())),
        ]);
        assert_eq!(text, "state:         valid\norganization:  Org\n");
    }

    #[test]
    fn times_in_words() {
        assert_eq!(human_secs(3_723), "1h 2m 3s");
        assert_eq!(human_secs(-5), "-5s");
        assert_eq!(rfc3339(1_800_000_600_000), "2027-01-15T08:10:00Z");
    }

    #[test]
    fn any_time_a_file_gives_is_printed_without_overflow() {
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800_000), "9999-12-31T23:59:59Z");
        assert_eq!(secs_until(1_800_000_600_000, 1_800_000_000_000), 600);
        assert_eq!(secs_until(0, 1_800_000_000_000), -1_800_000_000);
        assert_eq!(secs_until(1 << 63, 1_800_000_000_000), 9_223_370_236_854_775);
        assert_eq!(secs_until(u64::MAX, 0), 18_446_744_073_709_551);
        assert!(human_secs(i64::MIN).starts_with("-292271023045years"));
    }
}
