//! `sidecred-agent run`: wires the store, the token lifecycle, the seed watcher and the socket together,
//! and shuts them down in the order that loses nothing.

use crate::cluster::client::client;
use crate::cluster::decision::Timing;
use crate::cluster::election;
use crate::cluster::secret_watch::SharedSecret;
use crate::cluster::writeback::{SecretRef, WriteBack};
use crate::cmd::args::{CredentialsArgs, SocketArgs, TokenEndpointArgs};
use crate::lifecycle::{Lifecycle, Policy, Sharing, Snapshot};
use crate::oauth::{OAuthClient, OAuthConfig};
use crate::socket;
use crate::store::Loaded;
use crate::store::{Origin, Store};
use anyhow::Context;
use clap::Args;
use sidecred_proto::{anthropic, Secret};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

#[derive(Debug, Args)]
#[command(mut_arg("credentials", |a| a.help(
    "Claude Code's credentials file (the seed). May be read-only, e.g. a mounted Kubernetes Secret"
)))]
#[command(mut_arg("user_agent", |a| a.help("User-Agent sent to the token endpoint")))]
#[command(mut_arg("request_timeout", |a| a.help("Timeout of one request to the token endpoint")))]
pub struct RunArgs {
    #[command(flatten)]
    pub credentials: CredentialsArgs,
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
    #[command(flatten)]
    pub endpoint: TokenEndpointArgs,
    /// Refresh when less than this is left (default: the larger of 5 minutes and 10% of the lifetime).
    #[arg(long, env = "SIDECRED_REFRESH_MARGIN", value_parser = humantime::parse_duration)]
    pub refresh_margin: Option<Duration>,
    /// First retry delay after a failed refresh; doubles up to --backoff-max.
    #[arg(long, env = "SIDECRED_BACKOFF_MIN", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    #[arg(long, env = "SIDECRED_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// How long a token request waits for a refresh when the token has already expired.
    #[arg(long, env = "SIDECRED_EXPIRED_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub expired_wait: Duration,
    /// A socket connection with no request for this long is closed (clients reconnect).
    #[arg(long, env = "SIDECRED_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// After every refresh, write the live pair into this Kubernetes Secret (NAMESPACE/NAME), so a new pod
    /// starts from a live refresh token. Needs RBAC `get` and `patch` on that one Secret.
    #[arg(long, env = "SIDECRED_WRITE_BACK_SECRET", value_name = "NAMESPACE/NAME")]
    pub write_back_secret: Option<SecretRef>,
    /// The key of the Secret that holds the credentials file.
    #[arg(long, env = "SIDECRED_WRITE_BACK_KEY", default_value = ".credentials.json")]
    pub write_back_key: String,
    /// Share this login with other agents (pods, replicas): only the holder of this Lease
    /// (NAMESPACE/NAME, shipped with the manifests) refreshes; the others adopt each new pair from the
    /// --write-back-secret through the API. Needs RBAC get and update on the Lease, get, watch and
    /// patch on the Secret.
    #[arg(long, env = "SIDECRED_LEASE", value_name = "NAMESPACE/NAME", requires = "write_back_secret")]
    pub lease: Option<SecretRef>,
    /// This agent's name in the election (default: $POD_NAME, else the hostname). The identity is this
    /// name plus $POD_UID (the pod's UID, from the downward API), else a random suffix per process.
    #[arg(long, env = "SIDECRED_LEASE_HOLDER", value_name = "ID")]
    pub lease_holder: Option<String>,
    /// How long a holder that stops renewing keeps the lease before another agent takes it over.
    #[arg(long, env = "SIDECRED_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
    /// With --lease: after SIGTERM, how long the holder keeps its lease and retries writing its last
    /// pair to the shared Secret, if that write has not landed, before it exits without releasing the
    /// lease (which then expires on its own). Counted in the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "SIDECRED_SHUTDOWN_WRITE_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_write_wait: Duration,
    /// Serve the token in this environment variable (CLAUDE_CODE_OAUTH_TOKEN when the flag is given
    /// without a name) instead of a credentials file: it is never refreshed or saved, and its expiry is
    /// unknown. Only this flag turns it on: a variable set for Claude Code alone changes nothing.
    #[arg(
        long,
        env = "SIDECRED_STATIC_TOKEN_ENV",
        value_name = "VAR",
        num_args = 0..=1,
        default_missing_value = anthropic::OAUTH_TOKEN_ENV,
        conflicts_with_all = ["credentials", "state_dir", "write_back_secret"]
    )]
    pub static_token_env: Option<String>,
    /// Serve Prometheus metrics (`/metrics`: token expiry, lifecycle state, refreshes) on this address.
    /// Off by default.
    #[arg(long, env = "SIDECRED_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Report a login older than this (in `status`, and as `sidecred_agent_login_max_age_seconds` for
    /// the alert to compare the login's age with): refresh tokens no person renews have been seen to
    /// stop working after about 55 days.
    #[arg(long, env = "SIDECRED_LOGIN_MAX_AGE", default_value = "50days", value_parser = humantime::parse_duration)]
    pub login_max_age: Duration,
}

fn parse_lease_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}`: a lease lasts from 1s to 1h"));
    }
    Ok(d)
}

/// What this agent serves and with whom it shares the login: decided once, from the flags.
#[derive(Debug, Clone)]
enum Mode {
    /// `--static-token-env`: one token from the environment, never refreshed or saved.
    Static { var: String },
    /// A credentials file that this agent alone refreshes and saves.
    Alone,
    /// Alone, and every new pair also written to a Kubernetes Secret for the next pod.
    WriteBack { secret: SecretRef },
    /// Many agents on one login: only the Lease holder refreshes; the others adopt each pair from the
    /// Secret.
    Shared { secret: SecretRef, lease: SecretRef, timing: Timing },
}

impl Mode {
    /// The mode the flags ask for; clap has already refused the combinations that make no sense
    /// (`--lease` requires `--write-back-secret`, a static token excludes both).
    fn of(args: &RunArgs) -> Result<Mode, String> {
        match (&args.static_token_env, &args.write_back_secret, &args.lease) {
            (Some(var), _, _) => Ok(Mode::Static { var: var.clone() }),
            (None, None, _) => Ok(Mode::Alone),
            (None, Some(secret), None) => Ok(Mode::WriteBack { secret: secret.clone() }),
            (None, Some(secret), Some(lease)) => {
                let timing =
                    Timing { duration: args.lease_duration, request_timeout: args.endpoint.request_timeout };
                timing.check()?;
                Ok(Mode::Shared { secret: secret.clone(), lease: lease.clone(), timing })
            }
        }
    }
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

/// How long the lease holder waits for the shared Secret to hold a new pair before serving it anyway.
const CONFIRM_WRITE: Duration = Duration::from_secs(10);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let own_uid = nix::unistd::getuid().as_raw();
    let allowed_uids = if args.allow_uids.is_empty() { vec![own_uid] } else { args.allow_uids.clone() };

    let mode = Mode::of(&args).map_err(anyhow::Error::msg)?;
    let mut policy = Policy {
        backoff_min: args.backoff_min,
        backoff_max: args.backoff_max,
        login_max_age: args.login_max_age,
        ..Policy::default()
    };
    if let Some(margin) = args.refresh_margin {
        policy.margin_min = margin;
        policy.margin_fraction = 0.0;
    } else if let Mode::Shared { .. } = mode {
        // Followers serve the pair they have until it expires: refreshing at half its lifetime leaves
        // them the other half, and a new holder time to take over should this one die.
        policy.margin_fraction = 0.5;
    }
    let oauth = OAuthClient::new(OAuthConfig::from(&args.endpoint))
        .context("cannot build the HTTP client for the token endpoint")?;

    let socket_config = socket::Config {
        path: args.socket.socket.clone(),
        mode: args.socket_mode,
        allowed_uids: allowed_uids.clone(),
        expired_wait: args.expired_wait,
        idle_timeout: args.idle_timeout,
        refresh_wait: args.endpoint.request_timeout.saturating_add(Duration::from_secs(5)),
    };
    // One client for the write-back, the lease and the Secret watch. In a pod the in-cluster config is
    // there at container start or never, so a client that cannot be built now is an operator error:
    // the agent stops here, before it refreshes a pair it could not share.
    let kube_client = match &mode {
        Mode::WriteBack { .. } => Some(client("--write-back-secret").await.map_err(anyhow::Error::msg)?),
        Mode::Shared { .. } => {
            Some(client("--write-back-secret with --lease").await.map_err(anyhow::Error::msg)?)
        }
        Mode::Static { .. } | Mode::Alone => None,
    };
    let write_back = match (&mode, &kube_client) {
        (Mode::WriteBack { secret } | Mode::Shared { secret, .. }, Some(client)) => {
            info!(secret = %secret, key = %args.write_back_key, "writing refreshed credentials back to the Secret");
            Some(WriteBack::spawn(client.clone(), secret.clone(), args.write_back_key.clone()))
        }
        _ => None,
    };
    // What to serve is settled before the socket exists: a static token that is not there is an error
    // at start, not a socket that answers "no credentials" forever.
    let (lifecycle, snapshots, seed) = match &mode {
        Mode::Static { var } => {
            let token = read_static_token(var)?;
            let (lifecycle, snapshots) = Lifecycle::new_static(oauth, policy, var, token);
            (lifecycle, snapshots, None)
        }
        Mode::Alone | Mode::WriteBack { .. } | Mode::Shared { .. } => {
            let store = Store::open(args.credentials.path.clone(), args.state_dir.clone())
                .context("cannot use the credentials or state directory")?;
            let loaded = load(&store);
            let initial_sha = loaded.as_ref().ok().and_then(|l| l.seed_sha256.clone());
            let (lifecycle, snapshots) = Lifecycle::new(store, oauth, policy, loaded);
            let (sharing, lease) = match (&mode, &write_back) {
                (Mode::Shared { lease, .. }, Some(wb)) => (
                    Sharing::Shared { store: Arc::new(wb.clone()), confirm: CONFIRM_WRITE },
                    Some(lease.to_string()),
                ),
                (_, Some(wb)) => (Sharing::WriteBack(Arc::new(wb.clone())), None),
                (_, None) => (Sharing::Nowhere, None),
            };
            let lifecycle = lifecycle.with_sharing(sharing, lease);
            // Shared, new pairs come from the Secret through the API, not from the (lagging) file.
            let watch_seed = (!matches!(mode, Mode::Shared { .. })).then_some(initial_sha);
            (lifecycle, snapshots, watch_seed)
        }
    };
    warn_loudly(&snapshots);
    let metrics_listener = args.metrics_listen.map(crate::metrics::bind).transpose()?;
    let listener = socket::bind(&socket_config.path, socket_config.mode).await?;
    let (inputs_tx, inputs_rx) = mpsc::channel(256);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    if let Some(initial_sha) = seed {
        crate::watch::spawn(args.credentials.path.clone(), initial_sha, inputs_tx.clone());
    }
    let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
    let mut election = None;
    let mut identity = None;
    if let (Mode::Shared { secret, lease, timing }, Some(client)) = (&mode, kube_client) {
        let shared = SharedSecret::new(client.clone(), secret.clone(), args.write_back_key.clone());
        shared.clone().spawn_watch(inputs_tx.clone());
        let id = crate::cluster::identity::of_this_process(args.lease_holder.as_deref())
            .map_err(anyhow::Error::msg)?;
        if id.per_pod {
            info!(identity = %id.id, "lease identity: this pod's name and UID (a restart of this container keeps the lease)");
        } else {
            warn!(identity = %id.id, "POD_UID is not set: the lease identity ends in a random suffix, so a restart of this agent waits for the lease to expire; set POD_UID from the downward API (metadata.uid)");
        }
        let config = election::Config { lease: lease.clone(), identity: id.id.clone(), timing: *timing };
        identity = Some(id.id);
        let task = election::Election::new(config, client, shared).run(inputs_tx.clone(), lease_stop_rx);
        election = Some(tokio::spawn(task));
    }
    let shared_write_back = write_back.filter(|_| matches!(mode, Mode::Shared { .. }));
    if let Some(metrics) = metrics_listener {
        tokio::spawn(crate::metrics::serve(metrics, snapshots.clone()));
    }
    let final_snapshot = snapshots.clone();
    let mut lifecycle_task = tokio::spawn(lifecycle.run(inputs_rx, shutdown_rx.clone()));
    let mut socket_task =
        tokio::spawn(socket::serve(listener, socket_config, snapshots, inputs_tx, shutdown_rx.clone()));
    info!(
        socket = %args.socket.socket.display(),
        allowed_uids = ?allowed_uids,
        "listening"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let signalled = async {
        tokio::select! {
            _ = sigterm.recv() => info!(signal = "SIGTERM", "shutting down"),
            _ = sigint.recv() => info!(signal = "SIGINT", "shutting down"),
        }
    };
    let woke = supervise(signalled, &mut lifecycle_task, &mut socket_task).await;
    let _ = shutdown_tx.send(true);
    if let Some(code) = woke.exit_now() {
        let _ = std::fs::remove_file(&args.socket.socket);
        return Ok(code);
    }

    // The socket stops first so no one is handed a token that is about to be replaced; the lifecycle then
    // finishes any refresh in flight and saves it. A second signal abandons the wait.
    let _ = socket_task.await;
    let _ = std::fs::remove_file(&args.socket.socket);
    tokio::select! {
        joined = &mut lifecycle_task => {
            if joined.is_err() {
                error!("the lifecycle task failed while shutting down");
                return Ok(ExitCode::FAILURE);
            }
        }
        () = second_signal(&mut sigterm, &mut sigint) => {
            warn!("second signal: exiting without waiting for the refresh in flight");
            return Ok(ExitCode::SUCCESS);
        }
    }
    // No refresh can start any more. The lease goes to the next agent only once the Secret holds the
    // pair this one made: the next holder starts from the Secret, and the pair it replaced is spent.
    let held_lease = {
        let last = final_snapshot.borrow();
        last.lease_holder.is_some() && last.lease_holder == identity
    };
    if let Some(write_back) = shared_write_back.as_ref().filter(|_| held_lease) {
        if !write_back.is_settled() {
            let wait = args.shutdown_write_wait;
            warn!(wait = ?wait, "the shared Secret does not hold the live pair yet: keeping the lease and retrying the write; it is released once the write lands (after --shutdown-write-wait, or a second signal, the agent exits and the lease expires on its own)");
            // Bounded by a wait of its own, so the agent ends before the grace period's SIGKILL and says
            // what it leaves behind; the pair would be left behind the same way by the SIGKILL.
            tokio::select! {
                () = write_back.settled() => info!("the shared Secret holds the live pair"),
                () = second_signal(&mut sigterm, &mut sigint) => {
                    warn!("second signal: exiting with the live pair not in the Secret; the lease expires on its own");
                    return Ok(ExitCode::SUCCESS);
                }
                () = tokio::time::sleep(wait) => {
                    error!(wait = ?wait, "the shared Secret still does not hold the live pair after --shutdown-write-wait: exiting without releasing the lease, which expires on its own; the live pair is only in this agent's state directory, and the next holder's refresh of the Secret's pair will be refused unless the Secret is fixed first");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    let _ = lease_stop_tx.send(true);
    if let Some(election) = election {
        let _ = election.await;
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn second_signal(sigterm: &mut tokio::signal::unix::Signal, sigint: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = sigterm.recv() => warn!(signal = "SIGTERM", "second signal"),
        _ = sigint.recv() => warn!(signal = "SIGINT", "second signal"),
    }
}

/// Why `run` stopped waiting on its tasks.
#[derive(Debug, PartialEq, Eq)]
enum Woke {
    Signalled,
    Ended { what: &'static str, panicked: bool },
}

impl Woke {
    /// The exit code when the process must go at once: a task that ended on its own (a panic, a bug)
    /// leaves an agent that can no longer refresh or serve, so its supervisor must restart it.
    fn exit_now(&self) -> Option<ExitCode> {
        match self {
            Woke::Signalled => None,
            Woke::Ended { what, panicked } => {
                let how = if *panicked { "panicked" } else { "stopped" };
                error!("{what} {how} unexpectedly; exiting so the agent is restarted");
                Some(ExitCode::FAILURE)
            }
        }
    }
}

/// Waits for a stop signal; the lifecycle and socket tasks run until told to stop, so either of them
/// ending first is a failure.
async fn supervise<L, S>(
    signalled: impl std::future::Future<Output = ()>,
    lifecycle: &mut JoinHandle<L>,
    socket: &mut JoinHandle<S>,
) -> Woke {
    tokio::select! {
        () = signalled => Woke::Signalled,
        joined = lifecycle => Woke::Ended { what: "the token lifecycle", panicked: joined.is_err() },
        joined = socket => Woke::Ended { what: "the socket server", panicked: joined.is_err() },
    }
}

/// What the store holds to start from. Missing or unusable credentials are not fatal: the agent
/// reports `no_credentials` and picks up a login as soon as the seed appears, which is what a pod
/// waiting for its Secret needs.
fn load(store: &Store) -> Result<Loaded, String> {
    match store.load() {
        Ok(loaded) => {
            let from = match loaded.origin {
                Origin::Seed => store.seed_path().display().to_string(),
                Origin::State => store.persist_path().display().to_string(),
            };
            if let Some(problem) = &loaded.seed_problem {
                warn!(problem = %problem, "the seed was passed over");
            }
            info!(from = %from, token = %loaded.credentials.access_token, "loaded credentials");
            Ok(loaded)
        }
        Err(e) => {
            warn!(error = %e, "no usable credentials yet; waiting for the seed to appear");
            Err(e.to_string())
        }
    }
}

/// The token in the environment variable `var`, trimmed (a Secret's value often ends in a newline).
fn read_static_token(var: &str) -> anyhow::Result<Secret> {
    static_token_from(var, std::env::var(var))
}

fn static_token_from(var: &str, value: Result<String, std::env::VarError>) -> anyhow::Result<Secret> {
    let value = value.map_err(|e| {
        let why = match e {
            std::env::VarError::NotPresent => "is not set",
            std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
        };
        anyhow::anyhow!(
            "--static-token-env {var}: the variable {why}; set it to the token, or run on a credentials file"
        )
    })?;
    let token = value.trim();
    if token.is_empty() {
        anyhow::bail!("--static-token-env {var}: the variable is empty; set it to the token");
    }
    if token.contains(char::is_whitespace) {
        anyhow::bail!(
            "--static-token-env {var}: the variable must hold the token alone, without spaces or newlines in it"
        );
    }
    let token = Secret::new(token);
    if !token.expose().starts_with(anthropic::ACCESS_TOKEN_PREFIX) {
        let prefix = anthropic::ACCESS_TOKEN_PREFIX;
        warn!(
            token = %token,
            var,
            "the static token does not look like an OAuth access token ({prefix}...); the API takes no API key here"
        );
    }
    Ok(token)
}

/// Says at start, at WARN, what an operator must not miss (a static token that is never refreshed).
fn warn_loudly(snapshots: &watch::Receiver<Arc<Snapshot>>) {
    if let Some(warning) = &snapshots.borrow().warning {
        warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct RunCli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(argv: &[&str]) -> Result<RunArgs, clap::Error> {
        use clap::Parser;
        RunCli::try_parse_from(std::iter::once("run").chain(argv.iter().copied())).map(|c| c.run)
    }

    #[test]
    fn a_static_token_is_served_only_when_asked_for() {
        // Without the flag nothing changes, whatever the environment holds.
        assert_eq!(parse(&[]).expect("parse").static_token_env, None);
        assert_eq!(
            parse(&["--static-token-env"]).expect("parse").static_token_env.as_deref(),
            Some("CLAUDE_CODE_OAUTH_TOKEN")
        );
        assert_eq!(
            parse(&["--static-token-env", "MY_TOKEN"]).expect("parse").static_token_env.as_deref(),
            Some("MY_TOKEN")
        );
        // A static token has no file to read, rotate or write back.
        for other in
            [&["--state-dir", "/s"][..], &["--credentials", "/c.json"], &["--write-back-secret", "ns/name"]]
        {
            let mut argv = vec!["--static-token-env", "T"];
            argv.extend_from_slice(other);
            assert!(parse(&argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn the_static_token_is_the_variable_trimmed_and_nothing_else() {
        use std::env::VarError;
        let ok = |v: &str| static_token_from("T", Ok(v.to_owned())).map(|s| s.expose().to_owned());
        assert_eq!(ok("sk-ant-oat01-x\n").expect("trimmed"), "sk-ant-oat01-x");
        let err = |v: Result<String, VarError>| static_token_from("T", v).expect_err("refused").to_string();
        assert!(err(Err(VarError::NotPresent)).contains("--static-token-env T: the variable is not set"));
        assert!(err(Ok("  \n".into())).contains("is empty"));
        let two = err(Ok("sk-ant-oat01-a sk-ant-oat01-b".into()));
        assert!(two.contains("the token alone") && !two.contains("oat01"), "{two}");
    }

    type Spawn = fn() -> JoinHandle<()>;

    fn pending_task() -> JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_on_its_own_makes_the_agent_exit_non_zero() {
        let never = std::future::pending::<()>;
        let cases: [(Spawn, Spawn, Woke); 3] = [
            (
                || tokio::spawn(async {}),
                pending_task,
                Woke::Ended { what: "the token lifecycle", panicked: false },
            ),
            (
                || tokio::spawn(async { panic!("a bug") }),
                pending_task,
                Woke::Ended { what: "the token lifecycle", panicked: true },
            ),
            (
                pending_task,
                || tokio::spawn(async {}),
                Woke::Ended { what: "the socket server", panicked: false },
            ),
        ];
        for (lifecycle, socket, expected) in cases {
            let (mut lifecycle, mut socket) = (lifecycle(), socket());
            // The paused clock jumps ahead when every task waits, so a supervisor that misses the end
            // fails here at once instead of hanging.
            let woke = tokio::time::timeout(
                Duration::from_secs(3600),
                supervise(never(), &mut lifecycle, &mut socket),
            )
            .await
            .expect("the supervisor noticed the task ending");
            assert_eq!(woke, expected);
            assert_eq!(woke.exit_now(), Some(ExitCode::FAILURE));
            socket.abort();
            lifecycle.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_is_a_clean_stop() {
        let (mut lifecycle, mut socket) = (pending_task(), pending_task());
        let woke = supervise(async {}, &mut lifecycle, &mut socket).await;
        assert_eq!(woke, Woke::Signalled);
        assert_eq!(woke.exit_now(), None);
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("7777").is_err());
    }
}
