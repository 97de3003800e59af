//! The paste mode (headless): the person opens the URL on any machine, and pastes the `CODE#STATE`
//! that Claude's callback page shows.

use super::callback::Callback;
use super::error::LoginError;
use crate::cmd::terminal::stdin_is_terminal;
use sidecred_proto::Secret;
use std::io::{BufRead, Write};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The paste mode: print the URL, then read `CODE#STATE` lines from stdin until one parses.
pub async fn read_pasted_code(
    url: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Callback, LoginError> {
    eprintln!("To log in, open this URL in a browser (on any machine) and sign in with your Claude account:");
    eprintln!();
    eprintln!("{url}");
    eprintln!();
    eprintln!("After you authorize, the page shows a code of the form CODE#STATE.");
    let mut lines = spawn_stdin_reader();
    loop {
        eprint!("Paste the code here and press Enter: ");
        let _ = std::io::stderr().flush();
        let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
            Err(_) => {
                eprintln!();
                return Err(LoginError::Timeout { after: timeout, hint: "" });
            }
            Ok(None) => {
                eprintln!();
                return Err(LoginError::StdinClosed);
            }
            Ok(Some(Err(e))) => return Err(LoginError::Stdin(e)),
            Ok(Some(Ok(line))) => line,
        };
        if !stdin_is_terminal() {
            // Nothing echoed the piped line: end the prompt's line ourselves.
            eprintln!();
        }
        if line.expose().trim().is_empty() {
            continue;
        }
        match Callback::from_pasted(line.expose()) {
            Some(callback) => return Ok(callback),
            None => eprintln!(
                "That is not a code of the form CODE#STATE (copy the whole code from the page, including the `#`)."
            ),
        }
    }
}

/// Reads stdin lines on a plain thread: tokio's stdin cannot be cancelled, and a timed-out login must
/// be able to exit while a read is pending.
fn spawn_stdin_reader() -> mpsc::Receiver<std::io::Result<Secret>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line.map(Secret::new)).is_err() {
                break;
            }
        }
    });
    rx
}
