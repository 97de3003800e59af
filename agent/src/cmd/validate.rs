//! `sidecred-agent validate`: asks the API whether the token is accepted (`GET /v1/models`).

use crate::api::Api;
use crate::cmd::args::AccountArgs;
use crate::cmd::fields::{fields, human_secs};
use crate::cmd::token_source::{obtain_token, TokenSource};
use crate::credentials::now_ms;
use crate::oauth::{OAuthClient, OAuthConfig};
use serde::Serialize;
use std::process::ExitCode;

#[derive(Debug, Serialize)]
struct ValidateReport {
    valid: bool,
    #[serde(flatten)]
    source: TokenSource,
    /// Why not, in one machine-readable word: `revoked`, `scope_missing`, `network`, `missing`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    refreshed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_s: Option<i64>,
}

pub async fn validate(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let oauth = OAuthClient::new(OAuthConfig::from(&args.endpoint))?;
    let api = Api::new(oauth.http().clone(), &args.api.api_base);
    let endpoint = api.models_url();
    let report = match obtain_token(&args.lookup, &oauth).await {
        Err(e) => ValidateReport {
            valid: false,
            source: e.source(&args.lookup),
            problem: Some(e.kind()),
            reason: Some(e.to_string()),
            endpoint: None,
            http_status: None,
            refreshed: false,
            token_fingerprint: None,
            expires_in_s: None,
        },
        Ok(got) => {
            let checked = api.check_models(&got.token).await;
            let (problem, reason) = match &checked {
                Ok(()) => (None, None),
                Err(e) => {
                    let (p, r) = e.explain();
                    (Some(p), Some(r))
                }
            };
            ValidateReport {
                valid: checked.is_ok(),
                source: got.source,
                problem,
                reason,
                http_status: match &checked {
                    Ok(()) => Some(200),
                    Err(e) => e.status(),
                },
                endpoint: Some(endpoint),
                refreshed: got.refreshed,
                token_fingerprint: Some(got.token.fingerprint()),
                expires_in_s: Some(crate::cmd::fields::secs_until(got.expires_at_ms, now_ms())),
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_validate(&report));
    }
    Ok(if report.valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn render_validate(r: &ValidateReport) -> String {
    let valid = if r.valid {
        let endpoint = r.endpoint.as_deref().unwrap_or("the API");
        format!("yes (GET {endpoint} accepted the token)")
    } else {
        "no".to_owned()
    };
    fields([
        ("valid", Some(valid)),
        ("reason", r.reason.clone().filter(|_| !r.valid)),
        ("source", Some(r.source.to_string())),
        (
            "refreshed",
            r.refreshed.then(|| "yes (the token had expired; the rotated pair was saved)".to_owned()),
        ),
        ("token", r.token_fingerprint.clone()),
        ("expires in", r.expires_in_s.map(human_secs)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_text_is_aligned() {
        let valid = ValidateReport {
            valid: true,
            source: TokenSource::File { credentials: "/c.json".into() },
            problem: None,
            reason: None,
            endpoint: Some("https://api.test/v1/models".into()),
            http_status: Some(200),
            refreshed: true,
            token_fingerprint: Some("sha256:abcd".into()),
            expires_in_s: Some(28_800),
        };
        assert_eq!(
            render_validate(&valid),
            "valid:         yes (GET https://api.test/v1/models accepted the token)\n\
             source:        file (/c.json)\n\
             refreshed:     yes (the token had expired; the rotated pair was saved)\n\
             token:         sha256:abcd\n\
             expires in:    8h\n"
        );
        let invalid = ValidateReport {
            valid: false,
            source: TokenSource::Agent { socket: "/run/s.sock".into() },
            problem: Some("revoked"),
            reason: Some("the API rejected the token".into()),
            endpoint: None,
            http_status: Some(401),
            refreshed: false,
            token_fingerprint: None,
            expires_in_s: None,
        };
        assert_eq!(
            render_validate(&invalid),
            "valid:         no\n\
             reason:        the API rejected the token\n\
             source:        agent (/run/s.sock)\n"
        );
    }
}
