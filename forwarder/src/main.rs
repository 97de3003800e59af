//! `sidecred-forwarder`: serves the Anthropic API on a local port with the Claude OAuth token that
//! `sidecred-agent` holds, fetched from the agent for every request. Wiring only; the request path is
//! in `proxy.rs`.

mod access;
mod agent;
mod body;
mod cli;
mod errors;
mod headers;
mod health;
mod keys;
mod proxy;
mod upstream;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

/// A client that has not sent its request headers by then is dropped (slowloris); streams, once
/// started, have no time limit.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.workers.into())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecred-forwarder: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("sidecred-forwarder: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let keys = match &cli.api_keys_file {
        Some(path) => Some(keys::InboundKeys::load(path)?),
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
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
    let upstream =
        upstream::Upstream::new(&cli.upstream, &matcher).context("cannot set up the upstream client")?;
    let via = upstream.via.clone();
    let proxy = Arc::new(proxy::Proxy {
        upstream,
        tokens: agent::TokenSource::new(cli.socket.clone(), cli.agent_wait),
        keys,
        max_request_body: cli.max_request_body,
        retry_body_limit: cli.retry_body_limit,
    });

    let listener =
        TcpListener::bind(cli.listen).await.with_context(|| format!("cannot listen on {}", cli.listen))?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    info!(
        addr = %local,
        upstream = %cli.upstream,
        via_proxy = via.as_deref().unwrap_or("none"),
        socket = %cli.socket.display(),
        inbound_keys = proxy.keys.as_ref().map_or(0, keys::InboundKeys::len),
        "listening"
    );
    // A sidecar may start before its agent: say so, but serve (requests wait for the agent, then 503).
    if let Err(e) = proxy.tokens.probe().await {
        warn!(error = %e, "the agent has no token for us yet; requests get 503 until it does");
    }

    let mut server = auto::Builder::new(TokioExecutor::new());
    server.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    server.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    let signal_name = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Streams of small SSE events must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let proxy = proxy.clone();
                    let service = hyper::service::service_fn(move |req| proxy.clone().serve(req));
                    let conn = server.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(peer = %peer, error = %e, "client connection ended with an error");
                        }
                    });
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
    info!(
        signal = signal_name,
        connections = graceful.count(),
        drain_timeout = ?cli.drain_timeout,
        "shutting down: not accepting; letting in-flight requests finish"
    );
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained; stopped"),
        _ = tokio::time::sleep(cli.drain_timeout) => {
            warn!(drain_timeout = ?cli.drain_timeout, "drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
}
