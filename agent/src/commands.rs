//! Commands that talk to a running agent over its socket (`status` falls back to the credentials
//! file when no agent answers).

use crate::cli::{SocketArgs, Source, StatusArgs};
use anyhow::Context;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::StatusReport;
use std::process::ExitCode;

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut agent_problem = None;
    if args.source != Source::File {
        match agent_status(&args.socket.socket).await {
            Ok(report) => return print_agent_status(&report, args.json),
            Err(e) if args.source == Source::Auto && e.is_connection_failure() => {
                agent_problem = Some(format!("no agent answered on {}", args.socket.socket.display()));
            }
            Err(e @ ClientError::Connect { .. }) => return Err(e.into()),
            Err(e) => return Err(e).context("asking the agent for its status"),
        }
    }
    crate::account::print_file_status(&args.credentials, args.json, agent_problem)
}

async fn agent_status(socket: &std::path::Path) -> Result<StatusReport, ClientError> {
    Client::connect(socket).await?.status().await
}

fn print_agent_status(report: &StatusReport, json: bool) -> anyhow::Result<ExitCode> {
    let healthy = report.state.is_some_and(|s| s.serves_token());
    if json {
        let mut value = serde_json::to_value(report)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("source".into(), "agent".into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("source:        agent\n{}", render_status(report));
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn refresh(args: SocketArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.socket).await?;
    let grant = client.refresh().await.context("the agent could not refresh the token")?;
    println!(
        "refreshed: token {} expires in {}",
        grant.access_token,
        humantime::format_duration(std::time::Duration::from_secs(grant.expires_in_ms / 1000))
    );
    Ok(ExitCode::SUCCESS)
}

fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = r.state.map(|s| s.as_str()).unwrap_or("unknown");
    let _ = writeln!(out, "state:         {state}");
    if let Some(m) = &r.message {
        let _ = writeln!(out, "message:       {m}");
    }
    if let Some(a) = &r.account {
        let _ = writeln!(out, "account:       {a}");
    }
    if let Some(s) = &r.subscription_type {
        let _ = writeln!(out, "subscription:  {s}");
    }
    if let Some(fp) = &r.token_fingerprint {
        let _ = writeln!(out, "token:         {fp}");
    }
    if let Some(s) = r.expires_in_s {
        let _ = writeln!(out, "expires in:    {}", human_secs(s));
    }
    if let Some(s) = r.next_refresh_in_s {
        let _ = writeln!(out, "next refresh:  in {}", human_secs(s));
    }
    let _ = writeln!(out, "refreshes:     {}", r.refresh_count);
    if let Some(ms) = r.last_refresh_at_ms {
        let _ = writeln!(out, "last refresh:  {}", human_ago(ms));
    }
    if let Some(e) = &r.last_error {
        let when = r.last_error_at_ms.map(human_ago).unwrap_or_default();
        let _ = writeln!(out, "last error:    {e} ({when})");
    }
    if !r.scopes.is_empty() {
        let _ = writeln!(out, "scopes:        {}", r.scopes.join(" "));
    }
    if let Some(p) = &r.seed_path {
        let _ = writeln!(out, "credentials:   {p}");
    }
    if let Some(p) = &r.persist_path {
        let _ = writeln!(out, "saves to:      {p}");
    }
    let _ = writeln!(out, "agent:         {} (up {})", r.agent_version, human_secs(r.uptime_s as i64));
    out
}

use crate::account::human_secs;

fn human_ago(at_ms: u64) -> String {
    let now = crate::credentials::now_ms();
    format!("{} ago", human_secs((now.saturating_sub(at_ms) / 1000) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_proto::TokenState;

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
            render_status(&full),
            "state:         degraded\n\
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
            render_status(&bare),
            "state:         unknown\nrefreshes:     0\nagent:         1.2.3 (up 0s)\n"
        );
    }
}
