//! Starting and stopping the real binaries, and waiting for things without fixed sleeps.
//!
//! Every process's stdout and stderr go to a log file; when a [`Proc`] is dropped (and the test is not
//! already failing) its log is checked for the `sctest` marker that every fake token carries, so no test
//! can leak a token into a log without failing.

use crate::fakes::claude_oauth::{FakeOAuth, Pair};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Every fake secret contains this; finding it in a log is a leak.
pub const SECRET_MARKER: &str = "sctest";

/// Where the workspace's binaries are: `SIDECRED_BIN_DIR`, or the target directory these tests were
/// built into (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SIDECRED_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build the binaries first: cargo build --workspace --bins",
        path.display()
    );
    path
}

pub fn agent_bin() -> PathBuf {
    bin("sidecred-agent")
}

pub fn forwarder_bin() -> PathBuf {
    bin("sidecred-forwarder")
}

/// A child process that is killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Proc {
        let log = File::options().create(true).append(true).open(log_path).expect("open log file");
        let log2 = log.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_owned(), child: Some(child), log_path: log_path.to_owned(), status: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("process already reaped")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.status = Some(status);
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?}; log:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let what = format!("{} to log {needle:?}", self.name);
        wait_until(&what, timeout, || self.log().contains(needle)).await;
        if !self.log().contains(needle) {
            panic!("{what}; log:\n{}", self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            assert_no_secrets(&self.name, &self.log());
        }
    }
}

/// Fails when `log` contains a fake secret.
pub fn assert_no_secrets(name: &str, log: &str) {
    if let Some(line) = log.lines().find(|l| l.contains(SECRET_MARKER)) {
        // Print only where, not the line itself: the line holds the secret.
        panic!(
            "a token leaked into the log of {name} (a line containing {SECRET_MARKER:?}, {} chars)",
            line.len()
        );
    }
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A test's private directory tree: `creds/` (the seed), `state/`, `run/` (sockets), `logs/`.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let mut dir = tempfile::Builder::new().prefix("sidecred-e2e-").tempdir().expect("tempdir");
        // SIDECRED_TEST_KEEP=1 keeps every test's directory (logs, state) for a look afterwards.
        if std::env::var_os("SIDECRED_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        for sub in ["creds", "state", "run", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn creds_dir(&self) -> PathBuf {
        self.path().join("creds")
    }
    pub fn seed(&self) -> PathBuf {
        self.creds_dir().join(".credentials.json")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("credentials.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("run").join("agent.sock")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.path().join("logs").join(format!("{name}.log"))
    }

    /// An agent command with the sandbox's socket and the fake's token URL, fast backoff, and debug logs
    /// (so a leak at any level is caught).
    pub fn agent_cmd(&self, token_url: &str) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("run")
            .arg("--credentials")
            .arg(self.seed())
            .arg("--socket")
            .arg(self.socket())
            .arg("--token-url")
            .arg(token_url)
            .args(["--backoff-min", "50ms", "--backoff-max", "500ms"])
            .env("SIDECRED_LOG", "debug")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY");
        cmd
    }

    /// Starts an agent and waits until it answers on its socket.
    pub async fn start_agent(&self, name: &str, cmd: Command) -> Proc {
        let mut proc = Proc::spawn(name, cmd, &self.log(name));
        let socket = self.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = sidecred_proto::client::Client::connect(&socket).await {
                if c.status().await.is_ok() {
                    return proc;
                }
            }
            if !proc.is_running() {
                panic!("{name} exited before answering on its socket; log:\n{}", proc.log());
            }
            if Instant::now() > deadline {
                panic!("{name} did not answer on {} within 20s; log:\n{}", socket.display(), proc.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes `pair` into the seed, as a login would.
    pub fn write_seed(&self, pair: &Pair, expires_at_ms: u64) {
        write_json(&self.seed(), &pair.credentials(expires_at_ms));
    }

    /// A fresh connection to the sandbox's agent.
    pub async fn client(&self) -> sidecred_proto::client::Client {
        sidecred_proto::client::Client::connect(&self.socket()).await.expect("connect to the agent")
    }
}

/// A token endpoint that has issued a pair, and a sandbox whose seed holds it: where most tests start.
pub struct Seeded {
    pub fake: FakeOAuth,
    pub pair: Pair,
    pub sb: Sandbox,
}

impl Seeded {
    /// A new fake endpoint and a live pair from it, expiring at `expires_at_ms`.
    pub async fn start(expires_at_ms: u64) -> Seeded {
        let fake = FakeOAuth::start().await;
        let pair = fake.issue_pair();
        Seeded::new(fake, pair, expires_at_ms)
    }

    /// `pair`, live or not, in the seed of a new sandbox.
    pub fn new(fake: FakeOAuth, pair: Pair, expires_at_ms: u64) -> Seeded {
        let sb = Sandbox::new();
        sb.write_seed(&pair, expires_at_ms);
        Seeded { fake, pair, sb }
    }
}

pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// A loopback port free a moment ago, for a program that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The value of the one sample of a Prometheus text `page` whose line starts with `series` (name and
/// labels as written).
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

impl Pair {
    /// Claude Code's credentials file holding this pair (see [`claude_code_credentials`]).
    pub fn credentials(&self, expires_at_ms: u64) -> Value {
        claude_code_credentials(&self.access_token, &self.refresh_token, expires_at_ms)
    }

    /// [`Pair::credentials`] as the bytes of a file.
    pub fn credentials_file(&self, expires_at_ms: u64) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.credentials(expires_at_ms)).expect("JSON")
    }
}

/// Claude Code's credentials file with the given pair, plus unknown fields at both levels that must
/// survive every write-back.
pub fn claude_code_credentials(access: &str, refresh: &str, expires_at_ms: u64) -> Value {
    json!({
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": expires_at_ms,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x",
            "organizationUuid": "org-unknown-field"
        },
        "mcpOAuth": { "some-server": { "nested": [1, 2, {"deep": true}] } }
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes JSON to `path` with mode 0600 (replacing it by rename, like an editor or a login would).
pub fn write_json(path: &Path, value: &Value) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp-test");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).permissions().mode()
        & 0o777
}

pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// The refresh token in a Claude Code credentials document or in the agent's state document.
pub fn refresh_token_of(doc: &Value) -> Option<String> {
    let creds = doc.get("credentials").unwrap_or(doc);
    creds.pointer("/claudeAiOauth/refreshToken").and_then(Value::as_str).map(str::to_owned)
}

pub fn access_token_of(doc: &Value) -> Option<String> {
    let creds = doc.get("credentials").unwrap_or(doc);
    creds.pointer("/claudeAiOauth/accessToken").and_then(Value::as_str).map(str::to_owned)
}

/// Waits until the agent on `socket` reports a status that satisfies `pred`.
pub async fn wait_for_status(
    socket: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&sidecred_proto::StatusReport) -> bool,
) {
    let pred = &pred;
    wait_until_async(what, timeout, || async move {
        let Ok(mut c) = sidecred_proto::client::Client::connect(socket).await else { return false };
        c.status().await.is_ok_and(|s| pred(&s))
    })
    .await;
}

/// Waits until the agent on `socket` serves a token; `want`, when given, is the token it must be.
pub async fn wait_for_token(socket: &Path, what: &str, timeout: Duration, want: Option<&str>) {
    wait_until_async(what, timeout, || async move {
        let Ok(mut c) = sidecred_proto::client::Client::connect(socket).await else { return false };
        c.get_token().await.is_ok_and(|g| want.is_none_or(|w| g.access_token.expose() == w))
    })
    .await;
}
