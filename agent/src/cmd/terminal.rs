//! Asking the person at the terminal.

use std::io::{BufRead, IsTerminal, Write};

/// Whether stdin is a terminal a person can answer on.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks `question` on stderr and reads the answer from stdin: only `y` or `yes` agree.
pub fn confirm(question: &str) -> std::io::Result<bool> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
