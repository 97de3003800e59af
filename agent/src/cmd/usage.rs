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

/// One window: utilization in percent, as the endpoint gives it, and when it resets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub name: String,
    pub utilization_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// The windows in an answer: every key whose value has a numeric `utilization` (more windows may
/// appear; one the plan lacks is null). Nonsense figures are left out rather than shown.
pub fn windows(answer: &Value) -> Vec<Window> {
    let Some(obj) = answer.as_object() else { return Vec::new() };
    obj.iter()
        .filter_map(|(name, w)| {
            let utilization = w.get("utilization")?.as_f64().filter(|u| u.is_finite() && *u >= 0.0)?;
            let resets_at = w.get("resets_at").and_then(Value::as_str).map(str::to_owned);
            Some(Window { name: name.clone(), utilization_percent: utilization, resets_at })
        })
        .take(16)
        .collect()
}

/// `status` lines: `five_hour  82 %, resets 2026-11-30T14:00:00+00:00`.
pub fn rows(result: &Result<Vec<Window>, String>) -> Vec<(String, Option<String>)> {
    match result {
        Err(e) => vec![("usage".to_owned(), Some(format!("not available: {e}")))],
        Ok(windows) if windows.is_empty() => {
            vec![("usage".to_owned(), Some("no windows reported".to_owned()))]
        }
        Ok(windows) => windows
            .iter()
            .map(|w| {
                let resets = w.resets_at.as_deref().map(|r| format!(", resets {r}")).unwrap_or_default();
                (format!("usage {}", w.name), Some(format!("{:.0} %{resets}", w.utilization_percent)))
            })
            .collect(),
    }
}

/// Reads the windows with the token `lookup` finds. An error is a sentence for the person, never
/// the token.
pub async fn fetch(
    lookup: &LookupArgs,
    endpoint: &TokenEndpointArgs,
    api: &ApiArgs,
) -> Result<Vec<Window>, String> {
    let oauth = OAuthClient::new(OAuthConfig::from(endpoint)).map_err(|e| e.to_string())?;
    let got = obtain_token(lookup, &oauth).await.map_err(|e| e.to_string())?;
    let api = Api::new(oauth.http().clone(), &api.api_base);
    let answer = api.usage(&got.token).await.map_err(|e| e.explain().1)?;
    Ok(windows(&answer))
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
        });
        let w = windows(&answer);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].name, "five_hour");
        assert_eq!(w[0].utilization_percent, 82.0);
        assert_eq!(w[1].resets_at, None);
        assert!(windows(&json!([1, 2])).is_empty());
    }

    #[test]
    fn rows_read_as_an_operator_wants_them() {
        let w = vec![Window {
            name: "five_hour".into(),
            utilization_percent: 82.4,
            resets_at: Some("14:00".into()),
        }];
        assert_eq!(rows(&Ok(w)), vec![("usage five_hour".to_owned(), Some("82 %, resets 14:00".to_owned()))]);
        assert_eq!(rows(&Err("no agent".into()))[0].1.as_deref(), Some("not available: no agent"));
    }
}
