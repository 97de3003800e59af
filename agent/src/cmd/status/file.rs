//! `status` when no agent answers: the login in the credentials file, judged by itself.

use super::{print_usage_text, with_usage, Usage};
use crate::cmd::fields::{fields, human_secs, login_age, rfc3339, secs_until};
use crate::credentials::{now_ms, Credentials};
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;

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
    /// When the login was made (epoch ms), if the file records it; `login_clock` says whether that is
    /// the login itself (`login`) or when an agent first saw it (`first_seen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_started_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_clock: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_age_s: Option<u64>,
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
        login_started_at_ms: None,
        login_clock: None,
        login_age_s: None,
        agent: None,
    };
    match Credentials::read(path) {
        Ok(c) => {
            if let Some(clock) = c.login_clock() {
                status.login_started_at_ms = Some(clock.started_at_ms);
                status.login_clock = Some(clock.start.as_str());
                status.login_age_s = Some(clock.age(now_ms).as_secs());
            }
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
        ("login age", login_age_line(s)),
        ("next step", next_step),
    ])
}

const UNKNOWN_AGE: &str = "unknown: the file carries no record of when this login was made (an agent \
                           counts its age from when it first sees it)";

fn login_age_line(s: &FileStatus) -> Option<String> {
    if !matches!(s.state, FileState::Valid | FileState::Expired) {
        return None;
    }
    Some(match (s.login_started_at_ms, s.login_clock, s.login_age_s) {
        (Some(at), Some(clock), Some(age_s)) => {
            login_age(at, clock, at.saturating_add(age_s.saturating_mul(1000)), None)
        }
        _ => UNKNOWN_AGE.to_owned(),
    })
}

/// Prints the file's status and returns the exit code: success only for a valid token.
pub(super) fn print_file_status(
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
    fn the_login_age_is_read_from_the_file_or_said_to_be_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = 86_400_000;
        let now = 1_800_000_000_000u64;
        let p = write(
            dir.path(),
            &format!(
                r#"{{"claudeAiOauth":{{"accessToken":"a","refreshToken":"r","expiresAt":{}}},"sidecred":{{"loginStartedAt":{},"loginClock":"login"}}}}"#,
                now + 3_600_000,
                now - 51 * day
            ),
        );
        let s = file_status(&p, now);
        assert_eq!((s.login_clock, s.login_age_s), (Some("login"), Some(51 * 86_400)));
        let text = render_file_status(&s);
        assert!(text.contains("login age:     51 days 0h (logged in 2026-11-25T08:00:00Z)"), "{text}");
        let p =
            write(dir.path(), r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1}}"#);
        let text = render_file_status(&file_status(&p, now));
        assert!(text.contains("login age:     unknown: the file carries no record"), "{text}");
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
                 scopes:        user:inference\n\
                 login age:     {UNKNOWN_AGE}\n"
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
                 login age:     {UNKNOWN_AGE}\n\
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
}
