//! How the commands print a report for people: one `label: value` line per field, values aligned in
//! one column, and times in words.

use crate::credentials::now_ms;
use std::time::{Duration, UNIX_EPOCH};

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

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
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
}
