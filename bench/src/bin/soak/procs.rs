//! The real agent and forwarder for the soak, and what /proc says about a process.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child that is killed and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the process's log when it is not running.
    pub fn ensure_running(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{name} exited ({status}); its log:\n{}", self.log_text());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
    let file = std::fs::File::create(&log)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(file.try_clone()?)).stderr(Stdio::from(file));
    let child = cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    Ok(Proc { child, log })
}

/// Polls `cond` every 20 ms until it answers `Some`; fails naming `what` after `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent on a seed in `work`, refreshing at `token_url`; ready once its socket answers.
pub async fn agent(bin: &Path, work: &Path, seed: &str, token_url: &str) -> anyhow::Result<(Proc, PathBuf)> {
    let creds = work.join("creds");
    std::fs::create_dir_all(&creds)?;
    let seed_path = creds.join(".credentials.json");
    std::fs::write(&seed_path, seed)?;
    let socket = work.join("run").join("agent.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--credentials")
        .arg(&seed_path)
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--socket")
        .arg(&socket)
        .arg("--token-url")
        .arg(token_url)
        .env("SIDECRED_LOG", "warn");
    let mut proc = spawn(cmd, work.join("agent.log"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        proc.ensure_running("the agent")?;
        if let Ok(mut c) = sidecred_proto::client::Client::connect(&socket).await {
            if c.get_token().await.is_ok() {
                return Ok((proc, socket));
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not serve a token within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The forwarder in front of `upstream`, access log off; answers it and its address.
pub async fn forwarder(
    bin: &Path,
    work: &Path,
    socket: &Path,
    upstream: &str,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .arg("--socket")
        .arg(socket)
        .env("SIDECRED_LOG", "warn,sidecred_forwarder=info,sidecred_forwarder::access=off")
        .env_remove("SIDECRED_LOG_FORMAT");
    let mut proc = spawn(cmd, work.join("forwarder.log"))?;
    let log = proc.log.clone();
    let addr = wait_for("the forwarder to listen", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let rest = &text[text.find(" listening addr=")? + " listening addr=".len()..];
        rest.split_whitespace().next().map(str::to_owned)
    })
    .await?;
    proc.ensure_running("the forwarder")?;
    Ok((proc, addr))
}
