//! The account's usage windows, as the API last reported them in its `anthropic-ratelimit-unified-*`
//! response headers: kept as gauges for `/metrics` and as a summary for `/health`, so an operator sees
//! "5 h window 82 %, resets 14:00" without a request of their own. The headers themselves reach the
//! client unchanged.
//!
//! The values come from the network: a malformed one is ignored, utilization is clamped to 0–1, and
//! only window names of a few lowercase letters, digits and `_` (`5h`, `7d`, `7d_oi`) are kept, at
//! most [`MAX_WINDOWS`] of them, so a strange upstream cannot grow the metrics without bound. What is
//! kept is what the latest response reports: a window it no longer names leaves the gauges and the
//! summary, so a window the API adds later (`5h` after a run of per-model ones) always finds room.

use super::instruments::label_values;
use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sidecred_proto::anthropic::RATELIMIT_UNIFIED_PREFIX;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Per-model windows come and go; more than this many names is not a real API.
pub const MAX_WINDOWS: usize = 16;
const MAX_WINDOW_NAME: usize = 24;
/// The label of the account-wide status and reset (`anthropic-ratelimit-unified-status`).
pub const OVERALL: &str = "overall";
/// Resets later than this (year 3000) are not dates.
const MAX_RESET_EPOCH: u64 = 32_503_680_000;

/// What the API says of a window: its status values, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Allowed,
    AllowedWarning,
    Rejected,
}

label_values!(Status {
    Allowed => "allowed",
    AllowedWarning => "allowed_warning",
    Rejected => "rejected",
});

const STATUSES: [Status; 3] = [Status::Allowed, Status::AllowedWarning, Status::Rejected];

impl Status {
    fn parse(v: &str) -> Option<Status> {
        match v {
            "allowed" => Some(Status::Allowed),
            "allowed_warning" => Some(Status::AllowedWarning),
            "rejected" => Some(Status::Rejected),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WindowLabels {
    window: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    window: String,
    status: Status,
}

/// One window as last reported.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Window {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// A fraction, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
}

/// One header's worth of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Status(Status),
    Utilization(f64),
    Reset(u64),
}

/// The window and field one header reports, when it is one we keep and its value makes sense (what the
/// tests check of both halves together).
#[cfg(test)]
fn parse_header(name: &str, value: &[u8]) -> Option<(String, Field)> {
    let (window, field) = window_field(name)?;
    Some((window.to_owned(), parse_value(field, value)?))
}

/// The window a header name is about and which of its fields, when it is a field we keep (a window
/// is named by its header whatever the value says).
fn window_field(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(RATELIMIT_UNIFIED_PREFIX)?;
    let (window, field) = match rest {
        "status" | "reset" => (OVERALL, rest),
        _ => rest.rsplit_once('-')?,
    };
    let kept_field = matches!(field, "status" | "utilization" | "reset");
    let plain_name = !window.is_empty()
        && window.len() <= MAX_WINDOW_NAME
        && window.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    (kept_field && plain_name).then_some((window, field))
}

/// A field's value, when it makes sense.
fn parse_value(field: &str, value: &[u8]) -> Option<Field> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let field = match field {
        "status" => Field::Status(Status::parse(value)?),
        "utilization" => {
            let u: f64 = value.parse().ok()?;
            if !u.is_finite() {
                return None;
            }
            Field::Utilization(u.clamp(0.0, 1.0))
        }
        "reset" => Field::Reset(value.parse().ok().filter(|r| *r <= MAX_RESET_EPOCH)?),
        _ => return None,
    };
    Some(field)
}

/// The gauges, registered with the forwarder's registry.
pub struct UsageGauges {
    utilization: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    reset: Family<WindowLabels, Gauge>,
    status: Family<StatusLabels, Gauge>,
    updated: Gauge,
    /// For `/health`: the same values, readable together.
    latest: Mutex<Latest>,
}

#[derive(Default)]
struct Latest {
    windows: BTreeMap<String, Window>,
    at: Option<SystemTime>,
}

impl UsageGauges {
    pub fn register(registry: &mut Registry) -> Self {
        let utilization = Family::default();
        registry.register(
            "usage_utilization_ratio",
            "The account's usage window as the API last reported it (anthropic-ratelimit-unified-*), 0 to 1",
            utilization.clone(),
        );
        let reset = Family::default();
        registry.register(
            "usage_reset_timestamp_seconds",
            "When the usage window resets, as the API last reported it (epoch seconds)",
            reset.clone(),
        );
        let status = Family::default();
        registry.register(
            "usage_status",
            "1 for the usage window's status as the API last reported it (allowed, allowed_warning, rejected)",
            status.clone(),
        );
        let updated = Gauge::default();
        registry.register(
            "usage_updated_timestamp_seconds",
            "When the API last reported the usage windows (epoch seconds)",
            updated.clone(),
        );
        UsageGauges { utilization, reset, status, updated, latest: Mutex::default() }
    }

    /// Takes what an upstream response's headers say: the windows it names replace those known
    /// before. Cheap when they say nothing: one look at each header name's first bytes, no parsing
    /// and no lock.
    pub fn observe(&self, headers: &HeaderMap) {
        let prefix = RATELIMIT_UNIFIED_PREFIX.as_bytes();
        if !headers.keys().any(|name| name.as_str().as_bytes().starts_with(prefix)) {
            return;
        }
        // A window named by a header counts as reported even when its value is malformed (its last
        // good value stays); only windows no header names any more are dropped.
        let mut names = BTreeSet::new();
        let mut reported = Vec::new();
        for (name, value) in headers {
            let Some((window, field)) = window_field(name.as_str()) else { continue };
            if !names.contains(window) && names.len() >= MAX_WINDOWS {
                continue;
            }
            names.insert(window.to_owned());
            if let Some(field) = parse_value(field, value.as_bytes()) {
                reported.push((window.to_owned(), field));
            }
        }
        if names.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<String> = latest.windows.keys().filter(|w| !names.contains(*w)).cloned().collect();
        for window in gone {
            latest.windows.remove(&window);
            let labels = WindowLabels { window };
            self.utilization.remove(&labels);
            self.reset.remove(&labels);
            for status in STATUSES {
                self.status.remove(&StatusLabels { window: labels.window.clone(), status });
            }
        }
        for (window, field) in reported {
            let labels = WindowLabels { window: window.clone() };
            let entry = latest.windows.entry(window).or_default();
            match field {
                Field::Utilization(u) => {
                    entry.utilization = Some(u);
                    self.utilization.get_or_create(&labels).set(u);
                }
                Field::Reset(r) => {
                    entry.reset = Some(r);
                    self.reset.get_or_create(&labels).set(i64::try_from(r).unwrap_or(i64::MAX));
                }
                Field::Status(s) => {
                    entry.status = Some(s);
                    for status in STATUSES {
                        let labels = StatusLabels { window: labels.window.clone(), status };
                        self.status.get_or_create(&labels).set(i64::from(status == s));
                    }
                }
            }
        }
        latest.at = Some(now);
        let epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        self.updated.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// The `usage` object of `/health`, or `None` before any response carried the headers.
    pub fn summary(&self) -> Option<serde_json::Value> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let at = latest.at?;
        let windows: serde_json::Map<String, serde_json::Value> = latest
            .windows
            .iter()
            .map(|(name, w)| {
                let mut v = serde_json::json!(w);
                if let (Some(reset), Some(obj)) = (w.reset, v.as_object_mut()) {
                    let when = UNIX_EPOCH + Duration::from_secs(reset);
                    obj.insert(
                        "resets_at".into(),
                        humantime::format_rfc3339_seconds(when).to_string().into(),
                    );
                }
                (name.clone(), v)
            })
            .collect();
        Some(serde_json::json!({
            "reported_s_ago": at.elapsed().unwrap_or(Duration::ZERO).as_secs(),
            "windows": windows,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(name: &str, value: &str) -> Option<(String, Field)> {
        parse_header(name, value.as_bytes())
    }

    #[test]
    fn the_windows_and_fields_the_api_sends() {
        let p = RATELIMIT_UNIFIED_PREFIX;
        assert_eq!(
            h(&format!("{p}status"), "allowed"),
            Some((OVERALL.into(), Field::Status(Status::Allowed)))
        );
        assert_eq!(
            h(&format!("{p}reset"), "1764500000"),
            Some((OVERALL.into(), Field::Reset(1_764_500_000)))
        );
        assert_eq!(h(&format!("{p}5h-utilization"), "0.82"), Some(("5h".into(), Field::Utilization(0.82))));
        assert_eq!(
            h(&format!("{p}7d-reset"), "1764900000"),
            Some(("7d".into(), Field::Reset(1_764_900_000)))
        );
        assert_eq!(
            h(&format!("{p}7d_oi-utilization"), "0.5"),
            Some(("7d_oi".into(), Field::Utilization(0.5)))
        );
        assert_eq!(
            h(&format!("{p}5h-status"), "allowed_warning"),
            Some(("5h".into(), Field::Status(Status::AllowedWarning)))
        );
    }

    #[test]
    fn opaque_and_malformed_values_are_ignored_or_clamped() {
        let p = RATELIMIT_UNIFIED_PREFIX;
        for (name, value) in [
            ("representative-claim", "five_hour"),
            ("fallback-percentage", "0.5"),
            ("7d-surpassed-threshold", "0.75"),
            ("5h-utilization", "lots"),
            ("5h-utilization", "NaN"),
            ("5h-utilization", "inf"),
            ("5h-reset", "-1"),
            ("5h-reset", "99999999999999999999"),
            ("5h-reset", "40000000000"),
            ("5h-status", "maybe"),
            ("5H-utilization", "0.1"),
            ("-utilization", "0.1"),
            ("a_window_name_far_too_long_to_be_real-utilization", "0.1"),
        ] {
            assert_eq!(h(&format!("{p}{name}"), value), None, "{name}: {value}");
        }
        assert_eq!(h("x-other-5h-utilization", "0.1"), None);
        assert_eq!(h(&format!("{p}5h-utilization"), "1.7"), Some(("5h".into(), Field::Utilization(1.0))));
        assert_eq!(h(&format!("{p}5h-utilization"), "-0.2"), Some(("5h".into(), Field::Utilization(0.0))));
        assert_eq!(parse_header(&format!("{p}5h-utilization"), b"\xff"), None);
    }

    fn gauges() -> (UsageGauges, Registry) {
        let mut registry = Registry::default();
        (UsageGauges::register(&mut registry), registry)
    }

    #[test]
    fn the_latest_values_are_gauges_and_a_summary() {
        let (g, registry) = gauges();
        assert_eq!(g.summary(), None);
        let mut headers = HeaderMap::new();
        let p = RATELIMIT_UNIFIED_PREFIX;
        for (k, v) in [("5h-utilization", "0.82"), ("5h-reset", "1764511200"), ("status", "allowed")] {
            headers.insert(
                http::HeaderName::from_bytes(format!("{p}{k}").as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        g.observe(&headers);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        assert!(page.contains(r#"usage_utilization_ratio{window="5h"} 0.82"#), "{page}");
        assert!(page.contains(r#"usage_reset_timestamp_seconds{window="5h"} 1764511200"#), "{page}");
        assert!(page.contains(r#"usage_status{window="overall",status="allowed"} 1"#), "{page}");
        assert!(page.contains(r#"usage_status{window="overall",status="rejected"} 0"#), "{page}");
        let summary = g.summary().unwrap();
        assert_eq!(summary["windows"]["5h"]["utilization"], 0.82);
        assert_eq!(summary["windows"]["5h"]["resets_at"], "2025-11-30T14:00:00Z");
        assert_eq!(summary["windows"]["overall"]["status"], "allowed");
    }

    fn report(windows: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for w in windows {
            headers.insert(
                http::HeaderName::from_bytes(format!("{RATELIMIT_UNIFIED_PREFIX}{w}-utilization").as_bytes())
                    .unwrap(),
                HeaderValue::from_static("0.25"),
            );
        }
        headers
    }

    /// Found by attack: once 16 names had been seen, a new real window was never recorded.
    #[test]
    fn the_windows_kept_are_those_reported_now() {
        let (g, registry) = gauges();
        let many: Vec<String> = (0..MAX_WINDOWS).map(|i| format!("m{i}")).collect();
        g.observe(&report(&many.iter().map(String::as_str).collect::<Vec<_>>()));
        g.observe(&report(&["5h", "7d"]));
        let summary = g.summary().unwrap();
        let names: Vec<&String> = summary["windows"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["5h", "7d"]);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        assert!(page.contains(r#"usage_utilization_ratio{window="5h"} 0.25"#), "{page}");
        assert!(!page.contains(r#"window="m0""#), "a window no longer reported is still shown: {page}");
    }

    #[test]
    fn a_response_without_the_headers_changes_nothing() {
        let (g, _registry) = gauges();
        g.observe(&report(&["5h"]));
        let mut other = HeaderMap::new();
        other.insert("content-type", HeaderValue::from_static("application/json"));
        g.observe(&other);
        assert_eq!(g.summary().unwrap()["windows"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn window_names_are_bounded() {
        let (g, _registry) = gauges();
        let mut headers = HeaderMap::new();
        for i in 0..40 {
            headers.insert(
                http::HeaderName::from_bytes(
                    format!("{RATELIMIT_UNIFIED_PREFIX}w{i}-utilization").as_bytes(),
                )
                .unwrap(),
                HeaderValue::from_static("0.1"),
            );
        }
        g.observe(&headers);
        let summary = g.summary().unwrap();
        assert_eq!(summary["windows"].as_object().unwrap().len(), MAX_WINDOWS);
    }
}
