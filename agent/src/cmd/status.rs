//! `sidecred-agent status`: the running agent's state, or the credentials file's when no agent answers.
//! Exit 0 only when a valid token is there, so it serves as an exec probe.

use crate::cmd::args::{ApiArgs, LookupArgs, Source, TokenEndpointArgs};
use crate::cmd::fields::{fields, human_ago, human_secs, login_age};
use crate::cmd::usage;
use crate::credentials::now_ms;
use anyhow::Context;
use clap::Args;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{Role, StatusReport};
use std::path::Path;
use std::process::ExitCode;

mod file;

use file::print_file_status;

#[derive(Debug, Args)]
#[command(mut_arg("credentials", |a| a.help("The credentials file read when no agent answers on the socket")))]
pub struct StatusArgs {
    #[command(flatten)]
    pub lookup: LookupArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also show the account's usage windows, read from the API (`/api/oauth/usage`) with the current
    /// token. Off by default, so a status probe never calls the API.
    #[arg(long)]
    pub usage: bool,
    #[command(flatten)]
    pub endpoint: TokenEndpointArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

type Usage = Result<usage::Usage, String>;

/// Adds the usage windows to a JSON status, or prints them after a text one.
fn with_usage(value: &mut serde_json::Value, usage: Option<&Usage>) {
    if let (Some(u), Some(obj)) = (usage, value.as_object_mut()) {
        let v = match u {
            Ok(usage) => serde_json::json!(usage),
            Err(e) => serde_json::json!({ "error": e }),
        };
        obj.insert("usage".into(), v);
    }
}

fn print_usage_text(usage: Option<&Usage>) {
    if let Some(u) = usage {
        let rows = usage::rows(u);
        print!("{}", fields(rows.iter().map(|(label, value)| (label.as_str(), value.clone()))));
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let LookupArgs { socket, credentials, source } = &args.lookup;
    let usage = match args.usage {
        true => Some(usage::fetch(&args.lookup, &args.endpoint, &args.api).await),
        false => None,
    };
    let mut agent_problem = None;
    if *source != Source::File {
        match agent_status(&socket.socket).await {
            Ok(report) => return print_agent_status(&report, args.json, usage.as_ref()),
            Err(e) if *source == Source::Auto && e.is_connection_failure() => {
                agent_problem = Some(format!("no agent answered on {}", socket.socket.display()));
            }
            Err(e @ ClientError::Connect { .. }) => return Err(e.into()),
            Err(e) => return Err(e).context("asking the agent for its status"),
        }
    }
    print_file_status(&credentials.path, args.json, agent_problem, usage.as_ref())
}

async fn agent_status(socket: &Path) -> Result<StatusReport, ClientError> {
    Client::connect(socket).await?.status().await
}

fn print_agent_status(report: &StatusReport, json: bool, usage: Option<&Usage>) -> anyhow::Result<ExitCode> {
    let healthy = report.state.is_some_and(|s| s.serves_token());
    if json {
        let mut value = serde_json::to_value(report)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("source".into(), "agent".into());
        }
        with_usage(&mut value, usage);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render_agent_status(report));
        print_usage_text(usage);
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn render_agent_status(r: &StatusReport) -> String {
    let last_error = r.last_error.as_ref().map(|e| {
        let when = r.last_error_at_ms.map(human_ago).unwrap_or_default();
        format!("{e} ({when})")
    });
    fields([
        ("source", Some("agent".to_owned())),
        ("state", Some(r.state.map(|s| s.as_str()).unwrap_or("unknown").to_owned())),
        ("warning", r.warning.clone()),
        ("message", r.message.clone()),
        ("account", r.account.clone()),
        ("subscription", r.subscription_type.clone()),
        ("token", r.token_fingerprint.clone()),
        ("expires in", r.expires_in_s.map(human_secs)),
        ("next refresh", r.next_refresh_in_s.map(|s| format!("in {}", human_secs(s)))),
        (
            "login age",
            r.login_started_at_ms.map(|at| {
                login_age(at, r.login_clock.as_deref().unwrap_or_default(), now_ms(), r.login_max_age_s)
            }),
        ),
        ("refused by", r.refresh_refused_by.as_deref().map(describe_refusal)),
        ("role", r.role.map(|role| describe_role(role, r))),
        ("secret version", r.secret_resource_version.clone()),
        ("refreshes", Some(r.refresh_count.to_string())),
        ("last refresh", r.last_refresh_at_ms.map(human_ago)),
        ("last error", last_error),
        ("scopes", (!r.scopes.is_empty()).then(|| r.scopes.join(" "))),
        ("credentials", r.seed_path.clone()),
        ("saves to", r.persist_path.clone()),
        (
            "agent",
            Some(format!(
                "{} (up {})",
                r.agent_version,
                human_secs(i64::try_from(r.uptime_s).unwrap_or(i64::MAX))
            )),
        ),
    ])
}

/// Who spent the refresh token the endpoint refused, in words.
fn describe_refusal(cause: &str) -> String {
    match cause {
        "foreign" => "SOMETHING ELSE (another client is using this login)".to_owned(),
        "ours_spent" => "an agent of ours (see message)".to_owned(),
        "raced" => "the previous lease holder (see message)".to_owned(),
        other => other.to_owned(),
    }
}

/// `single`, or with a lease who holds it: "holder of ns/name", "follower (pod-b holds ns/name)".
fn describe_role(role: Role, r: &StatusReport) -> String {
    let lease = r.lease.as_deref().unwrap_or("?");
    match (role, r.lease_holder.as_deref()) {
        (Role::Single, _) => "single (no lease: this agent alone refreshes the login)".to_owned(),
        (Role::Holder, Some(me)) => format!("holder of the lease {lease} (as {me}): this agent refreshes"),
        (Role::Holder, None) => format!("holder of the lease {lease}: this agent refreshes"),
        (Role::Follower, Some(holder)) => {
            format!("follower ({holder} holds the lease {lease} and refreshes)")
        }
        (Role::Follower, None) => format!("follower (nobody is known to hold the lease {lease})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_proto::TokenState;

    #[test]
    fn a_static_token_is_announced_before_anything_else() {
        let r = StatusReport {
            state: Some(TokenState::Valid),
            warning: Some("STATIC TOKEN from $T: never refreshed".into()),
            message: Some("a static token".into()),
            token_fingerprint: Some("fp:1".into()),
            seed_path: Some("$T (a static token; no file is read or written)".into()),
            agent_version: "1.2.3".into(),
            ..Default::default()
        };
        assert_eq!(
            render_agent_status(&r),
            "source:        agent\n\
             state:         valid\n\
             warning:       STATIC TOKEN from $T: never refreshed\n\
             message:       a static token\n\
             token:         fp:1\n\
             refreshes:     0\n\
             credentials:   $T (a static token; no file is read or written)\n\
             agent:         1.2.3 (up 0s)\n"
        );
    }

    #[test]
    fn agent_status_text_is_aligned_and_skips_absent_fields() {
        let full = StatusReport {
            state: Some(TokenState::Degraded),
            message: Some("refreshes are failing".into()),
            account: Some("me@example.com".into()),
            subscription_type: Some("max".into()),
            token_fingerprint: Some("sha256:abcd".into()),
            expires_in_s: Some(3_600),
            next_refresh_in_s: Some(90),
            refresh_count: 3,
            last_error: Some("token endpoint answered 503".into()),
            scopes: vec!["user:inference".into(), "user:profile".into()],
            seed_path: Some("/seed/.credentials.json".into()),
            persist_path: Some("/state/credentials.json".into()),
            agent_version: "1.2.3".into(),
            uptime_s: 61,
            ..Default::default()
        };
        assert_eq!(
            render_agent_status(&full),
            "source:        agent\n\
             state:         degraded\n\
             message:       refreshes are failing\n\
             account:       me@example.com\n\
             subscription:  max\n\
             token:         sha256:abcd\n\
             expires in:    1h\n\
             next refresh:  in 1m 30s\n\
             refreshes:     3\n\
             last error:    token endpoint answered 503 ()\n\
             scopes:        user:inference user:profile\n\
             credentials:   /seed/.credentials.json\n\
             saves to:      /state/credentials.json\n\
             agent:         1.2.3 (up 1m 1s)\n"
        );
        let bare = StatusReport { agent_version: "1.2.3".into(), ..Default::default() };
        assert_eq!(
            render_agent_status(&bare),
            "source:        agent\nstate:         unknown\nrefreshes:     0\nagent:         1.2.3 (up 0s)\n"
        );
    }
}
