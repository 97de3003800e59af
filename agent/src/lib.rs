//! `sidecred-agent`: owns the Claude OAuth credentials, keeps the access token fresh and serves it over a
//! Unix socket; also carries the account commands that work with or without a running agent.
//!
//! # Layout
//!
//! The daemon's core sits at the top; the command line, one file per subcommand, under `cmd/`.
//!
//! - `lib.rs`: this map, and the wiring: parse the command line, start logging and the runtime, run
//!   the command. `main.rs` only calls [`main`]: the crate is a library so that the fuzz targets
//!   reach the parsers.
//! - `fuzzing.rs`: the properties the fuzz targets (`fuzz/` at the repository's root) check, one
//!   function per target; a test replays the seed corpus through the same functions.
//! - `lifecycle/`: the token lifecycle: its states as a type, the pure transitions between them, and
//!   the async task that performs them (refreshing, backing off, persisting); it shares pairs through an
//!   interface of its own (`share.rs`) and knows nothing of Kubernetes.
//! - `socket/`: serving the token: the transport (bind, threads, pacing) apart from the answers (what
//!   each request gets), and the subscriptions on which each new token is pushed (`subscription.rs`).
//! - `watch.rs`: noticing when the seed file changes from outside (a Kubernetes Secret update).
//! - `credentials/`: the credentials file's shapes: parse, update while keeping unknown fields, judge
//!   what a file holds (a login, none, a damaged one) and remove a login (`document.rs`); the record of
//!   when the login was made, kept in the document itself (`login_clock.rs`).
//! - `store.rs`: where credentials come from and go: the seed, the state directory, which one wins.
//! - `atomic.rs`: crash-safe replacement of a file (through symlinks, keeping its mode).
//! - `oauth.rs`: Claude's token endpoint: the refresh grant and the code exchange.
//! - `api.rs`: the two API calls the commands make (model list, profile) and what a refusal means.
//! - `cluster/`: everything Kubernetes: the client (`client.rs`), copying the live pair into a Secret
//!   after each refresh (`writeback.rs`), reading and watching the Secret that other agents adopt
//!   each new pair from (`secret_watch.rs`), and the Lease election with its fencing that picks the
//!   one agent that refreshes (`election.rs`; what each round decides, as a pure function, is
//!   `decision.rs`; the agent's identity in it, the pod's name and UID, is `identity.rs`).
//! - `metrics.rs`: `run --metrics-listen`: the lifecycle's snapshot as Prometheus gauges at scrape time,
//!   and the counts of refreshes and failed saves; how many connections its port holds and for how
//!   long (`metrics/connections.rs`).
//! - `cmd/`: the command line.
//!   - `mod.rs`: the `Cli` and the `Command` enum; `args.rs`: the flag groups several commands share.
//!   - `run.rs`: decides the mode once (static, alone, write-back, shared), starts the agent: wires
//!     store, lifecycle, watcher, socket and the cluster wing, and shuts them down in the order that
//!     loses nothing (the lease is released only once the Secret holds the live pair).
//!   - `status.rs`: the agent's state, or the file's when no agent answers.
//!   - `refresh.rs`: asks the agent to refresh now.
//!   - `validate.rs`, `info.rs`: show the token to the API; `token_source.rs` gets them that token
//!     (from the agent, or from the file, refreshed first when expired).
//!   - `logout.rs`: takes the login out of the file.
//!   - `login/`: the OAuth PKCE login, full or long-lived: `mod.rs` the flow, `kind.rs` the two kinds,
//!     `callback.rs` what comes back, `paste.rs` and `loopback.rs` its two modes, `destination.rs` where
//!     the result is saved, `error.rs` how it fails.
//!   - `fields.rs`: the aligned `label: value` printer and times in words; `terminal.rs`: asking the
//!     person at the terminal.

mod api;
mod atomic;
mod cluster;
mod cmd;
mod credentials;
mod lifecycle;
mod metrics;
mod oauth;
mod socket;
mod store;
mod watch;

#[doc(hidden)]
pub mod fuzzing;

use clap::Parser;
use std::process::ExitCode;

/// The `sidecred-agent` binary.
pub fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    sidecred_logging::init(cli.log_format, cli.command.default_log_level());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.command.worker_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecred-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.execute()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sidecred-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
