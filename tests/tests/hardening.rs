//! End-to-end tests of what an outsider can do to `sidecred-agent`: absurd answers from the token
//! endpoint, files that are not files, and peers that hold connections or speak another protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use sidecred_proto::{ErrorCode, Response, ResponseFrame, TokenState};
use sidecred_tests::harness::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn status(sb: &Sandbox) -> sidecred_proto::StatusReport {
    sb.client().await.status().await.expect("status")
}

/// Sends one raw frame and reads the answer.
fn exchange_raw(socket: &std::path::Path, body: &[u8]) -> ResponseFrame {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).expect("write");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("answer length");
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).expect("answer");
    serde_json::from_slice(&answer).expect("answer is a frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_lifetime_from_the_token_endpoint_keeps_the_new_pair_and_the_agent_working() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    // 1e19 seconds: today's code panicked computing the deadline after the endpoint had rotated.
    fake.set_expires_in(10_000_000_000_000_000_000);
    let grant = sb.client().await.refresh().await.expect("the refresh succeeds");
    assert_eq!(Some(grant.access_token.expose().to_owned()), fake.latest_access_token());
    let doc = read_json(&sb.seed());
    let saved = refresh_token_of(&doc).expect("a refresh token on disk");
    assert!(fake.is_live_refresh_token(&saved), "the rotated pair was saved");
    let report = status(&sb).await;
    assert_eq!(report.state, Some(TokenState::Valid), "{report:?}");
    assert!(agent.log().contains("implausible lifetime"), "the clamp is logged");
    // And the lifecycle still answers: another refresh goes through.
    fake.set_expires_in(8 * 3600);
    sb.client().await.refresh().await.expect("a second refresh");
    assert!(fake.is_live_refresh_token(&refresh_token_of(&read_json(&sb.seed())).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_files_are_refused_without_blocking_and_a_real_login_is_adopted() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    std::fs::remove_file(sb.seed()).unwrap();
    nix::unistd::mkfifo(&sb.seed(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A FIFO at the seed path at start: the agent still comes up, says why, and serves no token.
    let mut agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let report = status(&sb).await;
    assert_eq!(report.state, Some(TokenState::NoCredentials));
    assert!(report.message.unwrap_or_default().contains("FIFO"), "the reason names the FIFO");

    // /dev/zero behind a symlink, then a file far larger than any credentials: refused, the agent lives.
    std::fs::remove_file(sb.seed()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", sb.seed()).unwrap();
    agent.wait_for_log("a device, not a regular file", Duration::from_secs(15)).await;
    std::fs::remove_file(sb.seed()).unwrap();
    std::fs::write(sb.seed(), vec![b' '; 2 * 1024 * 1024]).unwrap();
    agent.wait_for_log("larger than", Duration::from_secs(15)).await;

    // A real login replaces them and is picked up.
    std::fs::remove_file(sb.seed()).unwrap();
    sb.write_seed(&pair, now_ms() + 8 * HOUR_MS);
    wait_for_status(&sb.socket(), "the real login", Duration::from_secs(15), |s| {
        s.state == Some(TokenState::Valid)
    })
    .await;
    assert_eq!(sb.client().await.get_token().await.unwrap().access_token.expose(), pair.access_token);

    // A FIFO appearing later does not wedge the watcher: SIGTERM still ends the agent promptly.
    std::fs::remove_file(sb.seed()).unwrap();
    nix::unistd::mkfifo(&sb.seed(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    agent.wait_for_log("a FIFO, not a regular file", Duration::from_secs(15)).await;
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).success(), "stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_left_by_a_killed_writer_are_removed_at_start() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let stale = sb.state_dir().join(".credentials.json.sidecred-4242-deadbeef.tmp");
    std::fs::write(&stale, b"{\"half\":").unwrap();
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.arg("--state-dir").arg(sb.state_dir());
    let agent = sb.start_agent("agent", cmd).await;
    assert!(!stale.exists(), "the stale temp file is gone");
    assert!(agent.log().contains("removed temporary files"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_drips_a_frame_is_cut_off_and_others_are_served() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let mut dripper = UnixStream::connect(sb.socket()).unwrap();
    dripper.write_all(&[0, 0]).unwrap();
    dripper.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    // Half a frame header, then nothing: the agent closes the connection once the frame deadline passes.
    let closed = dripper.read_to_end(&mut rest);
    assert!(closed.is_ok(), "closed by the agent, not by our timeout: {closed:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
    assert_eq!(sb.client().await.get_token().await.unwrap().access_token.expose(), pair.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_another_protocol_version_gets_no_token() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let answer = exchange_raw(&sb.socket(), br#"{"v":2,"op":"get_token"}"#);
    match answer.response {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::UnsupportedVersion, "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let answer = exchange_raw(&sb.socket(), br#"{"v":1,"op":"get_token"}"#);
    assert!(matches!(answer.response, Response::Token(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.args(["--idle-timeout", "1s"]);
    let _agent = sb.start_agent("agent", cmd).await;
    let answer = {
        let mut stream = UnixStream::connect(sb.socket()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = br#"{"v":1,"op":"get_token"}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        stream.write_all(&frame).unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut answer).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        (closed.is_ok(), started.elapsed())
    };
    assert!(answer.0, "closed by the agent");
    assert!(answer.1 < Duration::from_secs(5), "idle for {:?}", answer.1);
}

/// A peer running as uid 65534 that opens `count` connections and drips a byte on each every 0.5 s for
/// `seconds`; it prints how many the agent had closed by the end.
fn dripping_peer(socket: &std::path::Path, count: usize, seconds: u64) -> std::process::Child {
    let script = format!(
        r#"
import socket, sys, time
socks = []
for _ in range({count}):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[1])
    except OSError:
        continue
    s.setblocking(False)
    socks.append(s)
print("connected", len(socks), flush=True)
end = time.time() + {seconds}
closed = set()
while time.time() < end:
    for i, s in enumerate(socks):
        if i in closed:
            continue
        try:
            s.send(b"\x00")
        except OSError:
            closed.add(i)
    time.sleep(0.5)
print("closed", len(closed), flush=True)
"#
    );
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &script])
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("setpriv python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_cannot_hold_the_slots_the_forwarder_needs() {
    if nix::unistd::getuid().as_raw() != 0 {
        eprintln!("skipping: needs root to run a peer as uid 65534");
        return;
    }
    let me = nix::unistd::getuid().as_raw();
    for (allow, what) in [(me.to_string(), "not allowed"), (format!("{me},65534"), "allowed")] {
        let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
        for dir in [sb.path(), &sb.path().join("run")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = sb.agent_cmd(&fake.token_url());
        cmd.args(["--socket-mode", "0666", "--allow-uid", &allow]);
        let agent = sb.start_agent("agent", cmd).await;
        // 300 connections from uid 65534, each dripping a byte every half second.
        let mut peer = dripping_peer(&sb.socket(), 300, 6);
        let mut out = std::io::BufReader::new(peer.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.starts_with("connected"), "{line}");
        // Meanwhile the agent's own uid (the forwarder's) is served at once, on fresh connections.
        for _ in 0..10 {
            let started = Instant::now();
            let grant = tokio::time::timeout(Duration::from_secs(3), async {
                sb.client().await.get_token().await.unwrap()
            })
            .await
            .unwrap_or_else(|_| panic!("uid 65534 ({what}) starved the agent's own uid"));
            assert_eq!(grant.access_token.expose(), pair.access_token);
            assert!(started.elapsed() < Duration::from_secs(3));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let closed: usize = line.trim().strip_prefix("closed ").unwrap().parse().unwrap();
        assert!(peer.wait().unwrap().success());
        if what == "not allowed" {
            assert_eq!(closed, 300, "every refused connection was closed within the frame deadline");
            assert!(agent.log().contains("is not allowed"));
        } else {
            // An allowed uid that is not the only one holds at most 3/4 of the 256 slots.
            assert!(closed >= 300 - 192, "only {closed} of 300 refused");
            assert!(agent.log().contains("connections to this agent already"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_others_can_write_are_refused() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    // A socket directory every user can write to: anyone could move the socket away and plant their own.
    let run = sb.path().join("run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut agent = Proc::spawn("agent", sb.agent_cmd(&fake.token_url()), &sb.log("agent"));
    assert!(!agent.wait_exit(Duration::from_secs(10)).success());
    let log = agent.log();
    assert!(log.contains("writable by every user") && log.contains(&run.display().to_string()), "{log}");
    assert!(!sb.socket().exists());

    // The sticky bit (as on /tmp) makes it safe again.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o1777)).unwrap();
    drop(sb.start_agent("agent-sticky", sb.agent_cmd(&fake.token_url())).await);

    // A state directory that belongs to another user.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    if nix::unistd::getuid().as_raw() == 0 {
        let theirs = sb.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let mut cmd = sb.agent_cmd(&fake.token_url());
        cmd.arg("--state-dir").arg(&theirs);
        let mut agent = Proc::spawn("agent-state", cmd, &sb.log("agent-state"));
        assert!(!agent.wait_exit(Duration::from_secs(10)).success());
        assert!(agent.log().contains("belongs to uid 65534"), "{}", agent.log());
    }
}
