//! Starting the real `sidecred-forwarder` for the end-to-end tests: on port 0, with the bound address
//! read back from its "listening" log line, and ready once `/livez` answers.

use crate::fakes::claude_oauth::FakeOAuth;
use crate::fakes::upstream::FakeUpstream;
use crate::harness::{forwarder_bin, now_ms, Proc, Sandbox, Seeded, HOUR_MS};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// What a forwarder talks to: a real agent with a live login valid for hours, its token endpoint, and
/// a fake API that accepts every token the endpoint issued.
pub struct Backends {
    pub agent: Proc,
    pub upstream: FakeUpstream,
    pub fake: FakeOAuth,
    pub sandbox: Sandbox,
}

impl Backends {
    pub async fn start() -> Backends {
        let Seeded { fake, pair: _, sb: sandbox } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
        let upstream = FakeUpstream::start(fake.access_check()).await;
        let agent = sandbox.start_agent("agent", sandbox.agent_cmd(&fake.token_url())).await;
        Backends { agent, upstream, fake, sandbox }
    }

    /// A forwarder in front of them with `args` added, once it answers `/livez`.
    pub async fn forwarder(&self, name: &str, args: &[&str]) -> Forwarder {
        let mut cmd = forwarder_cmd(&self.sandbox, &self.upstream.url());
        cmd.args(args);
        start_forwarder(&self.sandbox, name, cmd).await
    }
}

/// A running forwarder; killed and its log checked for secrets when dropped (through [`Proc`]).
pub struct Forwarder {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Forwarder {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A forwarder command on an ephemeral port, talking to the sandbox's agent socket and to `upstream`,
/// with debug logs from the forwarder itself (so a leak at any level is caught), no proxy settings, and no
/// shutdown delay (nothing balances to it: SIGTERM closes the listener at once; tests/tests/rollout.rs
/// is about the delay).
pub fn forwarder_cmd(sandbox: &Sandbox, upstream: &str) -> Command {
    forwarder_cmd_on(sandbox, upstream, "127.0.0.1:0")
}

/// [`forwarder_cmd`] listening on `listen`.
pub fn forwarder_cmd_on(sandbox: &Sandbox, upstream: &str, listen: &str) -> Command {
    let mut cmd = Command::new(forwarder_bin());
    cmd.arg("--listen")
        .arg(listen)
        .arg("--upstream")
        .arg(upstream)
        .arg("--socket")
        .arg(sandbox.socket())
        .env("SIDECRED_LOG", "info,sidecred_forwarder=trace")
        .env("SIDECRED_SHUTDOWN_DELAY", "0s")
        .env_remove("SIDECRED_LOG_FORMAT")
        .env_remove("SIDECRED_API_KEYS_FILE")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy");
    cmd
}

/// Starts the forwarder and waits until it answers `/livez`.
pub async fn start_forwarder(sandbox: &Sandbox, name: &str, cmd: Command) -> Forwarder {
    let log_path = sandbox.log(name);
    // The log may hold an earlier run under the same name: only what this run writes counts.
    let offset = std::fs::metadata(&log_path).map(|m| m.len() as usize).unwrap_or(0);
    let mut proc = Proc::spawn(name, cmd, &log_path);
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let log = proc.log();
        if let Some(addr) = log.get(offset..).and_then(bound_addr) {
            break addr;
        }
        if !proc.is_running() {
            panic!("{name} exited before listening; log:\n{}", proc.log());
        }
        if Instant::now() > deadline {
            panic!("{name} did not log its address within 20s; log:\n{}", proc.log());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client = http_client();
    let livez = format!("http://{addr}/livez");
    loop {
        if let Ok(resp) = client.get(&livez).timeout(Duration::from_secs(2)).send().await {
            if resp.status() == 200 {
                break;
            }
        }
        if !proc.is_running() {
            panic!("{name} exited before answering /livez; log:\n{}", proc.log());
        }
        if Instant::now() > deadline {
            panic!("{name} did not answer /livez within 20s; log:\n{}", proc.log());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Forwarder { proc, addr }
}

/// The address in the forwarder's `listening addr=...` line (text log format).
fn bound_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(" listening "))?;
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A client for talking to the forwarder: no proxies from the environment, no timeouts of its own
/// (tests bound their waits explicitly).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_bound_address() {
        let log = "2026-01-01T00:00:00Z  INFO sidecred_forwarder: listening addr=127.0.0.1:43121 upstream=http://x\n";
        assert_eq!(super::bound_addr(log), Some("127.0.0.1:43121".parse().unwrap()));
        assert_eq!(super::bound_addr("nothing here"), None);
    }
}
