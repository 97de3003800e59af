//! `sidecred-agent info`: the account behind the token (email, organization, plan), from the API's
//! OAuth profile.

use crate::api::{Api, Profile};
use crate::cmd::args::AccountArgs;
use crate::cmd::fields::fields;
use crate::cmd::token_source::{obtain_token, TokenSource};
use crate::oauth::{OAuthClient, OAuthConfig};
use serde::Serialize;
use std::process::ExitCode;

#[derive(Debug, Serialize)]
struct InfoReport {
    #[serde(flatten)]
    source: TokenSource,
    #[serde(flatten)]
    profile: Profile,
    plan: Option<String>,
    subscription_type: Option<String>,
    /// Why the profile is not shown (an inference-only token cannot read it).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// What `info` says instead of a profile for a token without the profile scope.
const INFERENCE_ONLY: &str = "an inference-only token (a long-lived login) cannot read the account \
                              profile; `sidecred-agent validate` checks that the API accepts it";

pub async fn info(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let oauth = OAuthClient::new(OAuthConfig::from(&args.endpoint))?;
    let api = Api::new(oauth.http().clone(), &args.api.api_base);
    let got = match obtain_token(&args.lookup, &oauth).await {
        Ok(got) => got,
        Err(e) => {
            eprintln!("sidecred-agent: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // The profile endpoint always refuses a token without its scope: asking would only earn a 403.
    let (profile, note) = if got.lacks_profile_scope() {
        (Profile::default(), Some(INFERENCE_ONLY.to_owned()))
    } else {
        match api.profile(&got.token).await {
            Ok(p) => (p, None),
            Err(e) => {
                eprintln!("sidecred-agent: {}", e.explain().1);
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    let report = InfoReport {
        source: got.source,
        plan: profile.plan(),
        subscription_type: profile.subscription_type(),
        profile,
        note,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_info(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_info(r: &InfoReport) -> String {
    let p = &r.profile;
    let or_unknown = |v: &Option<String>| Some(v.clone().unwrap_or_else(|| "(unknown)".to_owned()));
    fields([
        ("email", or_unknown(&p.email)),
        ("name", p.display_name.clone()),
        ("account uuid", p.account_uuid.clone()),
        ("organization", or_unknown(&p.organization_name)),
        ("org uuid", p.organization_uuid.clone()),
        ("plan", or_unknown(&r.plan)),
        ("org type", p.organization_type.clone()),
        ("rate limits", p.rate_limit_tier.clone()),
        ("billing", p.billing_type.clone()),
        ("source", Some(r.source.to_string())),
        ("note", r.note.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_text_is_aligned_and_names_unknowns() {
        let full = InfoReport {
            source: TokenSource::File { credentials: "/c.json".into() },
            profile: Profile {
                email: Some("me@example.com".into()),
                display_name: Some("Me".into()),
                account_uuid: Some("acc-1".into()),
                organization_name: Some("Org".into()),
                organization_uuid: Some("org-1".into()),
                organization_type: Some("claude_max".into()),
                billing_type: Some("stripe".into()),
                rate_limit_tier: Some("tier-20x".into()),
                has_claude_max: Some(true),
                has_claude_pro: None,
            },
            plan: Some("Claude Max".into()),
            subscription_type: Some("max".into()),
            note: None,
        };
        assert_eq!(
            render_info(&full),
            "email:         me@example.com\n\
             name:          Me\n\
             account uuid:  acc-1\n\
             organization:  Org\n\
             org uuid:      org-1\n\
             plan:          Claude Max\n\
             org type:      claude_max\n\
             rate limits:   tier-20x\n\
             billing:       stripe\n\
             source:        file (/c.json)\n"
        );
        let bare = InfoReport {
            source: TokenSource::Agent { socket: "/s".into() },
            profile: Profile::default(),
            plan: None,
            subscription_type: None,
            note: None,
        };
        assert_eq!(
            render_info(&bare),
            "email:         (unknown)\n\
             organization:  (unknown)\n\
             plan:          (unknown)\n\
             source:        agent (/s)\n"
        );
        let inference_only = InfoReport { note: Some(INFERENCE_ONLY.to_owned()), ..bare };
        assert_eq!(
            render_info(&inference_only),
            format!(
                "email:         (unknown)\n\
                 organization:  (unknown)\n\
                 plan:          (unknown)\n\
                 source:        agent (/s)\n\
                 note:          {INFERENCE_ONLY}\n"
            )
        );
    }
}
