//! The socket: who may ask, a malformed frame, and the connection cap.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_uid_is_not_allowed_gets_no_token() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    // The test runs as some uid; allow only another one.
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.args(["--allow-uid", "4242"]);
    let agent = Proc::spawn("agent", cmd, &sb.log("agent"));
    agent.wait_for_log("listening", Duration::from_secs(20)).await;
    let err = sb.client().await.get_token().await.unwrap_err();
    assert_eq!(agent_code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(agent.log().contains("not allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_on_the_machine_is_refused_unless_allowed() {
    let me = nix::unistd::getuid().as_raw();
    if me != 0 {
        eprintln!("skipping the setpriv half: needs root to run a peer as uid 65534");
    }
    let fake = FakeOAuth::start().await;
    let pair = fake.issue_pair();
    for (allow, expect_ok) in [(me.to_string(), false), (format!("{me},65534"), true)] {
        let sb = Sandbox::new();
        sb.write_seed(&pair, now_ms() + 8 * HOUR_MS);
        for dir in [sb.path(), &sb.path().join("run")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = sb.agent_cmd(&fake.token_url());
        cmd.args(["--socket-mode", "0666", "--allow-uid", &allow]);
        let _agent = sb.start_agent("agent", cmd).await;
        if me != 0 {
            continue;
        }
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin())
            .args(["refresh", "--socket"])
            .arg(sb.socket())
            .output()
            .expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_no_secrets("refresh as 65534", &stderr);
        assert_eq!(out.status.success(), expect_ok, "allow={allow}: {stderr}");
        if !expect_ok {
            assert!(stderr.contains("uid 65534 is not allowed"), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let mut agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let mut keeper = sb.client().await;
    assert!(keeper.get_token().await.is_ok());

    for garbage in [&b"\x00\x00\x00\x05hello"[..], b"\xff\xff\xff\xff", b"\x00\x00\x00\x02{}"] {
        let mut raw = tokio::net::UnixStream::connect(sb.socket()).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await.unwrap().unwrap();
        let body: Value = serde_json::from_slice(&answer[4..]).unwrap();
        assert_eq!(body["kind"], "error", "{body}");
        assert!(body["code"] == "bad_request" || body["code"] == "unsupported_version", "{body}");
    }
    // The earlier connection is still usable and the agent is alive.
    assert_eq!(keeper.get_token().await.unwrap().access_token.expose(), pair.access_token);
    assert!(agent.is_running());
}

/// The agent's thread count, from /proc.
fn thread_count(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn_and_connection_threads_end_with_their_clients() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let idle = thread_count(agent.pid());

    // The agent serves 256 connections at once, a thread each.
    let mut held = Vec::new();
    for _ in 0..256 {
        let mut c = Client::connect(&sb.socket()).await.unwrap();
        assert_eq!(c.get_token().await.unwrap().access_token.expose(), pair.access_token);
        held.push(c);
    }
    // (Give or take the thread of the readiness probe's connection, which may still be counted in `idle`.)
    let busy = thread_count(agent.pid());
    assert!(busy >= idle + 250, "a thread per open connection: {idle} idle, {busy} with 256 open");

    // One more is left in the kernel's backlog, unanswered, until a served one closes.
    let socket = sb.socket();
    let mut waiting = tokio::spawn(async move {
        let mut c = Client::connect(&socket).await?;
        c.get_token().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(),
        "the 257th connection must wait for a free slot"
    );
    drop(held.pop());
    let grant = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(grant.access_token.expose(), pair.access_token);

    // Every connection thread ends with its client; the agent goes back to its idle threads (give or take
    // the runtime's blocking pool, which the seed watcher's polls may start meanwhile).
    drop(held);
    wait_until("connection threads to end", Duration::from_secs(10), || {
        thread_count(agent.pid()) <= idle + 2
    })
    .await;
    let mut c = sb.client().await;
    assert_eq!(c.get_token().await.unwrap().access_token.expose(), pair.access_token);
}

/// The next push on `s`, within a generous deadline.
async fn next(
    s: &mut sidecred_proto::client::Subscription,
) -> Result<Result<sidecred_proto::TokenGrant, sidecred_proto::ProtoError>, ClientError> {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("a push in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_pushed_each_new_token_in_order() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let mut subscription = sb.client().await.subscribe().await.expect("subscribe");
    let first = next(&mut subscription).await.expect("the connection").expect("a token");
    assert_eq!(first.access_token.expose(), pair.access_token);
    assert!(first.generation > 0, "grants carry their generation");

    // A refresh asked on another connection: its answer and the push name the same token, and the
    // push's generation orders it after the first.
    let refreshed = sb.client().await.refresh().await.expect("refresh");
    let pushed = next(&mut subscription).await.expect("the connection").expect("a token");
    assert_eq!(pushed.access_token, refreshed.access_token);
    assert_eq!(pushed.generation, refreshed.generation);
    assert!(pushed.generation > first.generation);
}

// ---------------------------------------------------------------------------------------------
// tokens that are never refreshed
