//! The floor for `bench/agent.sh`: the least a server can do per token request on this machine. A thread
//! per connection, parked in `read`, answers every frame with the same token frame, with no state, no
//! checks and no polling. What the agent measures above this is the agent's own cost; what this measures
//! is the machine's (system calls and waking the process up).

use anyhow::Context;
use sidecred_proto::blocking::{read_frame, write_frame};
use sidecred_proto::{RequestFrame, Response, ResponseFrame, Secret, TokenGrant};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

#[derive(clap::Parser)]
struct Args {
    /// Where to listen (replaced if it exists).
    #[arg(long)]
    socket: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let _ = std::fs::remove_file(&args.socket);
    let listener =
        UnixListener::bind(&args.socket).with_context(|| format!("bind {}", args.socket.display()))?;
    let answer = ResponseFrame::from(Response::Token(TokenGrant {
        access_token: Secret::new("bench-access-token"),
        expires_at_ms: 0,
        expires_in_ms: 0,
        degraded: None,
        generation: 0,
    }));
    for stream in listener.incoming() {
        let mut stream = stream.context("accept")?;
        let answer = answer.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while let Ok(Some(_)) = read_frame::<_, RequestFrame>(&mut stream, &mut buf) {
                if write_frame(&mut stream, &answer).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}
