//! `sidecred-agent status`: the running agent's state, or the credentials file's when no agent answers.
//! Exit 0 only when a valid token is there, so it serves as an exec probe.

use crate::cmd::args::{ApiArgs, LookupArgs, Source, TokenEndpointArgs};
use crate::cmd::fields::{fields, human_ago, human_secs, rfc3339, secs_until};
use crate::cmd::usage;
use crate::credentials::{now_ms, Credentials};
use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{Role, StatusReport};
use std::path::Path;
use std::process::ExitCode;

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

type Usage = Result<Vec<usage::Window>, String>;

/// Adds the usage windows to a JSON status, or prints them after a text one.
fn with_usage(value: &mut serde_json::Value, usage: Option<&Usage>) {
    if let (Some(u), Some(obj)) = (usage, value.as_object_mut()) {
        let v = match u {
            Ok(windows) => serde_json::json!({ "windows": windows }),
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

// ---------------------------------------------------------------------------------------------
// from the agent

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

// ---------------------------------------------------------------------------------------------
// from the file

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Valid,
    Expired,
    /// No file, or a file without a login in it (only `mcpOAuth` after a logout).
    Missing,
    /// A file that cannot be read or parsed; `field` names the part at fault.
    Unreadable,
}

impl FileState {
    fn as_str(self) -> &'static str {
        match self {
            FileState::Valid => "valid",
            FileState::Expired => "expired",
            FileState::Missing => "missing",
            FileState::Unreadable => "unreadable",
        }
    }
}

/// What `status` says when the file answered.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub source: &'static str,
    pub credentials: String,
    pub state: FileState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Negative once expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<i64>,
    pub scopes: Vec<String>,
    /// Whether the login has a refresh token (a long-lived login has none and is never refreshed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Why no agent answered, when the file stood in for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Reads `path` and judges the login in it at `now_ms`.
pub fn file_status(path: &Path, now_ms: u64) -> FileStatus {
    let mut status = FileStatus {
        source: "file",
        credentials: path.display().to_string(),
        state: FileState::Missing,
        problem: None,
        field: None,
        token_fingerprint: None,
        expires_at_ms: None,
        expires_in_s: None,
        scopes: Vec::new(),
        refreshable: None,
        subscription_type: None,
        account: None,
        agent: None,
    };
    match Credentials::read(path) {
        Ok(c) => {
            status.state = if c.expires_at_ms > now_ms { FileState::Valid } else { FileState::Expired };
            status.token_fingerprint = Some(c.access_token.fingerprint());
            status.expires_at_ms = Some(c.expires_at_ms);
            status.expires_in_s = Some(secs_until(c.expires_at_ms, now_ms));
            status.scopes = c.scopes;
            status.refreshable = Some(c.refresh_token.is_some());
            status.subscription_type = c.subscription_type;
            status.account = c.account;
        }
        Err(e) => {
            status.state = if e.is_no_login() { FileState::Missing } else { FileState::Unreadable };
            status.field = e.field().map(str::to_owned);
            status.problem = Some(e.to_string());
        }
    }
    status
}

pub fn render_file_status(s: &FileStatus) -> String {
    let source = match &s.agent {
        Some(why) => format!("file ({why})"),
        None => "file".to_owned(),
    };
    let next_step = match s.state {
        FileState::Missing => Some(format!("sidecred-agent login --credentials {}", s.credentials)),
        FileState::Expired if s.refreshable == Some(false) => {
            Some(format!("sidecred-agent login --long-lived --credentials {}", s.credentials))
        }
        FileState::Expired => Some(format!(
            "sidecred-agent validate --credentials {} (refreshes it), or start the agent",
            s.credentials
        )),
        FileState::Valid | FileState::Unreadable => None,
    };
    fields([
        ("source", Some(source)),
        ("credentials", Some(s.credentials.clone())),
        ("state", Some(s.state.as_str().to_owned())),
        ("problem", s.problem.clone()),
        ("field", s.field.clone()),
        ("account", s.account.clone()),
        ("subscription", s.subscription_type.clone()),
        ("token", s.token_fingerprint.clone()),
        ("expires in", s.expires_in_s.filter(|secs| *secs > 0).map(human_secs)),
        (
            "expired",
            s.expires_in_s
                .filter(|secs| *secs <= 0)
                .map(|secs| format!("{} ago", human_secs(secs.saturating_neg()))),
        ),
        ("expires at", s.expires_at_ms.map(rfc3339)),
        ("scopes", (!s.scopes.is_empty()).then(|| s.scopes.join(" "))),
        (
            "refresh",
            (s.refreshable == Some(false))
                .then(|| "never (no refresh token: a long-lived login, served until it expires)".to_owned()),
        ),
        ("next step", next_step),
    ])
}

/// Prints the file's status and returns the exit code: success only for a valid token.
fn print_file_status(
    path: &Path,
    json: bool,
    agent: Option<String>,
    usage: Option<&Usage>,
) -> anyhow::Result<ExitCode> {
    let mut status = file_status(path, now_ms());
    status.agent = agent;
    if json {
        let mut value = serde_json::to_value(&status)?;
        with_usage(&mut value, usage);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render_file_status(&status));
        print_usage_text(usage);
    }
    Ok(if status.state == FileState::Valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_proto::TokenState;
    use std::path::PathBuf;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join(".credentials.json");
        std::fs::write(&p, body).expect("write");
        p
    }

    #[test]
    fn a_time_past_any_calendar_in_the_file_is_reported_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 2^63 ms: past i64 as milliseconds, and past year 9999 as a date.
        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":9223372036854775808}}"#,
        );
        let status = file_status(&p, 1_800_000_000_000);
        assert_eq!(status.state, FileState::Valid);
        assert_eq!(status.expires_in_s, Some(9_223_370_236_854_775));
        let text = render_file_status(&status);
        assert!(text.contains("expires at:    9999-12-31T23:59:59Z"), "{text}");
    }

    #[test]
    fn file_status_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000_000u64;
        let missing = file_status(&dir.path().join("nope.json"), now);
        assert_eq!(missing.state, FileState::Missing);

        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","refreshToken":"sk-secret-r","expiresAt":1800000600000,"scopes":["user:inference"],"subscriptionType":"max"}}"#,
        );
        let valid = file_status(&p, now);
        assert_eq!(valid.state, FileState::Valid);
        assert_eq!(valid.expires_in_s, Some(600));
        assert_eq!(valid.subscription_type.as_deref(), Some("max"));
        let text = render_file_status(&valid) + &serde_json::to_string(&valid).expect("json");
        assert!(!text.contains("sk-secret"), "{text}");

        let expired = file_status(&p, now + 3_600_000);
        assert_eq!(expired.state, FileState::Expired);
        assert!(render_file_status(&expired).contains("expired:       50m ago"));

        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","refreshToken":"r","expiresAt":"soon"}}"#,
        );
        let bad = file_status(&p, now);
        assert_eq!(bad.state, FileState::Unreadable);
        assert_eq!(bad.field.as_deref(), Some("claudeAiOauth.expiresAt"));

        let p = write(dir.path(), r#"{"mcpOAuth":{}}"#);
        assert_eq!(file_status(&p, now).state, FileState::Missing);

        let p = write(dir.path(), "garbage sk-secret");
        let garbage = file_status(&p, now);
        assert_eq!(garbage.state, FileState::Unreadable);
        assert!(!garbage.problem.unwrap_or_default().contains("sk-secret"));
    }

    #[test]
    fn file_status_text_is_aligned_and_says_what_to_do_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000_000u64;
        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","refreshToken":"sk-secret-r","expiresAt":1800000600000,"scopes":["user:inference"],"subscriptionType":"max","emailAddress":"me@example.com"}}"#,
        );
        let shown = p.display().to_string();
        let mut valid = file_status(&p, now);
        valid.agent = Some("no agent answered on /run/s.sock".into());
        let fp = valid.token_fingerprint.clone().expect("fingerprint");
        assert_eq!(
            render_file_status(&valid),
            format!(
                "source:        file (no agent answered on /run/s.sock)\n\
                 credentials:   {shown}\n\
                 state:         valid\n\
                 account:       me@example.com\n\
                 subscription:  max\n\
                 token:         {fp}\n\
                 expires in:    10m\n\
                 expires at:    2027-01-15T08:10:00Z\n\
                 scopes:        user:inference\n"
            )
        );
        let expired = file_status(&p, now + 3_600_000);
        assert_eq!(
            render_file_status(&expired),
            format!(
                "source:        file\n\
                 credentials:   {shown}\n\
                 state:         expired\n\
                 account:       me@example.com\n\
                 subscription:  max\n\
                 token:         {fp}\n\
                 expired:       50m ago\n\
                 expires at:    2027-01-15T08:10:00Z\n\
                 scopes:        user:inference\n\
                 next step:     sidecred-agent validate --credentials {shown} (refreshes it), or start the agent\n"
            )
        );
        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":"soon"}}"#,
        );
        let bad = file_status(&p, now);
        let problem = bad.problem.clone().expect("problem");
        assert_eq!(
            render_file_status(&bad),
            format!(
                "source:        file\n\
                 credentials:   {shown}\n\
                 state:         unreadable\n\
                 problem:       {problem}\n\
                 field:         claudeAiOauth.expiresAt\n"
            )
        );
        let gone = dir.path().join("gone.json");
        let gone_shown = gone.display().to_string();
        let missing = file_status(&gone, now);
        let problem = missing.problem.clone().expect("problem");
        assert_eq!(
            render_file_status(&missing),
            format!(
                "source:        file\n\
                 credentials:   {gone_shown}\n\
                 state:         missing\n\
                 problem:       {problem}\n\
                 next step:     sidecred-agent login --credentials {gone_shown}\n"
            )
        );
    }

    #[test]
    fn a_file_login_without_a_refresh_token_says_it_is_never_refreshed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000_000u64;
        let p = write(
            dir.path(),
            r#"{"claudeAiOauth":{"accessToken":"sk-secret-a","expiresAt":1800000600000,"scopes":["user:inference"]}}"#,
        );
        let valid = file_status(&p, now);
        assert_eq!(valid.state, FileState::Valid);
        assert_eq!(valid.refreshable, Some(false));
        let text = render_file_status(&valid);
        assert!(
            text.contains(
                "refresh:       never (no refresh token: a long-lived login, served until it expires)\n"
            ),
            "{text}"
        );
        let expired = render_file_status(&file_status(&p, now + 3_600_000));
        let shown = p.display().to_string();
        assert!(
            expired.contains(&format!(
                "next step:     sidecred-agent login --long-lived --credentials {shown}\n"
            )),
            "{expired}"
        );
        let json = serde_json::to_value(&valid).expect("json");
        assert_eq!(json["refreshable"], false);
    }

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
