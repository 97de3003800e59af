//! The command line: one file per subcommand, each declaring its own flags next to its code. The flag
//! groups several commands share are in [`args`].

mod args;
mod fields;
mod info;
mod login;
mod logout;
mod refresh;
mod run;
mod status;
mod terminal;
mod token_source;
mod usage;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub use sidecred_logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "sidecred-agent",
    version,
    about = "Owns Claude OAuth credentials and serves the access token over a Unix socket"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "SIDECRED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: refresh the token before it expires and serve it on the socket.
    Run(Box<run::RunArgs>),
    /// Show the state of the running agent, or of the credentials file when no agent answers (exit 0
    /// when a valid token is there; usable as an exec probe).
    Status(status::StatusArgs),
    /// Ask the running agent to refresh the token now.
    Refresh(refresh::RefreshArgs),
    /// Log in to a Claude Pro/Max account (OAuth with PKCE) and save the credentials.
    Login(login::LoginArgs),
    /// Ask the API whether the token is accepted (refreshing it first when it has expired).
    Validate(args::AccountArgs),
    /// Show the account behind the token: email, organization, plan.
    Info(args::AccountArgs),
    /// Remove the stored credentials.
    Logout(logout::LogoutArgs),
}

impl Command {
    pub fn default_log_level(&self) -> tracing::Level {
        match self {
            Command::Run(_) => tracing::Level::INFO,
            _ => tracing::Level::WARN,
        }
    }

    /// The agent serves from memory; two workers keep a busy socket from starving the refresh task.
    /// The one-shot commands need only one.
    pub fn worker_threads(&self) -> usize {
        match self {
            Command::Run(_) => 2,
            _ => 1,
        }
    }

    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run(args) => run::run(*args).await,
            Command::Status(args) => status::status(args).await,
            Command::Refresh(args) => refresh::refresh(args).await,
            Command::Login(args) => login::login(args).await,
            Command::Validate(args) => validate::validate(args).await,
            Command::Info(args) => info::info(args).await,
            Command::Logout(args) => logout::logout(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Deployments and scripts set these; a shared flag group must not rename, drop or re-default one.
    #[test]
    fn every_flag_keeps_its_name_env_and_default() {
        let credentials = args::default_credentials_path().display().to_string();
        let socket = sidecred_proto::default_socket_path().display().to_string();
        let user_agent = concat!("sidecred/", env!("CARGO_PKG_VERSION"));
        use sidecred_proto::anthropic as a;
        let all = "run status login validate info logout";
        let table: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (all, "credentials", Some("SIDECRED_CREDENTIALS"), Some(&credentials)),
            ("run status refresh validate info", "socket", Some("SIDECRED_SOCKET"), Some(&socket)),
            (
                "run login status validate info",
                "token-url",
                Some("SIDECRED_TOKEN_URL"),
                Some(a::DEFAULT_TOKEN_URL),
            ),
            (
                "run login status validate info",
                "client-id",
                Some("SIDECRED_CLIENT_ID"),
                Some(a::CLAUDE_CODE_CLIENT_ID),
            ),
            ("run login status validate info", "user-agent", Some("SIDECRED_USER_AGENT"), Some(user_agent)),
            (
                "run login status validate info",
                "request-timeout",
                Some("SIDECRED_REQUEST_TIMEOUT"),
                Some("30s"),
            ),
            ("login status validate info", "api-base", Some("SIDECRED_API_BASE"), Some(a::DEFAULT_API_BASE)),
            ("status validate info", "source", Some("SIDECRED_SOURCE"), Some("auto")),
            ("status validate info", "json", None, None),
            ("run", "state-dir", Some("SIDECRED_STATE_DIR"), None),
            ("run", "socket-mode", Some("SIDECRED_SOCKET_MODE"), Some("0660")),
            ("run", "allow-uid", Some("SIDECRED_ALLOW_UID"), None),
            ("run", "refresh-margin", Some("SIDECRED_REFRESH_MARGIN"), None),
            ("run", "backoff-min", Some("SIDECRED_BACKOFF_MIN"), Some("1s")),
            ("run", "backoff-max", Some("SIDECRED_BACKOFF_MAX"), Some("5m")),
            ("run", "expired-wait", Some("SIDECRED_EXPIRED_WAIT"), Some("10s")),
            ("run", "idle-timeout", Some("SIDECRED_IDLE_TIMEOUT"), Some("5m")),
            ("run", "write-back-secret", Some("SIDECRED_WRITE_BACK_SECRET"), None),
            ("run", "write-back-key", Some("SIDECRED_WRITE_BACK_KEY"), Some(".credentials.json")),
            ("run", "static-token-env", Some("SIDECRED_STATIC_TOKEN_ENV"), None),
            ("run", "lease", Some("SIDECRED_LEASE"), None),
            ("run", "lease-holder", Some("SIDECRED_LEASE_HOLDER"), None),
            ("run", "lease-duration", Some("SIDECRED_LEASE_DURATION"), Some("15s")),
            ("run", "shutdown-write-wait", Some("SIDECRED_SHUTDOWN_WRITE_WAIT"), Some("5s")),
            ("run", "metrics-listen", Some("SIDECRED_METRICS_LISTEN"), None),
            ("run", "login-max-age", Some("SIDECRED_LOGIN_MAX_AGE"), Some("50days")),
            ("status", "usage", None, None),
            ("login", "output", Some("SIDECRED_OUTPUT"), None),
            ("login", "mode", Some("SIDECRED_MODE"), None),
            ("login", "authorize-url", Some("SIDECRED_AUTHORIZE_URL"), Some(a::DEFAULT_AUTHORIZE_URL)),
            ("login", "redirect-uri", Some("SIDECRED_REDIRECT_URI"), Some(a::DEFAULT_MANUAL_REDIRECT_URI)),
            ("login", "scopes", Some("SIDECRED_SCOPES"), Some(a::DEFAULT_SCOPES)),
            ("login", "port", Some("SIDECRED_PORT"), Some("0")),
            ("login", "timeout", Some("SIDECRED_TIMEOUT"), Some("5m")),
            ("login", "no-open", Some("SIDECRED_NO_OPEN"), None),
            ("login", "long-lived", Some("SIDECRED_LONG_LIVED"), None),
            ("logout", "yes", None, None),
        ];
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let mut expected: Vec<_> =
                table.iter().filter(|row| row.0.split(' ').any(|c| c == sub.get_name())).collect();
            expected.sort_by_key(|row| row.1);
            let mut actual: Vec<_> = sub.get_arguments().filter(|a| a.get_id() != "help").collect();
            actual.sort_by_key(|a| a.get_long().unwrap_or_default().to_owned());
            assert_eq!(
                actual.iter().map(|a| a.get_long().unwrap_or_default()).collect::<Vec<_>>(),
                expected.iter().map(|row| row.1).collect::<Vec<_>>(),
                "the flags of `{}`",
                sub.get_name()
            );
            for (arg, (_, long, env, default)) in actual.iter().zip(expected) {
                let what = format!("`{} --{long}`", sub.get_name());
                assert_eq!(arg.get_env().and_then(|e| e.to_str()), *env, "env of {what}");
                let defaults: Vec<_> = arg.get_default_values().iter().filter_map(|d| d.to_str()).collect();
                assert_eq!(defaults.first().copied(), *default, "default of {what}");
                assert!(defaults.len() <= 1, "one default for {what}");
            }
        }
        let logout = cli.find_subcommand("logout").expect("logout");
        let yes = logout.get_arguments().find(|a| a.get_long() == Some("yes")).expect("--yes");
        assert_eq!(yes.get_short(), Some('y'));
    }
}
