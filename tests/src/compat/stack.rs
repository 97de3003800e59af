//! What a real client talks to in the compatibility tests: the real agent (on the fake token
//! endpoint), the real forwarder, the fake Anthropic API behind it, and the refusing proxy for anything
//! else, each test its own.

use super::Clients;
use crate::fakes::claude_oauth::{FakeOAuth, Pair};
use crate::fakes::refusing_proxy::RefusingProxy;
use crate::fakes::upstream::FakeUpstream;
use crate::forwarder_harness::{forwarder_cmd, start_forwarder, Forwarder};
use crate::harness::{now_ms, wait_for_status, Proc, Sandbox, Seeded, HOUR_MS};
use sidecred_proto::TokenState;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// A pair valid for hours.
    #[default]
    Live,
    /// An expired token and a refresh token the endpoint refuses: the agent needs a new login.
    NeedsNewLogin,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Setup<'a> {
    pub forwarder_args: &'a [&'a str],
    /// Inbound keys (`--api-keys-file`); none: any key is accepted.
    pub keys: &'a [&'a str],
    pub login: Login,
}

pub struct Stack {
    pub upstream: FakeUpstream,
    pub fake: FakeOAuth,
    pub pair: Pair,
    pub proxy: RefusingProxy,
    pub forwarder: Forwarder,
    pub agent: Proc,
    /// Last, so the processes above are stopped before their directory goes.
    pub sandbox: Sandbox,
}

impl Stack {
    pub async fn start(setup: Setup<'_>) -> Stack {
        let seeded = match setup.login {
            Login::Live => Seeded::start(now_ms() + 8 * HOUR_MS).await,
            Login::NeedsNewLogin => {
                let fake = FakeOAuth::start().await;
                let pair = fake.unknown_pair();
                Seeded::new(fake, pair, now_ms() - 60_000)
            }
        };
        let Seeded { fake, pair, sb: sandbox } = seeded;
        let upstream = FakeUpstream::start(fake.access_check()).await;
        let agent = sandbox.start_agent("agent", sandbox.agent_cmd(&fake.token_url())).await;
        if setup.login == Login::NeedsNewLogin {
            wait_for_status(
                &sandbox.socket(),
                "the agent to need a new login",
                Duration::from_secs(20),
                |s| s.state == Some(TokenState::ReauthRequired),
            )
            .await;
        }
        let mut cmd = forwarder_cmd(&sandbox, &upstream.url());
        cmd.args(setup.forwarder_args);
        if !setup.keys.is_empty() {
            let keys = sandbox.path().join("api-keys");
            std::fs::write(&keys, setup.keys.join("\n")).expect("write the keys file");
            cmd.arg("--api-keys-file").arg(keys);
        }
        let forwarder = start_forwarder(&sandbox, "forwarder", cmd).await;
        for dir in ["home", "work"] {
            std::fs::create_dir_all(sandbox.path().join(dir)).expect("mkdir");
        }
        let proxy = RefusingProxy::start().await;
        Stack { upstream, fake, pair, proxy, forwarder, agent, sandbox }
    }

    /// The forwarder's URL with `base_path` (`""`, `"/api/v1"`, `"/v1"`): a client's base URL.
    pub fn base_url(&self, base_path: &str) -> String {
        self.forwarder.url(base_path)
    }

    /// The clients' home directory.
    pub fn home(&self) -> PathBuf {
        self.sandbox.path().join("home")
    }

    /// The directory clients run in.
    pub fn workdir(&self) -> PathBuf {
        self.sandbox.path().join("work")
    }

    /// A client command with nothing of this process's environment but `PATH`: its home in the
    /// sandbox, and every destination but 127.0.0.1 sent to the refusing proxy.
    pub fn client(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("LANG", "C.UTF-8")
            .current_dir(self.workdir());
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            cmd.env(var, self.proxy.url());
        }
        cmd.env("NO_PROXY", "127.0.0.1").env("no_proxy", "127.0.0.1");
        cmd
    }

    /// `tests/compat/python_sdk.py CASE` with the official Python SDK, on base URL `base_path`.
    pub fn python_sdk(&self, clients: &Clients, case: &str, base_path: &str) -> Command {
        let mut cmd = self.client(clients.python());
        cmd.arg(super::script("python_sdk.py"))
            .arg(case)
            .env("PYTHONUNBUFFERED", "1")
            .env("SIDECRED_BASE_URL", self.base_url(base_path))
            .env("SIDECRED_API_KEY", "unused-by-sidecred");
        cmd
    }

    /// `tests/compat/typescript_sdk.mjs CASE` with the official TypeScript SDK, on base URL `base_path`.
    pub fn typescript_sdk(&self, clients: &Clients, case: &str, base_path: &str) -> Command {
        let mut cmd = self.client("node");
        cmd.arg(super::script("typescript_sdk.mjs"))
            .arg(case)
            .env("SIDECRED_NODE_MODULES", clients.node_modules())
            .env("SIDECRED_BASE_URL", self.base_url(base_path))
            .env("SIDECRED_API_KEY", "unused-by-sidecred");
        cmd
    }

    /// `claude -p PROMPT` (print mode: one answer, then exit), with `ANTHROPIC_BASE_URL` at the forwarder
    /// plus `base_path`, the key `key`, and its non-essential traffic (telemetry, error reports, update
    /// checks) off.
    pub fn claude_code(&self, clients: &Clients, prompt: &str, base_path: &str, key: &str) -> Command {
        let mut cmd = self.client(clients.claude());
        cmd.arg("-p")
            .arg(prompt)
            .env("ANTHROPIC_BASE_URL", self.base_url(base_path))
            .env("ANTHROPIC_API_KEY", key)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        cmd
    }

    /// Fails when a client tried to reach anything but the forwarder.
    pub fn assert_nothing_left(&self) {
        let refused = self.proxy.seen();
        assert!(
            refused.is_empty(),
            "a client tried to reach the outside (refused by the proxy): {refused:?}"
        );
    }
}
