//! The compatibility tests' real clients: where `tests/compat/install.sh` put them, and how each is run
//! as a subprocess against a [`Stack`] with nothing able to leave the machine.
//!
//! Every client runs with a cleared environment: `HOME` in the test's sandbox, `HTTPS_PROXY` and
//! `HTTP_PROXY` at the stack's refusing proxy and `NO_PROXY` at 127.0.0.1 alone, so the forwarder is
//! reached directly and any other destination is refused (and noted).

mod stack;

pub use stack::{Login, Setup, Stack};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The install script, named in every "not installed" failure.
pub const INSTALL_SCRIPT: &str = "tests/compat/install.sh";

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compat")
}

/// A client script kept in `tests/compat/`.
pub fn script(name: &str) -> PathBuf {
    compat_dir().join(name)
}

/// The clients installed for the versions pinned in `tests/compat/versions`.
pub struct Clients {
    dir: PathBuf,
}

impl Clients {
    /// The installed clients; fails the test, naming the install script, when they are missing or were
    /// installed for other versions.
    pub fn installed() -> Clients {
        let versions = std::fs::read(compat_dir().join("versions")).expect("read tests/compat/versions");
        let dir = match std::env::var_os("SIDECRED_COMPAT_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let hash: String = Sha256::digest(&versions).iter().map(|b| format!("{b:02x}")).collect();
                cache_home().join("sidecred-compat").join(&hash[..16])
            }
        };
        match std::fs::read(dir.join(".complete")) {
            Ok(done) if done == versions => Clients { dir },
            Ok(_) => panic!(
                "the clients in {} were installed for other versions than tests/compat/versions: run {INSTALL_SCRIPT}",
                dir.display()
            ),
            Err(_) => panic!(
                "the real clients these tests run are not installed in {}: run {INSTALL_SCRIPT} (it installs \
                 them from their registries at the versions pinned in tests/compat/versions)",
                dir.display()
            ),
        }
    }

    /// The venv's Python, which has the `anthropic` package.
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }

    /// The `node_modules` that holds `@anthropic-ai/sdk` and `@anthropic-ai/claude-code`.
    pub fn node_modules(&self) -> PathBuf {
        self.dir.join("node/node_modules")
    }

    pub fn claude(&self) -> PathBuf {
        self.node_modules().join(".bin/claude")
    }
}

fn cache_home() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    }
}

/// How a client run ended.
#[derive(Debug)]
pub struct Run {
    /// `None` when it was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last line of stdout as JSON: what the SDK scripts print.
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ended = match self.status {
            Some(s) => format!("{s}"),
            None => "killed at the time limit".to_owned(),
        };
        write!(f, "{ended} after {:?}\n--- stdout\n{}\n--- stderr\n{}", self.took, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to its end, or kills it after `limit`; either way with what it printed.
pub async fn run(mut cmd: tokio::process::Command, limit: Duration) -> Run {
    use tokio::io::AsyncReadExt;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text).await;
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the client")),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let took = started.elapsed();
    // A grandchild could hold the pipes open after its parent ended: what came by then is enough.
    let collect = |task: tokio::task::JoinHandle<String>| async move {
        tokio::time::timeout(Duration::from_secs(5), task).await.ok().and_then(Result::ok).unwrap_or_default()
    };
    Run { status, stdout: collect(stdout).await, stderr: collect(stderr).await, took }
}
