//! `sidecred-agent refresh`: asks the running agent to refresh the token now.

use crate::cmd::args::SocketArgs;
use anyhow::Context;
use clap::Args;
use sidecred_proto::client::Client;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub async fn refresh(args: RefreshArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.socket.socket).await?;
    let grant = client.refresh().await.context("the agent could not refresh the token")?;
    println!(
        "refreshed: token {} expires in {}",
        grant.access_token,
        humantime::format_duration(Duration::from_secs(grant.expires_in_ms / 1000))
    );
    Ok(ExitCode::SUCCESS)
}
