//! `sidecred-forwarder`: serves the Anthropic API on a local port with the Claude OAuth token that
//! `sidecred-agent` holds, as the agent pushes it (or asks for it per request, `--agent-mode`; see
//! `agent.rs`). Wiring only; the request path is in `proxy.rs`.
//!
//! Threads: one acceptor (which also waits for signals and follows the agent's pushes) takes a slot under `--max-connections` and
//! hands each accepted connection to one of `--workers` worker threads, round robin. Each worker runs
//! its own single-threaded runtime with its own upstream client pool and agent connection, so a request
//! never crosses threads: no work stealing, no cross-thread wake-ups, which on a small machine is what
//! most of a proxy's time goes to. How a connection is served and ends is in `conn.rs`.

mod access;
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
mod proxy;
mod rejected;
mod upstream;
mod usage;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
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

/// An accepted connection on its way to a worker, with its slot under `--max-connections`.
type Accepted = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// The cap's warning is repeated at most this often while connections keep hitting it.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

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
    let acceptor = Acceptor { queues: Handoff { queues, next: 0 }, slots, crowding };
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

/// The accepting side: the workers' queues, the slots under `--max-connections`, and the signal that
/// connections are waiting for one.
struct Acceptor {
    queues: Handoff,
    slots: Arc<Semaphore>,
    crowding: watch::Sender<bool>,
}

impl Acceptor {
    /// Accepts until SIGTERM/SIGINT, then hands over what already waits in the backlog, closes the
    /// listener and the workers' queues, which tells them to drain.
    async fn run(
        mut self,
        listener: std::net::TcpListener,
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
            agent_uid = shared.agent.uid,
            inbound_keys = shared.keys.as_ref().map_or(0, |k| k.len()),
            workers = cli.workers,
            "listening"
        );
        // A sidecar may start before its agent: say so, but serve (requests wait for the agent, then
        // 503). In the background, so /livez answers from the start whatever the agent does.
        let agent = shared.agent.clone();
        tokio::spawn(async move {
            if let Err(e) = agent::TokenSource::check_at_start(&agent).await {
                warn!(error = %e, "the agent has no token for us yet; requests get 503 until it does");
            }
        });
        // The subscription lives on this thread, which only accepts: a push wakes no worker, and every
        // worker has the new token the moment it is read.
        if let Some(pushed) = &shared.pushed {
            tokio::spawn(agent::TokenSource::follow(shared.agent.clone(), pushed.clone()));
        }

        let mut cap_warned: Option<Instant> = None;
        let signal_name = loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    self.crowding.send_if_modified(|crowded| std::mem::replace(crowded, false));
                    slot
                }
                Err(_) => {
                    if cap_warned.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                        warn!(
                            max_connections = shared.max_connections,
                            "connection cap reached (--max-connections): new connections wait in the listen \
                             backlog, and connections that ask nothing or sit idle get a second to make room"
                        );
                        cap_warned = Some(Instant::now());
                    }
                    self.crowding.send_if_modified(|crowded| !std::mem::replace(crowded, true));
                    tokio::select! {
                        slot = self.slots.clone().acquire_owned() => slot.context("the connection slots closed")?,
                        _ = sigterm.recv() => break "SIGTERM",
                        _ = sigint.recv() => break "SIGINT",
                    }
                }
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let stream = match stream.into_std() {
                            Ok(stream) => stream,
                            Err(e) => {
                                warn!(peer = %peer, error = %e, "cannot hand a connection to a worker");
                                continue;
                            }
                        };
                        if !self.queues.send(stream, peer, slot) {
                            break "a failed worker";
                        }
                    }
                    Err(e) => {
                        // Below the descriptor limit by the cap, but other limits (memory, the system's
                        // file table) exist: back off briefly instead of spinning.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
            }
        };
        // The kernel completed these connections' handshakes and their clients may have sent a request:
        // closing the listener now would reset them. They are served like the rest (and told to close).
        // Straight from the socket: the runtime's idea of its readiness may lag behind the kernel's.
        let listener = listener.into_std().context("cannot take the listener back from the runtime")?;
        let mut backlog = 0usize;
        while let Ok(slot) = self.slots.clone().try_acquire_owned() {
            let Ok((stream, peer)) = listener.accept() else { break };
            if !self.queues.send(stream, peer, slot) {
                break;
            }
            backlog += 1;
        }
        drop(listener);
        drop(self);
        info!(
            signal = signal_name,
            drain_timeout = ?cli.drain_timeout,
            taken_from_backlog = backlog,
            "shutting down: not accepting; letting in-flight requests finish"
        );
        Ok(())
    }
}

/// The workers' queues, taken round robin.
struct Handoff {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: usize,
}

impl Handoff {
    /// Answers false when a worker has stopped, which happens only when its runtime failed (its error
    /// is reported on join).
    fn send(&mut self, stream: std::net::TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) -> bool {
        // Streams of small SSE events must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        // One taken straight from the listener's socket is blocking, and a worker's runtime needs it not.
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(peer = %peer, error = %e, "cannot hand a connection to a worker");
            return true;
        }
        if self.queues[self.next % self.queues.len()].send((stream, peer, slot)).is_err() {
            error!("a worker thread stopped; shutting down");
            return false;
        }
        self.next = self.next.wrapping_add(1);
        true
    }
}

/// One worker thread: serves the connections it is handed until the queue closes, then drains them.
/// Answers whether everything finished within the drain timeout.
fn worker(mut conns: mpsc::UnboundedReceiver<Accepted>, shared: &Shared) -> anyhow::Result<bool> {
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
