//! `sidecred-agent logout`: takes the Claude login out of the credentials file, keeping whatever else
//! the file holds.

use crate::atomic::{resolve_symlinks, write_atomic};
use crate::cmd::args::CredentialsArgs;
use crate::cmd::terminal::{confirm, stdin_is_terminal};
use crate::credentials::document::{Document, Removal};
use crate::credentials::{to_pretty_bytes, CLAUDE_KEY};
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(mut_arg("credentials", |a| a.help("The credentials file to remove the login from")))]
pub struct LogoutArgs {
    #[command(flatten)]
    pub credentials: CredentialsArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let shown = args.credentials.path.display().to_string();
    let path = resolve_symlinks(&args.credentials.path);
    let bytes = match crate::atomic::read_regular(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("Nothing to do: there are no credentials at {shown}.");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => anyhow::bail!("cannot read {shown}: {e}"),
    };
    // Decided from the content before anything is changed.
    let removal = Document::classify(&bytes, &path).remove_login();
    let kept = |doc: &serde_json::Map<String, Value>| doc.keys().cloned().collect::<Vec<_>>().join(", ");
    let question = match &removal {
        Removal::NoLogin => {
            println!("Nothing to do: {shown} holds no Claude login (no `{CLAUDE_KEY}`).");
            return Ok(ExitCode::SUCCESS);
        }
        Removal::Kept(doc) => format!("Remove the Claude login from {shown}? ({} kept) [y/N] ", kept(doc)),
        Removal::Nothing => format!("Remove {shown} and the Claude login in it? [y/N] "),
    };
    if !args.yes {
        if !stdin_is_terminal() {
            anyhow::bail!(
                "refusing to remove the login from {shown} without confirmation: stdin is not a terminal \
                 to ask on; pass --yes"
            );
        }
        if !confirm(&question)? {
            eprintln!("Not logged out; {shown} is unchanged.");
            return Ok(ExitCode::FAILURE);
        }
    }
    match removal {
        Removal::Kept(doc) => {
            let kept = kept(&doc);
            write_atomic(&path, &to_pretty_bytes(&Value::Object(doc)))?;
            println!("Logged out: removed the Claude login from {shown} (kept {kept}).");
        }
        Removal::Nothing => {
            std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("cannot remove {shown}: {e}"))?;
            println!("Logged out: removed {shown}.");
        }
        Removal::NoLogin => {}
    }
    println!(
        "Copies of these credentials elsewhere (pods, Kubernetes Secrets, other machines) keep working: their\n\
         access token stays valid until it expires (hours), and their refresh token keeps renewing it.\n\
         Logout only deletes this local copy; the refresh token is not revoked at Anthropic. To cut every\n\
         copy off, delete those copies too (for example `kubectl delete secret sidecred-credentials`) or\n\
         sign out of the session in your Claude account settings. A running sidecred-agent keeps the\n\
         token it holds in memory (and in its --state-dir) until it is stopped."
    );
    Ok(ExitCode::SUCCESS)
}
