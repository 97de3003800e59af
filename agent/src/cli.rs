//! Command-line and environment configuration. Every flag can also be set as `SIDECRED_<NAME>`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use sidecred_proto::anthropic;
use std::path::PathBuf;
use std::time::Duration;

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

pub use sidecred_logging::LogFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: refresh the token before it expires and serve it on the socket.
    Run(RunArgs),
    /// Show the state of the running agent, or of the credentials file when no agent answers (exit 0
    /// when a valid token is there; usable as an exec probe).
    Status(StatusArgs),
    /// Ask the running agent to refresh the token now.
    Refresh(SocketArgs),
    /// Log in to a Claude Pro/Max account (OAuth with PKCE) and save the credentials.
    Login(LoginArgs),
    /// Ask the API whether the token is accepted (refreshing it first when it has expired).
    Validate(AccountArgs),
    /// Show the account behind the token: email, organization, plan.
    Info(AccountArgs),
    /// Remove the stored credentials.
    Logout(LogoutArgs),
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
}

#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The agent's Unix socket.
    #[arg(long, env = "SIDECRED_SOCKET", default_value_os_t = sidecred_proto::default_socket_path())]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// The credentials file read when no agent answers on the socket.
    #[arg(long, env = "SIDECRED_CREDENTIALS", default_value_os_t = default_credentials_path())]
    pub credentials: PathBuf,
    /// Who answers: the agent if one answers on the socket, else the file (`auto`); only the agent
    /// (`agent`, for probes that must fail while the agent is down); only the file (`file`).
    #[arg(long, env = "SIDECRED_SOURCE", value_enum, default_value_t = Source::Auto)]
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    Auto,
    Agent,
    File,
}

/// The token endpoint, as the account commands use it (`run` has its own copy of these flags).
#[derive(Debug, Args)]
pub struct TokenEndpointArgs {
    /// OAuth token endpoint.
    #[arg(long, env = "SIDECRED_TOKEN_URL", default_value = anthropic::DEFAULT_TOKEN_URL)]
    pub token_url: String,
    /// OAuth client id.
    #[arg(long, env = "SIDECRED_CLIENT_ID", default_value = anthropic::CLAUDE_CODE_CLIENT_ID)]
    pub client_id: String,
    /// User-Agent sent to the token endpoint and the API.
    #[arg(long, env = "SIDECRED_USER_AGENT", default_value = concat!("sidecred/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
    /// Timeout of one HTTP request.
    #[arg(long, env = "SIDECRED_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Base URL of the Anthropic API (for /v1/models and /api/oauth/profile).
    #[arg(long, env = "SIDECRED_API_BASE", default_value = anthropic::DEFAULT_API_BASE)]
    pub api_base: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoginMode {
    /// Print the URL, then read the `CODE#STATE` shown after sign-in from the terminal (headless).
    Paste,
    /// Receive the code on a loopback listener the browser is redirected to.
    Browser,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The credentials file to write (mode 0600; other fields of an existing file are kept).
    #[arg(long, env = "SIDECRED_CREDENTIALS", default_value_os_t = default_credentials_path())]
    pub credentials: PathBuf,
    /// `-` prints the credentials JSON on stdout instead of writing the file (messages go to stderr).
    #[arg(long, env = "SIDECRED_OUTPUT", value_parser = parse_output)]
    pub output: Option<Output>,
    /// `paste` (headless) or `browser` (loopback redirect). Default: `browser` when a display is
    /// available (macOS, or DISPLAY / WAYLAND_DISPLAY set), `paste` otherwise.
    #[arg(long, env = "SIDECRED_MODE", value_enum)]
    pub mode: Option<LoginMode>,
    /// OAuth authorization endpoint.
    #[arg(long, env = "SIDECRED_AUTHORIZE_URL", default_value = anthropic::DEFAULT_AUTHORIZE_URL)]
    pub authorize_url: String,
    /// Redirect URI of the paste mode: the page that shows `CODE#STATE` after sign-in.
    #[arg(long, env = "SIDECRED_REDIRECT_URI", default_value = anthropic::DEFAULT_MANUAL_REDIRECT_URI)]
    pub redirect_uri: String,
    /// Space-separated scopes to ask for.
    #[arg(long, env = "SIDECRED_SCOPES", default_value = anthropic::DEFAULT_SCOPES)]
    pub scopes: String,
    /// Port of the browser mode's loopback listener (0: any free port).
    #[arg(long, env = "SIDECRED_PORT", default_value_t = 0)]
    pub port: u16,
    /// Give up when no code arrived within this time.
    #[arg(long, env = "SIDECRED_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Browser mode: do not try to open a browser; only print the URL.
    #[arg(long, env = "SIDECRED_NO_OPEN")]
    pub no_open: bool,
    #[command(flatten)]
    pub endpoint: TokenEndpointArgs,
}

/// Where `login` puts the credentials besides the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
}

fn parse_output(s: &str) -> Result<Output, String> {
    match s {
        "-" => Ok(Output::Stdout),
        _ => Err(format!("`{s}`: only `-` (stdout) is accepted; use --credentials PATH to write a file")),
    }
}

#[derive(Debug, Args)]
pub struct AccountArgs {
    /// The credentials file used when no agent answers (and written back when an expired token is
    /// refreshed).
    #[arg(long, env = "SIDECRED_CREDENTIALS", default_value_os_t = default_credentials_path())]
    pub credentials: PathBuf,
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Where the token comes from: the agent if one answers, else the file (`auto`), or only one.
    #[arg(long, env = "SIDECRED_SOURCE", value_enum, default_value_t = Source::Auto)]
    pub source: Source,
    #[command(flatten)]
    pub endpoint: TokenEndpointArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The credentials file to remove the login from.
    #[arg(long, env = "SIDECRED_CREDENTIALS", default_value_os_t = default_credentials_path())]
    pub credentials: PathBuf,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Claude Code's credentials file (the seed). May be read-only, e.g. a mounted Kubernetes Secret.
    #[arg(long, env = "SIDECRED_CREDENTIALS", default_value_os_t = default_credentials_path())]
    pub credentials: PathBuf,
    /// Writable directory for rotated credentials. Without it, rotated credentials are written back to
    /// the credentials file itself (which then must be writable).
    #[arg(long, env = "SIDECRED_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Permission bits of the socket file (octal).
    #[arg(long, env = "SIDECRED_SOCKET_MODE", default_value = "0660", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Uids allowed to ask for the token (checked with SO_PEERCRED). Defaults to the agent's own uid.
    #[arg(long = "allow-uid", env = "SIDECRED_ALLOW_UID", value_delimiter = ',')]
    pub allow_uids: Vec<u32>,
    /// OAuth token endpoint.
    #[arg(long, env = "SIDECRED_TOKEN_URL", default_value = anthropic::DEFAULT_TOKEN_URL)]
    pub token_url: String,
    /// OAuth client id.
    #[arg(long, env = "SIDECRED_CLIENT_ID", default_value = anthropic::CLAUDE_CODE_CLIENT_ID)]
    pub client_id: String,
    /// User-Agent sent to the token endpoint.
    #[arg(long, env = "SIDECRED_USER_AGENT", default_value = concat!("sidecred/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
    /// Refresh when less than this is left (default: the larger of 5 minutes and 10% of the lifetime).
    #[arg(long, env = "SIDECRED_REFRESH_MARGIN", value_parser = humantime::parse_duration)]
    pub refresh_margin: Option<Duration>,
    /// Timeout of one request to the token endpoint.
    #[arg(long, env = "SIDECRED_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// First retry delay after a failed refresh; doubles up to --backoff-max.
    #[arg(long, env = "SIDECRED_BACKOFF_MIN", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    #[arg(long, env = "SIDECRED_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// How long a token request waits for a refresh when the token has already expired.
    #[arg(long, env = "SIDECRED_EXPIRED_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub expired_wait: Duration,
    /// After every refresh, write the live pair into this Kubernetes Secret (NAMESPACE/NAME), so a new pod
    /// starts from a live refresh token. Needs RBAC `get` and `patch` on that one Secret.
    #[arg(long, env = "SIDECRED_WRITE_BACK_SECRET", value_name = "NAMESPACE/NAME")]
    pub write_back_secret: Option<crate::writeback::SecretRef>,
    /// The key of the Secret that holds the credentials file.
    #[arg(long, env = "SIDECRED_WRITE_BACK_KEY", default_value = ".credentials.json")]
    pub write_back_key: String,
}

pub fn default_credentials_path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    home.join(".claude").join(".credentials.json")
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode =
        u32::from_str_radix(digits, 8).map_err(|_| format!("`{s}` is not an octal mode such as 0660"))?;
    if mode > 0o777 {
        return Err(format!("`{s}` is not a permission mode (at most 0777)"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("7777").is_err());
    }

    #[test]
    fn output_accepts_only_stdout() {
        assert_eq!(parse_output("-"), Ok(Output::Stdout));
        assert!(parse_output("/tmp/x").is_err());
    }
}
