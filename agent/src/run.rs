//! `sidecred-agent run`: wires the store, the token lifecycle, the seed watcher and the socket together,
//! and shuts them down in the order that loses nothing.

use crate::cli::RunArgs;
use crate::lifecycle::{Lifecycle, Policy};
use crate::oauth::{OAuthClient, OAuthConfig};
use crate::socket;
use crate::store::{Origin, Store};
use crate::writeback::WriteBack;
use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let own_uid = nix::unistd::getuid().as_raw();
    let allowed_uids = if args.allow_uids.is_empty() { vec![own_uid] } else { args.allow_uids.clone() };

    let store = Store::open(args.credentials.clone(), args.state_dir.clone())
        .context("cannot use the credentials or state directory")?;
    // Missing or unusable credentials are not fatal: the agent reports `no_credentials` and picks up a
    // login as soon as the seed appears, which is what a pod waiting for its Secret needs.
    let loaded = match store.load() {
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
    };
    let initial_sha = loaded.as_ref().ok().and_then(|l| l.seed_sha256.clone());

    let mut policy =
        Policy { backoff_min: args.backoff_min, backoff_max: args.backoff_max, ..Policy::default() };
    if let Some(margin) = args.refresh_margin {
        policy.margin_min = margin;
        policy.margin_fraction = 0.0;
    }
    let oauth = OAuthClient::new(OAuthConfig {
        token_url: args.token_url.clone(),
        client_id: args.client_id.clone(),
        user_agent: args.user_agent.clone(),
        timeout: args.request_timeout,
    })
    .context("cannot build the HTTP client for the token endpoint")?;

    let socket_config = socket::Config {
        path: args.socket.socket.clone(),
        mode: args.socket_mode,
        allowed_uids: allowed_uids.clone(),
        expired_wait: args.expired_wait,
        refresh_wait: args.request_timeout + Duration::from_secs(5),
    };
    let listener = socket::bind(&socket_config.path, socket_config.mode).await?;

    let (mut lifecycle, snapshots) = Lifecycle::new(store, oauth, policy, loaded);
    if let Some(secret) = &args.write_back_secret {
        info!(secret = %secret, key = %args.write_back_key, "writing refreshed credentials back to the Secret");
        lifecycle = lifecycle.with_write_back(WriteBack::spawn(secret.clone(), args.write_back_key.clone()));
    }
    let (inputs_tx, inputs_rx) = mpsc::channel(256);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    crate::watch::spawn(args.credentials.clone(), initial_sha, inputs_tx.clone());
    let lifecycle_task = tokio::spawn(lifecycle.run(inputs_rx, shutdown_rx.clone()));
    let socket_task =
        tokio::spawn(socket::serve(listener, socket_config, snapshots, inputs_tx, shutdown_rx.clone()));
    info!(
        socket = %args.socket.socket.display(),
        allowed_uids = ?allowed_uids,
        "listening"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    info!(signal = signal_name, "shutting down");
    let _ = shutdown_tx.send(true);

    // The socket stops first so no one is handed a token that is about to be replaced; the lifecycle then
    // finishes any refresh in flight and saves it. A second signal abandons the wait.
    let _ = socket_task.await;
    let _ = std::fs::remove_file(&args.socket.socket);
    tokio::select! {
        joined = lifecycle_task => {
            if joined.is_err() {
                error!("the lifecycle task failed while shutting down");
                return Ok(ExitCode::FAILURE);
            }
        }
        _ = sigterm.recv() => warn!("second SIGTERM: exiting without waiting for the refresh in flight"),
        _ = sigint.recv() => warn!("second SIGINT: exiting without waiting for the refresh in flight"),
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
