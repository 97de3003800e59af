//! `sidecred-forwarder`: serves the Anthropic API on a local port with the Claude OAuth token that
//! `sidecred-agent` holds, as the agent pushes it (or asks for it per request, `--agent-mode`). It keeps
//! no credentials of its own and streams both ways without buffering.
//!
//! # Layout
//!
//! The request path sits in the middle; what feeds it (the agent, the upstream, the keys) and what it
//! reports (`observe/`) around it.
//!
//! - `lib.rs`: this map, and the wiring: parse the command line, start logging, raise the descriptor
//!   limit, bind, start the workers and the acceptor, wait for the drain. `main.rs` only calls
//!   [`main`]: the crate is a library so that the fuzz targets reach the header rules.
//! - `cli.rs`: the flags, each also `SIDECRED_<NAME>` in the environment.
//! - Threads: one acceptor (which also waits for signals and follows the agent's pushes) hands each
//!   connection to one of `--workers` worker threads, round robin; each worker runs its own
//!   single-threaded runtime with its own upstream pool and agent connection, so a request never
//!   crosses threads.
//!   - `accept.rs`: the acceptor: connection slots under `--max-connections`, SIGTERM, the shutdown
//!     delay, handing connections over.
//!   - `worker.rs`: one worker thread: its runtime, its HTTP server settings, its proxy, its drain.
//!   - `descriptors.rs`: the file-descriptor budget the connection cap is set below.
//!   - `conn.rs`: one client connection: serving it, how soon it must ask and how long it may idle
//!     (`conn/deadline.rs`, pure), and how it ends when the worker drains.
//!   - `memory.rs`: once the last client connection has ended, what glibc kept of the freed memory
//!     goes back to the system.
//! - The request path:
//!   - `proxy.rs`: route, check the client's key, admit, take the token, rewrite the headers, send
//!     upstream, send once more after a 401, stream the answer back.
//!   - `path.rs`: where a client's path goes upstream, and the paths refused before they go; pure.
//!   - `headers.rs`: what is dropped, what is set, how betas merge; pure, and fuzzed (`fuzzing.rs`
//!     holds the fuzz target's properties).
//!   - `body.rs`: the bodies on both sides: the request's, kept for a retry up to a limit; the
//!     answer's, counted and logged when it ends.
//!   - `upstream.rs`: the upstream client: pooled hyper, TLS by rustls, HTTP/2 by ALPN, proxies.
//!   - `errors.rs`: the answers the forwarder gives itself, in the API's error shape.
//!   - `rejected.rs`: the token the API keeps rejecting while the agent will not replace it yet.
//! - `keys/`: inbound API keys: the keys file and the constant-time check (`mod.rs`); each key's
//!   request rate and concurrency (`quota.rs`).
//! - `agent/`: the token source: the token the agent pushes, held per worker (`subscription.rs`), or
//!   asked for per request in batches (`fetcher.rs`), riding out an agent restart either way.
//! - `account/`: what each request costs the account and the guard that keeps it on its plan: the
//!   client's shape, the answer's outcome, when a window resets, the guard's states and transitions,
//!   its own replies, its metrics (`account/mod.rs` names each file).
//! - `observe/`: what the operator sees: the metrics registry (`metrics.rs`) built from lock-free
//!   parts (`instruments.rs`), the usage windows the API reports (`usage.rs`), the access log
//!   (`access_log.rs`), and `GET /metrics` (`exposition.rs`).
//! - `health.rs`: `/livez`, `/readyz`, `/health`; `probe.rs`: `--probe`, the exec probe that checks
//!   a forwarder listening on loopback from inside its container.

mod accept;
mod account;
mod agent;
mod body;
mod cli;
mod conn;
mod descriptors;
mod errors;
mod health;
mod keys;
mod memory;
mod observe;
mod path;
mod probe;
mod proxy;
mod rejected;
mod upstream;
mod worker;

pub mod headers;

#[doc(hidden)]
pub mod fuzzing;

use anyhow::Context;
use clap::Parser;
use observe::exposition;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{error, info, warn};
use worker::Shared;

/// The `sidecred-forwarder` binary.
pub fn main() -> ExitCode {
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
    let nofile = descriptors::raise_nofile().map_err(anyhow::Error::msg)?;
    let max_connections = descriptors::max_connections(cli.max_connections, nofile.limit, cli.workers)
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
        timeouts: conn::Timeouts {
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
            .spawn(move || worker::run(conns, &shared))
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
            tokio::spawn(exposition::serve(metrics, shared.account.clone()));
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
