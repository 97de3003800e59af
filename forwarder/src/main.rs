//! `sidecred-forwarder`: serves the Anthropic API on a local port with the Claude OAuth token that
//! `sidecred-agent` holds, fetched from the agent for every request. Wiring only; the request path is
//! in `proxy.rs`.
//!
//! Threads: one acceptor (which also waits for signals) hands each accepted connection to one of
//! `--workers` worker threads, round robin. Each worker runs its own single-threaded runtime with its
//! own upstream client pool and agent connection, so a request never crosses threads: no work
//! stealing, no cross-thread wake-ups, which on a small machine is what most of a proxy's time goes to.

mod access;
mod agent;
mod body;
mod cli;
mod errors;
use sidecred_forwarder::headers;
mod health;
mod keys;
mod proxy;
mod upstream;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// A client that has not sent its request headers by then is dropped (slowloris); streams, once
/// started, have no time limit.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
    socket: std::path::PathBuf,
    agent_wait: Duration,
    keys: Option<Arc<keys::InboundKeys>>,
    max_request_body: u64,
    retry_body_limit: u64,
    drain_timeout: Duration,
}

impl Shared {
    /// Within the worker's runtime: the agent fetcher task is spawned on it.
    fn proxy(&self) -> anyhow::Result<proxy::Proxy> {
        Ok(proxy::Proxy {
            upstream: upstream::Upstream::new(&self.upstream, &self.proxies, &self.roots)
                .context("cannot set up the upstream client")?,
            tokens: agent::TokenSource::start(self.socket.clone(), self.agent_wait),
            keys: self.keys.clone(),
            max_request_body: self.max_request_body,
            retry_body_limit: self.retry_body_limit,
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
    let shared = Arc::new(Shared {
        upstream: cli.upstream.clone(),
        proxies: hyper_util::client::proxy::matcher::Matcher::from_env(),
        roots,
        socket: cli.socket.clone(),
        agent_wait: cli.agent_wait,
        keys,
        max_request_body: cli.max_request_body,
        retry_body_limit: cli.retry_body_limit,
        drain_timeout: cli.drain_timeout,
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
    runtime.block_on(accept(listener, queues, &shared, &cli, local, via))?;

    let mut drained = true;
    for thread in workers {
        match thread.join() {
            Ok(Ok(all_done)) => drained &= all_done,
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    if drained {
        info!("all connections drained; stopped");
    } else {
        warn!(drain_timeout = ?cli.drain_timeout, "drain timeout reached; closed the remaining connections");
    }
    Ok(())
}

/// Accepts until SIGTERM/SIGINT, then closes the listener and the workers' queues, which tells them to
/// drain.
async fn accept(
    listener: std::net::TcpListener,
    queues: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    shared: &Shared,
    cli: &cli::Cli,
    local: SocketAddr,
    via: Option<String>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener).context("cannot register the listener")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    info!(
        addr = %local,
        upstream = %cli.upstream,
        via_proxy = via.as_deref().unwrap_or("none"),
        socket = %cli.socket.display(),
        inbound_keys = shared.keys.as_ref().map_or(0, |k| k.len()),
        workers = cli.workers,
        "listening"
    );
    // A sidecar may start before its agent: say so, but serve (requests wait for the agent, then 503).
    if let Err(e) = agent::TokenSource::probe_once(shared.socket.clone()).await {
        warn!(error = %e, "the agent has no token for us yet; requests get 503 until it does");
    }

    let mut next = 0usize;
    let signal_name = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Streams of small SSE events must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let stream = match stream.into_std() {
                        Ok(stream) => stream,
                        Err(e) => {
                            warn!(peer = %peer, error = %e, "cannot hand a connection to a worker");
                            continue;
                        }
                    };
                    // A worker only stops early when its runtime failed; its error is reported on join.
                    if queues[next % queues.len()].send((stream, peer)).is_err() {
                        error!("a worker thread stopped; shutting down");
                        break "a failed worker";
                    }
                    next = next.wrapping_add(1);
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };
    drop(listener);
    drop(queues);
    info!(
        signal = signal_name,
        drain_timeout = ?cli.drain_timeout,
        "shutting down: not accepting; letting in-flight requests finish"
    );
    Ok(())
}

/// One worker thread: serves the connections it is handed until the queue closes, then drains them.
/// Answers whether everything finished within the drain timeout.
fn worker(
    mut conns: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    shared: &Shared,
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a worker's async runtime")?;
    runtime.block_on(async move {
        let proxy = Arc::new(shared.proxy()?);
        let mut server = auto::Builder::new(TokioExecutor::new());
        server.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        server.http2().timer(TokioTimer::new());
        let graceful = GracefulShutdown::new();
        while let Some((stream, peer)) = conns.recv().await {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "cannot take over a connection");
                    continue;
                }
            };
            let proxy = proxy.clone();
            let service = hyper::service::service_fn(move |req| proxy.clone().serve(req));
            let conn = graceful.watch(server.serve_connection(TokioIo::new(stream), service).into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(peer = %peer, error = %e, "client connection ended with an error");
                }
            });
        }
        debug!(connections = graceful.count(), "draining");
        Ok(tokio::select! {
            _ = graceful.shutdown() => true,
            _ = tokio::time::sleep(shared.drain_timeout) => false,
        })
    })
}
