//! `status --usage`: the account's usage windows, read from `GET /api/oauth/usage` with the token the
//! agent serves (or the file's). The agent asks the API itself rather than a forwarder: it need not know
//! where forwarders run (there may be none, or many), and the endpoint answers without spending a
//! message, where a forwarder only knows what the last message's headers said. Opt-in, so the status
//! probes never call the API.

use crate::api::Api;
use crate::cmd::args::{ApiArgs, LookupArgs, TokenEndpointArgs};
use crate::cmd::token_source::obtain_token;
use crate::oauth::{OAuthClient, OAuthConfig};
use serde::Serialize;
use serde_json::Value;

/// The longest window name or reset text shown; the endpoint's own are a few dozen characters.
const MAX_TEXT: usize = 64;
/// At most this many windows are shown: more is not a real answer.
const MAX_WINDOWS: usize = 16;
/// The key of the extra-usage meter in the endpoint's answer, not a window.
const EXTRA_USAGE: &str = "extra_usage";

/// What the usage endpoint says: the windows, and the extra-usage meter when it reports one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub windows: Vec<Window>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_usage: Option<ExtraUsage>,
}

/// One window: utilization in percent, as the endpoint gives it, and when it resets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub name: String,
    pub utilization_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// The account's extra usage (paid beyond the plan) this month: `extra_usage` in the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtraUsage {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_credits: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
}

/// Text from the endpoint made safe to print: control characters (a newline could forge a status
/// line, an escape sequence repaint the terminal) become `?`, and it is cut at [`MAX_TEXT`] characters.
pub fn printable(text: &str) -> String {
    text.chars().take(MAX_TEXT).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A figure the endpoint gives, when it is one: finite and not negative.
fn figure(v: Option<&Value>) -> Option<f64> {
    v?.as_f64().filter(|f| f.is_finite() && *f >= 0.0)
}

/// What an answer holds: every key whose value has a numeric `utilization` is a window (more windows
/// may appear; one the plan lacks is null), and `extra_usage` is the meter. Nonsense figures are left
/// out rather than shown; names and times are made printable.
pub fn read(answer: &Value) -> Usage {
    let Some(obj) = answer.as_object() else { return Usage { windows: Vec::new(), extra_usage: None } };
    let windows = obj
        .iter()
        .filter(|(name, _)| name.as_str() != EXTRA_USAGE)
        .filter_map(|(name, w)| {
            let utilization = figure(w.get("utilization"))?;
            let resets_at = w.get("resets_at").and_then(Value::as_str).map(printable);
            Some(Window { name: printable(name), utilization_percent: utilization, resets_at })
        })
        .take(MAX_WINDOWS)
        .collect();
    let extra_usage = obj.get(EXTRA_USAGE).filter(|v| v.is_object()).map(|e| ExtraUsage {
        enabled: e.get("is_enabled").and_then(Value::as_bool).unwrap_or(false),
        used_credits: figure(e.get("used_credits")),
        monthly_limit: figure(e.get("monthly_limit")),
        utilization_percent: figure(e.get("utilization")),
    });
    Usage { windows, extra_usage }
}

/// `status` lines: `five_hour  82 %, resets 2026-11-30T14:00:00+00:00`, then the extra-usage meter.
pub fn rows(result: &Result<Usage, String>) -> Vec<(String, Option<String>)> {
    let usage = match result {
        Err(e) => return vec![("usage".to_owned(), Some(format!("not available: {}", printable_long(e))))],
        Ok(usage) => usage,
    };
    let mut rows: Vec<(String, Option<String>)> = usage
        .windows
        .iter()
        .map(|w| {
            let resets = w.resets_at.as_deref().map(|r| format!(", resets {r}")).unwrap_or_default();
            (format!("usage {}", w.name), Some(format!("{:.0} %{resets}", w.utilization_percent)))
        })
        .collect();
    if rows.is_empty() {
        rows.push(("usage".to_owned(), Some("no windows reported".to_owned())));
    }
    if let Some(extra) = &usage.extra_usage {
        rows.push(("extra usage".to_owned(), Some(meter(extra))));
    }
    rows
}

/// `on, 1234.5 of 5000 used this month (25 %): billed beyond the plan` or `off`.
fn meter(e: &ExtraUsage) -> String {
    if !e.enabled {
        return "off (requests beyond the plan are refused, not billed)".to_owned();
    }
    let used = match (e.used_credits, e.monthly_limit) {
        (Some(used), Some(limit)) => format!(", {used} of {limit} used this month"),
        (Some(used), None) => format!(", {used} used this month"),
        _ => String::new(),
    };
    let percent = e.utilization_percent.map(|p| format!(" ({p:.0} %)")).unwrap_or_default();
    format!("on{used}{percent}: requests beyond the plan are billed")
}

/// An error sentence made printable; longer than a name, still bounded.
fn printable_long(text: &str) -> String {
    text.chars().take(400).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Reads the usage with the token `lookup` finds. An error is a sentence for the person, never
/// the token.
pub async fn fetch(
    lookup: &LookupArgs,
    endpoint: &TokenEndpointArgs,
    api: &ApiArgs,
) -> Result<Usage, String> {
    let oauth = OAuthClient::new(OAuthConfig::from(endpoint)).map_err(|e| e.to_string())?;
    let got = obtain_token(lookup, &oauth).await.map_err(|e| e.to_string())?;
    let api = Api::new(oauth.http().clone(), &api.api_base);
    let answer = api.usage(&got.token).await.map_err(|e| e.explain().1)?;
    Ok(read(&answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn windows_with_figures_are_kept_and_others_skipped() {
        let answer = json!({
            "five_hour": {"utilization": 82.0, "resets_at": "2026-11-30T14:00:00+00:00"},
            "seven_day": {"utilization": 41.5, "resets_at": null},
            "seven_day_opus": null,
            "extra": {"utilization": "lots"},
            "odd": {"utilization": -3.0},
            "extra_usage": {"is_enabled": false, "monthly_limit": null, "used_credits": null, "utilization": null},
        });
        let u = read(&answer);
        assert_eq!(u.windows.len(), 2, "{u:?}");
        assert_eq!(u.windows[0].name, "five_hour");
        assert_eq!(u.windows[0].utilization_percent, 82.0);
        assert_eq!(u.windows[1].resets_at, None);
        assert!(read(&json!([1, 2])).windows.is_empty());
        let extra = u.extra_usage.unwrap();
        assert!(!extra.enabled && extra.used_credits.is_none());
    }

    #[test]
    fn rows_read_as_an_operator_wants_them() {
        let w = vec![Window {
            name: "five_hour".into(),
            utilization_percent: 82.4,
            resets_at: Some("14:00".into()),
        }];
        let usage = Usage { windows: w, extra_usage: None };
        assert_eq!(
            rows(&Ok(usage)),
            vec![("usage five_hour".to_owned(), Some("82 %, resets 14:00".to_owned()))]
        );
        assert_eq!(rows(&Err("no agent".into()))[0].1.as_deref(), Some("not available: no agent"));
    }

    #[test]
    fn the_extra_usage_meter() {
        let answer = json!({
            "five_hour": {"utilization": 100.0},
            "extra_usage": {"is_enabled": true, "monthly_limit": 5000, "used_credits": 1234.5, "utilization": 24.69},
        });
        let r = rows(&Ok(read(&answer)));
        assert_eq!(r[1].0, "extra usage");
        assert_eq!(
            r[1].1.as_deref(),
            Some("on, 1234.5 of 5000 used this month (25 %): requests beyond the plan are billed")
        );
        let off = rows(&Ok(read(&json!({"extra_usage": {"is_enabled": false}}))));
        assert!(off[1].1.as_deref().unwrap().starts_with("off"), "{off:?}");
        let odd =
            read(&json!({"extra_usage": {"is_enabled": "yes", "used_credits": -1, "utilization": "NaN"}}));
        assert_eq!(
            odd.extra_usage,
            Some(ExtraUsage {
                enabled: false,
                used_credits: None,
                monthly_limit: None,
                utilization_percent: None
            })
        );
        assert_eq!(read(&json!({"extra_usage": 5})).extra_usage, None);
    }

    /// Found by review: a window named with a newline printed a forged `state: valid` line.
    #[test]
    fn text_from_the_endpoint_cannot_forge_a_line_or_flood_the_terminal() {
        let answer = json!({
            "x\nstate: valid\nexpires in": {"utilization": 1.0, "resets_at": "soon\r\u{1b}[2Jcleared"},
            "long": {"utilization": 1.0, "resets_at": "y".repeat(10_000)},
        });
        let text: String = rows(&Ok(read(&answer)))
            .into_iter()
            .map(|(l, v)| format!("{l}: {}\n", v.unwrap_or_default()))
            .collect();
        assert!(!text.lines().any(|l| l.starts_with("state")), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        assert!(text.len() < 400, "{}", text.len());
        let many: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("w{i}"), json!({"utilization": 1.0}))).collect();
        assert_eq!(read(&Value::Object(many)).windows.len(), MAX_WINDOWS);
        assert_eq!(printable_long("a\nb"), "a?b");
    }
}
