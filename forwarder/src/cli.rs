//! Command-line and environment configuration. Every flag can also be set as `SIDECRED_<NAME>`.

use clap::Parser;
use sidecred_proto::anthropic;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "sidecred-forwarder",
    version,
    about = "Serves the Anthropic API with the Claude OAuth token held by sidecred-agent"
)]
pub struct Cli {
    /// Address to accept clients on (HTTP/1.1 and cleartext HTTP/2).
    #[arg(long, env = "SIDECRED_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Instead of serving: check that a forwarder answers `GET /livez` with 200 on --listen (0.0.0.0
    /// and [::] mean loopback) within 2 s, and exit 0, or print why not and exit 1. For exec probes: the
    /// kubelet's own HTTP probes reach the pod's IP, never a forwarder listening on loopback.
    #[arg(long)]
    pub probe: bool,
    /// The Anthropic API. Plain http is allowed (for tests and local fakes).
    #[arg(long, env = "SIDECRED_UPSTREAM", default_value = anthropic::DEFAULT_API_BASE, value_parser = parse_upstream)]
    pub upstream: http::Uri,
    /// PEM file of extra CA certificates to trust for the upstream and its TLS, on top of the built-in
    /// web roots: for a TLS-intercepting corporate proxy, or a private test upstream.
    #[arg(long, env = "SIDECRED_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// The agent's Unix socket.
    #[arg(long, env = "SIDECRED_SOCKET", default_value_os_t = sidecred_proto::default_socket_path())]
    pub socket: PathBuf,
    /// How long a request keeps trying to reach an agent that does not answer (e.g. while it restarts)
    /// before it is answered 503.
    #[arg(long, env = "SIDECRED_AGENT_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub agent_wait: Duration,
    /// How requests learn the agent's token: `subscribe` (the agent pushes each new token, revocation
    /// and degraded state on one connection per worker, and requests read it from memory), or
    /// `per-request` (every request, batched with those arriving meanwhile, asks the agent).
    #[arg(long, env = "SIDECRED_AGENT_MODE", value_enum, default_value_t = crate::agent::AgentMode::Subscribe)]
    pub agent_mode: crate::agent::AgentMode,
    /// Largest request body accepted (413 beyond). Accepts suffixes KiB, MiB, GiB, KB, MB, GB.
    #[arg(long, env = "SIDECRED_MAX_REQUEST_BODY", default_value = "32MiB", value_parser = parse_size)]
    pub max_request_body: u64,
    /// Request bodies up to this size are kept while they stream, so a request the upstream rejects
    /// with 401 can be retried once with a refreshed token. Larger ones get the 401 passed through.
    #[arg(long, env = "SIDECRED_RETRY_BODY_LIMIT", default_value = "1MiB", value_parser = parse_size)]
    pub retry_body_limit: u64,
    /// File of keys clients must present (`x-api-key` or `Authorization: Bearer`), one per line,
    /// `#` starts a comment; a key may be followed by `name=NAME rpm=N burst=N concurrent=N` (its name
    /// in metrics, its requests per minute and burst, its requests in flight). Without it, anyone who
    /// can reach --listen can use the account.
    #[arg(long, env = "SIDECRED_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// On SIGTERM, how long to go on accepting connections while `/readyz` answers 503, before the drain
    /// begins: a Service's endpoints and load balancers take a few seconds to stop sending new connections
    /// to a terminating pod, and a closed listener would refuse them. 0 for a forwarder nothing balances
    /// to. SIGINT (Ctrl-C), or a second signal during the delay, skips it.
    #[arg(long, env = "SIDECRED_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests and streams may take to finish (after the
    /// shutdown delay).
    #[arg(long, env = "SIDECRED_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// On SIGTERM/SIGINT, how long an idle HTTP/1 keep-alive connection stays open, answering what comes
    /// with `Connection: close`, before it is closed (a client learns of the close from a response instead
    /// of losing a request sent as the connection closes). 0 closes idle connections at once.
    #[arg(long, env = "SIDECRED_DRAIN_LINGER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub drain_linger: Duration,
    /// Log format on stderr (filter with SIDECRED_LOG, e.g. `info` or `warn,sidecred_forwarder::access=info`).
    #[arg(long, env = "SIDECRED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Runtime worker threads.
    #[arg(long, env = "SIDECRED_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
    /// A connection must deliver its first request (HTTP/1 head or HTTP/2 stream) this soon after it
    /// is accepted, or it is closed: silent, stuck in the protocol sniff or the HTTP/2 preface, or
    /// sending its first head byte by byte.
    #[arg(long, env = "SIDECRED_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub first_request_timeout: Duration,
    /// A connection without a request in flight for this long is closed (HTTP/2: GOAWAY); on HTTP/1
    /// also when its next request head has begun to arrive but not ended.
    #[arg(long, env = "SIDECRED_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,
    /// How often an HTTP/2 client is pinged when it has sent nothing.
    #[arg(long, env = "SIDECRED_HTTP2_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = parse_timeout)]
    pub http2_keepalive_interval: Duration,
    /// An HTTP/2 client that does not answer a ping within this is dropped, streams and all.
    #[arg(long, env = "SIDECRED_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_timeout)]
    pub http2_keepalive_timeout: Duration,
    /// Client connections served at once; more wait in the listen backlog. Default: as many as the
    /// file-descriptor limit allows (two descriptors each, client and upstream), at most 10000.
    #[arg(long, env = "SIDECRED_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// The uid the agent runs as: whoever answers on --socket as another uid is refused (checked with
    /// SO_PEERCRED) and gets no request. Default: this process's own uid.
    #[arg(long, env = "SIDECRED_AGENT_UID")]
    pub agent_uid: Option<u32>,
    /// Also serve `/metrics` (Prometheus) on this address, e.g. a port clients of --listen cannot
    /// reach. `/metrics` is on --listen in any case, unauthenticated like the probes.
    #[arg(long, env = "SIDECRED_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Let requests through that the API bills to the account's extra usage (paid) instead of its
    /// plan. Off by default: once an answer shows a request was billed, requests that would be billed
    /// the same way are answered 429 here until the plan pays again. Billed answers are counted and
    /// shown either way.
    #[arg(long, env = "SIDECRED_ALLOW_EXTRA_USAGE")]
    pub allow_extra_usage: bool,
    /// Which clients to serve: `any`, or `claude-code` (Claude Code's own requests, by its user-agent
    /// and x-app headers; others get 403). A guard for the operator's own traffic, not a security
    /// boundary: any client can send those headers.
    #[arg(long, env = "SIDECRED_CLIENTS", value_enum, default_value = "any")]
    pub clients: crate::account::guard::Clients,
    /// A pause after a billed answer with no window reset to wait for lasts this long; then one request
    /// is let through to see whether the plan pays again.
    #[arg(long, env = "SIDECRED_PLAN_PROBE_INTERVAL", default_value = "5m", value_parser = parse_timeout)]
    pub plan_probe_interval: Duration,
}

impl Cli {
    /// The account guard's configuration.
    pub fn account(&self) -> crate::account::guard::Config {
        crate::account::guard::Config {
            allow_extra_usage: self.allow_extra_usage,
            clients: self.clients,
            probe_interval: self.plan_probe_interval,
        }
    }
}

pub use sidecred_logging::LogFormat;

fn parse_upstream(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{s}` must start with https:// (or http:// for a local test server)")),
    }
    if uri.host().is_none() {
        return Err(format!("`{s}` has no host"));
    }
    // Request paths are forwarded as they are; a base path would silently be dropped, so refuse it.
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(format!(
            "`{s}` must be a bare origin such as {} (no path or query)",
            anthropic::DEFAULT_API_BASE
        ));
    }
    Ok(uri)
}

/// A duration that must be more than zero: a zero timeout would close every connection at once.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration such as 10s: {e}"))?;
    if d.is_zero() {
        return Err("must be more than 0".to_owned());
    }
    Ok(d)
}

/// Parses `32MiB`, `1m`, `512KB`, `1048576` into bytes. Binary and decimal suffixes both mean what
/// they say; a bare `K`/`M`/`G` is binary, as in nginx's `client_max_body_size`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a size such as 32MiB or 1048576"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("`{s}`: unknown size unit `{other}` (use KiB, MiB, GiB, KB, MB or GB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn upstreams() {
        assert!(parse_upstream(anthropic::DEFAULT_API_BASE).is_ok());
        assert!(parse_upstream("http://127.0.0.1:9999/").is_ok());
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream(&format!("{}/v1", anthropic::DEFAULT_API_BASE)).is_err());
        assert!(parse_upstream("/just/a/path").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["sidecred-forwarder"]).expect("defaults parse");
        assert_eq!(cli.listen, "127.0.0.1:8000".parse().expect("addr"));
        assert_eq!(cli.upstream, anthropic::DEFAULT_API_BASE);
        assert_eq!(cli.max_request_body, 32 << 20);
        assert_eq!(cli.retry_body_limit, 1 << 20);
        assert_eq!(cli.agent_wait, Duration::from_secs(2));
        assert_eq!(cli.agent_mode, crate::agent::AgentMode::Subscribe);
        assert_eq!(cli.drain_timeout, Duration::from_secs(30));
        assert_eq!(cli.shutdown_delay, Duration::from_secs(5));
        assert_eq!(cli.drain_linger, Duration::from_secs(1));
        assert_eq!(cli.workers, 2);
        assert_eq!(cli.first_request_timeout, Duration::from_secs(10));
        assert_eq!(cli.idle_timeout, Duration::from_secs(60));
        assert_eq!(cli.http2_keepalive_interval, Duration::from_secs(20));
        assert_eq!(cli.http2_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(cli.max_connections, None);
        assert_eq!(cli.agent_uid, None);
        assert_eq!(cli.metrics_listen, None);
        assert!(!cli.allow_extra_usage, "the plan only, unless the operator says otherwise");
        assert_eq!(cli.clients, crate::account::guard::Clients::Any);
        assert_eq!(cli.plan_probe_interval, Duration::from_secs(300));
    }

    #[test]
    fn the_account_flags() {
        let cli =
            Cli::try_parse_from(["sidecred-forwarder", "--allow-extra-usage", "--clients", "claude-code"])
                .expect("parse");
        assert!(cli.allow_extra_usage);
        assert_eq!(cli.clients, crate::account::guard::Clients::ClaudeCode);
        let err =
            Cli::try_parse_from(["sidecred-forwarder", "--clients", "sdk"]).expect_err("sdk").to_string();
        assert!(err.contains("claude-code"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_refused_naming_the_flag() {
        for flag in ["--first-request-timeout", "--idle-timeout", "--http2-keepalive-interval"] {
            let err = Cli::try_parse_from(["sidecred-forwarder", flag, "0s"]).expect_err(flag).to_string();
            assert!(err.contains(flag) && err.contains("more than 0"), "{err}");
        }
        let err =
            Cli::try_parse_from(["sidecred-forwarder", "--max-connections", "0"]).expect_err("0").to_string();
        assert!(err.contains("--max-connections"), "{err}");
    }
}
