//! `scripts/run-local.sh`, the README's first command, run the way a user runs it. With `--demo` it
//! starts the stand-in for Claude's endpoints, the agent and the forwarder: a streamed request goes
//! through, the agent refreshes the demo login's short-lived token, the next streamed request carries the
//! new token, and Ctrl-C (SIGINT to the terminal's process group), a SIGTERM to the script or one of
//! its processes dying stops every process it started. Without a login, the normal mode says what to do.
//!
//! The script runs the binaries these tests run (`SIDECRED_BIN_DIR`), so it builds nothing, in its own
//! process group, with a private HOME, XDG_RUNTIME_DIR and TMPDIR and a free port.

use futures_util::StreamExt;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use sidecred_tests::forwarder_harness::http_client;
use sidecred_tests::harness::{assert_no_secrets, bin, free_port, wait_for_status, wait_until};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Startup without a build: three processes on a busy 2-core machine.
const READY: Duration = Duration::from_secs(60);
/// The demo's first refresh comes 10 s after start, the next ones every 40 s.
const REFRESH: Duration = Duration::from_secs(90);
/// Stopping includes the forwarder's drain of requests in flight (none here).
const STOP: Duration = Duration::from_secs(40);

/// `scripts/run-local.sh` running in its own process group, as from a terminal. When dropped before it
/// exits (a failing test) it gets a SIGTERM, to stop what it started, then the group and every process
/// it reported get a SIGKILL: a failing test leaves nothing behind either.
struct RunLocal {
    child: Child,
    dir: tempfile::TempDir,
    status: Option<ExitStatus>,
    /// What the demo's summary says it started, once read.
    started: Vec<(String, Pid)>,
}

impl RunLocal {
    fn start(args: &[&str]) -> RunLocal {
        let dir = tempfile::Builder::new().prefix("sidecred-run-local-").tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir home");
        let bin_dir = bin("sidecred-demo-backend").parent().expect("bin dir").to_owned();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/run-local.sh");
        // SIGINT as a terminal leaves it: a test run started in the background of a script inherits it
        // ignored, and bash cannot trap a signal ignored when it started.
        let mut cmd = Command::new("env");
        cmd.args(["--default-signal=INT", "bash"]).arg(script).args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("SIDECRED_") || k.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(&key);
            }
        }
        let output =
            |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).expect("log file"));
        cmd.env("SIDECRED_BIN_DIR", bin_dir)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &home)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(output("stdout"))
            .stderr(output("stderr"))
            .process_group(0);
        let child = cmd.spawn().expect("start bash scripts/run-local.sh");
        RunLocal { child, dir, status: None, started: Vec::new() }
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr())
    }

    /// Waits until `needle` is in stdout (`in_stdout`) or stderr; fails early if the script ends.
    async fn wait_for(&mut self, needle: &str, in_stdout: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = if in_stdout { self.stdout() } else { self.stderr() };
            if text.contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("run-local.sh ended ({status}) before printing {needle:?}; {}", self.output());
            }
            if Instant::now() > deadline {
                panic!("run-local.sh did not print {needle:?} within {timeout:?}; {}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value after `label` on the line of the demo's summary that starts with it.
    fn field(&self, label: &str) -> String {
        let out = self.stdout();
        let line = out.lines().find_map(|l| l.trim_start().strip_prefix(label));
        line.unwrap_or_else(|| panic!("no {label:?} line in the demo's summary; {}", self.output()))
            .trim()
            .to_owned()
    }

    /// Waits for the script to exit, reaping it.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        let mut status = None;
        wait_until("run-local.sh to exit", timeout, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        })
        .await;
        self.status = status;
        status.expect("exited")
    }
}

impl Drop for RunLocal {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(self.pgid(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(self.pgid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        for (_, pid) in &self.started {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        if !std::thread::panicking() {
            assert_no_secrets("run-local.sh", &self.output());
        }
    }
}

fn is_gone(pid: Pid) -> bool {
    kill(pid, None) == Err(Errno::ESRCH)
}

impl RunLocal {
    /// The processes on the summary's line `processes  stand-in 1, agent 2, forwarder 3 (...)`, checked
    /// to be the binaries they are named for, and remembered so that a failing test kills them.
    fn demo_pids(&mut self) -> Vec<(String, Pid)> {
        let line = self.field("processes");
        let list = line.split(" (").next().unwrap_or_default();
        let pids: Vec<(String, Pid)> = list
            .split(", ")
            .map(|entry| {
                let (name, pid) = entry.rsplit_once(' ').expect("name pid");
                (name.to_owned(), Pid::from_raw(pid.parse().expect("a pid")))
            })
            .collect();
        self.started = pids.clone();
        let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stand-in", "agent", "forwarder"]);
        for ((_, pid), binary) in
            pids.iter().zip(["sidecred-demo-backend", "sidecred-agent", "sidecred-forwarder"])
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(
                String::from_utf8_lossy(&cmdline).contains(binary),
                "pid {pid} is not {binary}: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
        pids
    }
}

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| {
            let cmdline = std::fs::read(e.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

/// What a streamed answer held, and how long its text took to arrive.
struct Streamed {
    text: String,
    ended: bool,
    spread: Duration,
}

/// Sends the README's streaming request to the forwarder and reads the events as they arrive.
async fn stream_through(api: &str) -> Streamed {
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let resp = http_client()
        .post(format!("{api}/v1/messages"))
        .header("x-api-key", "demo")
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("send through the forwarder");
    assert_eq!(resp.status(), 200, "the demo answers");
    let (mut raw, mut text, mut first_delta) = (String::new(), String::new(), None);
    let mut last_delta = Instant::now();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        raw.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        while let Some(end) = raw.find("\n\n") {
            let event: String = raw.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            let data: serde_json::Value = serde_json::from_str(data).expect("JSON event");
            if let Some(piece) = data["delta"]["text"].as_str() {
                first_delta.get_or_insert_with(Instant::now);
                last_delta = Instant::now();
                text.push_str(piece);
            }
            if data["type"] == "message_stop" {
                let spread = first_delta.map_or(Duration::ZERO, |first| last_delta - first);
                return Streamed { text, ended: true, spread };
            }
        }
    }
    Streamed { text, ended: false, spread: Duration::ZERO }
}

fn assert_demo_answer(streamed: &Streamed, which: &str) {
    assert!(streamed.ended, "the {which} stream ended with message_stop; text so far: {:?}", streamed.text);
    assert!(
        streamed.text.contains("sidecred demo") && streamed.text.contains("not Claude"),
        "the {which} answer says it comes from the demo: {:?}",
        streamed.text
    );
    // Twelve pieces 100 ms apart: a whole answer at once would mean the stream was buffered.
    assert!(
        streamed.spread >= Duration::from_millis(500),
        "the {which} answer streamed: {:?}",
        streamed.spread
    );
}

/// The `refreshes:` figure of `sidecred-agent status`, run exactly as the demo prints it.
fn printed_status_refreshes(run: &RunLocal) -> u64 {
    let out = run.stdout();
    let line = out.lines().find(|l| l.contains("sidecred-agent status --socket")).expect("status command");
    let words: Vec<&str> = line.split_whitespace().collect();
    let status = Command::new(words[0]).args(&words[1..]).output().expect("run the printed status command");
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "the printed status command succeeds: {text}");
    assert_no_secrets("sidecred-agent status", &text);
    let figure = text.lines().find_map(|l| l.strip_prefix("refreshes:")).expect("a refreshes line");
    figure.trim().parse().expect("a count")
}

/// The fingerprint of the token the stand-in saw on the `n`th Messages request (1-based), once logged.
async fn token_seen_by_stand_in(run: &RunLocal, n: usize) -> String {
    let what = format!("the stand-in to log Messages request {n}");
    let deadline = Instant::now() + READY;
    loop {
        let err = run.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("stand-in Messages API: POST")).collect();
        if let Some(line) = lines.get(n - 1) {
            return line.rsplit(' ').next().expect("a fingerprint").to_owned();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; {}", run.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything the demo started is gone: its pids, its process group, its port, its socket and directory.
async fn assert_all_stopped(run: &RunLocal, pids: &[(String, Pid)], api: &str, socket: &Path) {
    for (name, pid) in pids {
        assert!(is_gone(*pid), "the {name} (pid {pid}) is still running; {}", run.output());
    }
    assert_eq!(killpg(run.pgid(), None), Err(Errno::ESRCH), "a process of the script's group is left");
    let demo_dir = socket.parent().expect("the demo's directory");
    let left = processes_mentioning(&demo_dir.to_string_lossy());
    assert!(left.is_empty(), "processes on the demo's files are left: {left:?}");
    let port = api.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(port).is_err(), "something still listens on {port}");
    assert!(!socket.exists(), "the agent's socket {} is left", socket.display());
    assert!(!demo_dir.exists(), "the demo's directory {} is left", demo_dir.display());
}

#[tokio::test]
async fn the_demo_streams_across_a_refresh_and_ctrl_c_stops_everything_it_started() {
    let port = free_port();
    let started = Instant::now();
    let mut run = RunLocal::start(&["--demo", "--listen", &format!("127.0.0.1:{port}")]);
    run.wait_for("Try it", true, READY).await;
    let ready_in = started.elapsed();
    let api = run.field("API (the forwarder)");
    assert_eq!(api, format!("http://127.0.0.1:{port}"));
    let socket = PathBuf::from(run.field("agent socket"));
    let pids = run.demo_pids();

    let first = stream_through(&api).await;
    assert_demo_answer(&first, "first");
    eprintln!("ready in {ready_in:?}, first answer after {:?}", started.elapsed());
    let first_token = token_seen_by_stand_in(&run, 1).await;

    // A refresh after the first request: the demo login expires within a minute, the stand-in's tokens
    // live one. On a slow start the first refresh may already be behind us; then the next one counts.
    let mut client = sidecred_proto::client::Client::connect(&socket).await.expect("the agent's socket");
    let before = client.status().await.expect("status");
    let want = before.refresh_count + 1;
    wait_for_status(&socket, "the agent to refresh the demo token", REFRESH, |s| s.refresh_count >= want)
        .await;
    run.wait_for("refreshed the access token", false, READY).await;
    run.wait_for("stand-in token endpoint: refresh", false, READY).await;
    assert!(printed_status_refreshes(&run) >= 1, "the printed status command shows the refresh");
    let after = client.status().await.expect("status");
    let refreshed_token = after.token_fingerprint.expect("a token");
    assert_ne!(Some(&refreshed_token), before.token_fingerprint.as_ref(), "a new token after the refresh");

    let second = stream_through(&api).await;
    assert_demo_answer(&second, "second");
    let second_token = token_seen_by_stand_in(&run, 2).await;
    assert_ne!(second_token, first_token, "the second request carried the refreshed token");
    let now_served = client.status().await.expect("status").token_fingerprint.expect("a token");
    assert_eq!(second_token, now_served, "the stand-in saw the token the agent serves");
    drop(client);

    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    killpg(run.pgid(), Signal::SIGINT).expect("SIGINT the group");
    let status = run.wait_exit(STOP).await;
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C; {}", run.output());
    assert_all_stopped(&run, &pids, &api, &socket).await;
    assert!(run.stderr().contains("run-local: stopped"), "{}", run.output());
}

#[tokio::test]
async fn a_sigterm_to_the_demo_script_alone_stops_everything_it_started() {
    let mut run = RunLocal::start(&["--demo", "--listen", &format!("127.0.0.1:{}", free_port())]);
    run.wait_for("Try it", true, READY).await;
    let (api, socket) = (run.field("API (the forwarder)"), PathBuf::from(run.field("agent socket")));
    let pids = run.demo_pids();

    kill(run.pgid(), Signal::SIGTERM).expect("SIGTERM the script");
    let status = run.wait_exit(STOP).await;
    assert_eq!(status.code(), Some(143), "exit status after SIGTERM; {}", run.output());
    assert_all_stopped(&run, &pids, &api, &socket).await;
}

#[tokio::test]
async fn without_a_login_run_local_names_the_file_and_what_to_do() {
    let port = free_port();
    let mut run = RunLocal::start(&["--listen", &format!("127.0.0.1:{port}")]);
    run.wait_for("run-local: API:", false, READY).await;
    let expected = run.dir.path().join("home/.claude/.credentials.json");
    let err = run.stderr();
    assert!(err.contains(&format!("no credentials at {}", expected.display())), "{err}");
    assert!(err.contains("sidecred-agent login"), "{err}");
    assert!(err.contains("scripts/run-local.sh --demo"), "{err}");
    let readyz = http_client().get(format!("http://127.0.0.1:{port}/readyz")).send().await.expect("readyz");
    assert_eq!(readyz.status(), 503, "no login, not ready");

    killpg(run.pgid(), Signal::SIGINT).expect("SIGINT the group");
    let status = run.wait_exit(STOP).await;
    assert_eq!(status.code(), Some(130), "{}", run.output());
    assert_eq!(killpg(run.pgid(), None), Err(Errno::ESRCH), "a process of the script's group is left");
    let left = processes_mentioning(&expected.to_string_lossy());
    assert!(left.is_empty(), "an agent on the credentials file is left: {left:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the forwarder still listens");
}

#[tokio::test]
async fn when_a_process_of_the_demo_dies_the_script_stops_the_others_and_fails() {
    let mut run = RunLocal::start(&["--demo", "--listen", &format!("127.0.0.1:{}", free_port())]);
    run.wait_for("Try it", true, READY).await;
    let (api, socket) = (run.field("API (the forwarder)"), PathBuf::from(run.field("agent socket")));
    let pids = run.demo_pids();
    let (_, forwarder) = pids.iter().find(|(name, _)| name == "forwarder").expect("the forwarder's pid");

    kill(*forwarder, Signal::SIGKILL).expect("SIGKILL the forwarder");
    let status = run.wait_exit(STOP).await;
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "the script fails with the forwarder's status; {}",
        run.output()
    );
    let said = format!("the forwarder (pid {forwarder}) ended with status 137; stopping the others");
    assert!(run.stderr().contains(&said), "{}", run.output());
    assert_all_stopped(&run, &pids, &api, &socket).await;
}
