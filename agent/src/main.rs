//! `sidecred-agent`: owns the Claude OAuth credentials, keeps the access token fresh and serves it over a
//! Unix socket; also carries the account commands that talk to a running agent.

mod account;
mod api;
mod atomic;
mod cli;
mod commands;
mod credentials;
mod lifecycle;
mod login;
mod oauth;
mod run;
mod socket;
mod store;
mod watch;
mod writeback;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Run(args) => run::run(args).await,
            cli::Command::Status(args) => commands::status(args).await,
            cli::Command::Refresh(args) => commands::refresh(args).await,
            cli::Command::Login(args) => login::login(args).await,
            cli::Command::Validate(args) => account::validate(args).await,
            cli::Command::Info(args) => account::info(args).await,
            cli::Command::Logout(args) => account::logout(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sidecred-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
