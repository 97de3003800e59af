//! `sidecred-forwarder`: serves the Anthropic API on a local port with the Claude OAuth token that
//! `sidecred-agent` holds, as the agent pushes it (or asks for it per request, `--agent-mode`; see
//! `agent.rs`). Wiring only; the request path is in `proxy.rs`.
//!
//! Threads: one acceptor (which also waits for signals and follows the agent's pushes) takes a slot
//! under `--max-connections` and hands each accepted connection to one of `--workers` worker threads,
//! round robin. Each worker runs its own single-threaded runtime with its own upstream client pool and
//! agent connection, so a request never crosses threads: no work stealing, no cross-thread wake-ups,
//! which on a small machine is what most of a proxy's time goes to. How connections are accepted, and
//! stop being accepted on SIGTERM, is in `accept.rs`; how a connection is served and ends is in
//! `conn.rs`.

mod accept;
mod access;
mod account;
mod agent;
mod body;
mod cli;
mod conn;
mod errors;
mod exposition;
use sidecred_forwarder::headers;
mod health;
mod instruments;
mod keys;
mod limiter;
mod limits;
mod metrics;
mod path;
mod probe;
mod proxy;
mod rejected;
mod upstream;
mod usage;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, error, info, warn};

/// A client that has not sent its request headers by then is dropped (slowloris); streams, once
/// started, have no time limit.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if cli.probe {
        // No logging set up: a probe's output is its one line, which the kubelet keeps in the pod's events.
        return match probe::check(cli.listen, probe::PROBE_TIMEOUT) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sidecred-forwarder --probe: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    sidecred_logging::init(cli.log_format, tracing::Level::INFO);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("sidecred-forwarder: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every worker needs to build its own proxy.
struct Shared {
    upstream: http::Uri,
    proxies: hyper_util::client::proxy::matcher::Matcher,
    roots: rustls::RootCertStore,
    agent: agent::AgentConfig,
    /// What the agent pushes (`--agent-mode subscribe`), for every worker.
    pushed: Option<Arc<agent::Pushed>>,
    keys: Option<Arc<keys::InboundKeys>>,
    max_request_body: u64,
    retry_body_limit: u64,
    drain_timeout: Duration,
    rejected: Arc<rejected::RejectedToken>,
    account: Arc<account::Account>,
    /// Set by the acceptor on SIGTERM; `/readyz` answers 503 from then on.
    leaving: Arc<health::Leaving>,
    limits: conn::Limits,
    max_connections: u32,
    /// True while connections wait for a slot: connections that ask nothing then make room sooner.
    crowded: watch::Receiver<bool>,
    http2_keepalive_interval: Duration,
    http2_keepalive_timeout: Duration,
}

impl Shared {
    /// Within the worker's runtime: the agent fetcher task is spawned on it.
    fn proxy(&self) -> anyhow::Result<proxy::Proxy> {
        Ok(proxy::Proxy {
            upstream: upstream::Upstream::new(&self.upstream, &self.proxies, &self.roots)
                .context("cannot set up the upstream client")?,
            tokens: agent::TokenSource::start(&self.agent, self.pushed.as_ref()),
            keys: self.keys.clone(),
            max_request_body: self.max_request_body,
            retry_body_limit: self.retry_body_limit,
            rejected: self.rejected.clone(),
            account: self.account.clone(),
            leaving: self.leaving.clone(),
        })
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let keys = match &cli.api_keys_file {
        Some(path) => Some(Arc::new(keys::InboundKeys::load(path)?)),
        None => None,
    };
    if keys.is_none() && !cli.listen.ip().is_loopback() {
        warn!(
            listen = %cli.listen,
            "!!! NO INBOUND API KEYS: anyone who can reach {} can use this Claude account. \
             Set --api-keys-file (SIDECRED_API_KEYS_FILE) or listen on 127.0.0.1 only. !!!",
            cli.listen
        );
    }
    let roots = upstream::trust_roots(cli.upstream_ca_file.as_deref())?;
    let nofile = limits::raise_nofile().map_err(anyhow::Error::msg)?;
    let max_connections = limits::max_connections(cli.max_connections, nofile.limit, cli.workers)
        .map_err(anyhow::Error::msg)?;
    let (crowding, crowded) = watch::channel(false);
    let shared = Arc::new(Shared {
        upstream: cli.upstream.clone(),
        proxies: hyper_util::client::proxy::matcher::Matcher::from_env(),
        roots,
        agent: agent::AgentConfig {
            path: cli.socket.clone(),
            uid: cli.agent_uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
            wait: cli.agent_wait,
        },
        pushed: (cli.agent_mode == agent::AgentMode::Subscribe).then(Arc::default),
        keys,
        max_request_body: cli.max_request_body,
        retry_body_limit: cli.retry_body_limit,
        drain_timeout: cli.drain_timeout,
        rejected: Arc::default(),
        account: Arc::new(account::Account::new(cli.account())),
        leaving: Arc::default(),
        limits: conn::Limits {
            first_request: cli.first_request_timeout,
            idle: cli.idle_timeout,
            drain_linger: cli.drain_linger,
        },
        max_connections,
        crowded,
        http2_keepalive_interval: cli.http2_keepalive_interval,
        http2_keepalive_timeout: cli.http2_keepalive_timeout,
    });
    // Configuration faults (a bad proxy URL, say) stop the start here rather than in every worker.
    let via = upstream::Upstream::new(&shared.upstream, &shared.proxies, &shared.roots)
        .context("cannot set up the upstream client")?
        .via;

    // std's bind sets SO_REUSEADDR, so a restart can take the port back at once.
    let listener = std::net::TcpListener::bind(cli.listen)
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    listener.set_nonblocking(true).context("cannot make the listener non-blocking")?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let metrics_listener = cli.metrics_listen.map(exposition::bind).transpose()?;

    let mut workers = Vec::with_capacity(cli.workers.into());
    let mut queues = Vec::with_capacity(cli.workers.into());
    for i in 0..cli.workers {
        let (queue, conns) = mpsc::unbounded_channel();
        let shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sidecred-worker-{i}"))
            .spawn(move || worker(conns, &shared))
            .context("cannot start a worker thread")?;
        workers.push(thread);
        queues.push(queue);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    info!(
        max_connections,
        fd_limit = nofile.limit,
        raised_from = nofile.raised_from,
        "connection cap (--max-connections)"
    );
    let acceptor = accept::Acceptor::new(queues, slots, crowding);
    let drained = runtime.block_on(async {
        if let Some(metrics) = metrics_listener {
            let metrics =
                tokio::net::TcpListener::from_std(metrics).context("cannot register the metrics listener")?;
            tokio::spawn(exposition::serve(metrics));
        }
        acceptor.run(listener, &shared, &cli, local, via).await?;
        // Joined off this thread, so that while the workers drain it goes on following the agent's
        // pushes: a request served during the drain still gets the token the agent serves.
        tokio::task::spawn_blocking(move || {
            let mut drained = true;
            for thread in workers {
                match thread.join() {
                    Ok(Ok(all_done)) => drained &= all_done,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => anyhow::bail!("a worker thread panicked"),
                }
            }
            Ok(drained)
        })
        .await
        .context("cannot wait for the workers")?
    })?;
    if drained {
        info!("all connections drained; stopped");
    } else {
        warn!(drain_timeout = ?cli.drain_timeout, "drain timeout reached; closed the remaining connections");
    }
    Ok(())
}

/// One worker thread: serves the connections it is handed until the queue closes, then drains them.
/// Answers whether everything finished within the drain timeout.
fn worker(mut conns: mpsc::UnboundedReceiver<accept::Accepted>, shared: &Shared) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a worker's async runtime")?;
    runtime.block_on(async move {
        let mut server = auto::Builder::new(TokioExecutor::new());
        server.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        server
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(shared.http2_keepalive_interval)
            .keep_alive_timeout(shared.http2_keepalive_timeout);
        let worker = conn::Worker {
            server,
            proxy: Arc::new(shared.proxy()?),
            drain: conn::Drain::new(),
            crowded: shared.crowded.clone(),
            limits: shared.limits,
        };
        while let Some((stream, peer, slot)) = conns.recv().await {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "cannot take over a connection");
                    continue;
                }
            };
            worker.serve(stream, peer, slot);
        }
        debug!(connections = worker.drain.open_connections(), "draining");
        Ok(worker.drain.run(shared.drain_timeout).await)
    })
}
