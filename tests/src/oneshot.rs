//! Running the agent's one-shot commands (`login`, `status`, `validate`, `info`, `logout`) to the end
//! with piped stdio, the way a script does, checking what they print for leaked secrets.

use crate::harness::{agent_bin, assert_no_secrets, Sandbox};
use std::ffi::OsString;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a command may take to print or exit. Generous: a busy 2-core machine is slow, never early.
pub const TIMEOUT: Duration = Duration::from_secs(40);

/// A `sidecred-agent` command with the test's environment: debug logs (so a leak at any level is
/// caught), no proxies, no desktop, no inherited SIDECRED_* settings, HOME in the sandbox.
pub fn agent_command(sb: &Sandbox, args: &[OsString]) -> std::process::Command {
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.args(args).env("SIDECRED_LOG", "debug").env("HOME", sb.path());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("SIDECRED_")
            || k.to_ascii_lowercase().ends_with("_proxy")
            || k == "DISPLAY"
            || k == "WAYLAND_DISPLAY"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("SIDECRED_LOG", "debug");
    cmd
}

pub fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// A running command with piped stdio whose output is collected as it comes; killed on drop.
pub struct Run {
    name: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// What a command left behind.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

fn collect(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Run {
    pub fn start(name: &str, cmd: std::process::Command) -> Run {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Run { name: name.to_owned(), stdin: child.stdin.take(), child, stdout, stderr, readers }
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub async fn wait_for_stderr(&self, needle: &str) {
        let what = format!("{} to print {needle:?}", self.name);
        let deadline = Instant::now() + TIMEOUT;
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stderr so far:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Waits for the exit, collects all output and checks stderr for leaked secrets.
    pub async fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("{} did not exit within {TIMEOUT:?}; stderr:\n{}", self.name, self.stderr())
            })
            .expect("wait");
        for r in self.readers.drain(..) {
            tokio::time::timeout(TIMEOUT, r).await.expect("output readers finish").expect("reader task");
        }
        let done = Finished {
            code: status.code(),
            stdout: String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            stderr: self.stderr(),
        };
        assert_no_secrets(&format!("{} (stderr)", self.name), &done.stderr);
        done
    }
}

/// Runs a one-shot command to the end with stdin closed; its stdout must not carry secrets either.
pub async fn run(sb: &Sandbox, name: &str, args: &[OsString]) -> Finished {
    let done = Run::start(name, agent_command(sb, args)).finish().await;
    assert_no_secrets(&format!("{name} (stdout)"), &done.stdout);
    done
}
