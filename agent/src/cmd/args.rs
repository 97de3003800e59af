//! The flag groups several commands share, each declared once and flattened where it is used. Every
//! flag can also be set as `SIDECRED_<NAME>`.

use crate::oauth::OAuthConfig;
use clap::{Args, ValueEnum};
use sidecred_proto::anthropic;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The agent's Unix socket.
    #[arg(long, env = "SIDECRED_SOCKET", default_value_os_t = sidecred_proto::default_socket_path())]
    pub socket: PathBuf,
}

/// The credentials file. Each command says what it does with it, with `mut_arg("credentials", ..)`.
#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// Claude Code's credentials file.
    #[arg(
        id = "credentials",
        long = "credentials",
        value_name = "CREDENTIALS",
        env = "SIDECRED_CREDENTIALS",
        default_value_os_t = default_credentials_path()
    )]
    pub path: PathBuf,
}

pub fn default_credentials_path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    home.join(".claude").join(".credentials.json")
}

/// Where a one-shot command looks: the running agent on its socket, or the credentials file.
#[derive(Debug, Args)]
pub struct LookupArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub credentials: CredentialsArgs,
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

/// Claude's OAuth token endpoint and how to call it.
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
}

impl From<&TokenEndpointArgs> for OAuthConfig {
    fn from(args: &TokenEndpointArgs) -> Self {
        OAuthConfig {
            token_url: args.token_url.clone(),
            client_id: args.client_id.clone(),
            user_agent: args.user_agent.clone(),
            timeout: args.request_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Base URL of the Anthropic API (for /v1/models and /api/oauth/profile).
    #[arg(long, env = "SIDECRED_API_BASE", default_value = anthropic::DEFAULT_API_BASE)]
    pub api_base: String,
}

/// `validate` and `info`: a token from the agent or the file, and the API to show it to.
#[derive(Debug, Args)]
#[command(mut_arg("credentials", |a| a.help(
    "The credentials file used when no agent answers (and written back when an expired token is refreshed)"
)))]
#[command(mut_arg("source", |a| a.help(
    "Where the token comes from: the agent if one answers, else the file (`auto`), or only one"
)))]
pub struct AccountArgs {
    #[command(flatten)]
    pub lookup: LookupArgs,
    #[command(flatten)]
    pub endpoint: TokenEndpointArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
