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

#[cfg(test)]
mod tests {
    use super::*;

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
