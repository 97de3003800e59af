//! What a request costs the account, end to end: the real agent and forwarder in front of a fake API
//! that answers with the headers and bodies the real one sends about an account (billed as extra usage,
//! refused as third-party traffic, a window used up, throttled, the long-context answers, overloaded),
//! and that bills or refuses by client shape. Checked on both sides: what the client got, and what the
//! fake's upstream and its billing counter saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_proto::anthropic::{CLAUDE_CODE_USER_AGENT_PREFIX, CLAUDE_CODE_X_APP, X_APP_HEADER};
use sidecred_tests::fakes::upstream::account::now_epoch;
use sidecred_tests::fakes::upstream::{Billing, Canned};
use sidecred_tests::forwarder_harness::{http_client, Backends, Forwarder};
use sidecred_tests::harness::wait_until_async;
use std::io::Read;
use std::time::{Duration, Instant};

/// The client shapes a test sends as: Claude Code's headers as a real Claude Code sends them, or an
/// SDK's.
#[derive(Debug, Clone, Copy, PartialEq)]
enum As {
    ClaudeCode,
    Sdk,
}

async fn ask(fwd: &Forwarder, shape: As) -> reqwest::Response {
    request(fwd, shape).send().await.unwrap()
}

fn request(fwd: &Forwarder, shape: As) -> reqwest::RequestBuilder {
    let req = http_client()
        .post(fwd.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}));
    match shape {
        As::ClaudeCode => req
            .header("user-agent", format!("{CLAUDE_CODE_USER_AGENT_PREFIX}2.1.332 (external, sdk-cli)"))
            .header(X_APP_HEADER, CLAUDE_CODE_X_APP),
        As::Sdk => req.header("user-agent", "Anthropic/Python 2.14.0"),
    }
}

async fn metrics(fwd: &Forwarder) -> String {
    http_client().get(fwd.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

async fn health(fwd: &Forwarder) -> Value {
    http_client().get(fwd.url("/health")).send().await.unwrap().json().await.unwrap()
}

/// The value of the sample whose line starts with `series`, 0 when there is none.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn outcome(page: &str, outcome: &str, client: &str) -> f64 {
    sample(
        page,
        &format!(r#"sidecred_forwarder_upstream_outcomes_total{{outcome="{outcome}",client="{client}"}}"#),
    )
}

async fn error_of(resp: reqwest::Response) -> (u16, Option<String>, Option<String>, Value) {
    let status = resp.status().as_u16();
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (after, retry) = (header("retry-after"), header("x-should-retry"));
    (status, after, retry, resp.json().await.unwrap())
}

/// Every outcome class, each from the answer the reference lists: counted by outcome and client shape,
/// and named in the access log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_class_is_counted_by_client_shape_and_logged() {
    let backends = Backends::start().await;
    // Extra usage allowed, so the billed answer does not pause what follows.
    let fwd = backends.forwarder("forwarder", &["--allow-extra-usage"]).await;
    let up = &backends.upstream;

    let cases: Vec<(&str, Option<Canned>, u16)> = vec![
        ("plan", None, 200),
        ("window_exhausted", Some(Canned::window_exhausted("not-a-time")), 429),
        ("throttled", Some(Canned::throttled()), 429),
        ("request_limit", Some(Canned::long_context_429()), 429),
        ("request_limit", Some(Canned::long_context_400()), 400),
        ("third_party_refused", Some(Canned::third_party()), 400),
        ("overloaded", Some(Canned::overloaded()), 529),
        ("auth", Some(Canned::forbidden()), 403),
        ("window_exhausted", Some(Canned::window_exhausted("").with_unified(&[("status", "rejected")])), 429),
    ];
    for (_, canned, status) in &cases {
        if let Some(canned) = canned {
            up.answer_next(canned.clone());
        }
        let resp = ask(&fwd, As::Sdk).await;
        assert_eq!(resp.status().as_u16(), *status, "{}", up.log());
        // The API's own answer reaches the client whole.
        if *status != 200 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["type"], "error", "{body}");
        }
    }
    up.set_billing(Billing::BillsOthers);
    assert_eq!(ask(&fwd, As::Sdk).await.status(), 200);
    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 200);
    up.fail_next(&[500]);
    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 500);
    assert_eq!(up.billed(), 1);

    let page = metrics(&fwd).await;
    let expect = [
        ("plan", "other", 1.0),
        ("plan", "claude_code", 1.0),
        ("extra_usage", "other", 1.0),
        ("extra_usage", "claude_code", 0.0),
        ("window_exhausted", "other", 2.0),
        ("throttled", "other", 1.0),
        ("request_limit", "other", 2.0),
        ("third_party_refused", "other", 1.0),
        ("overloaded", "other", 1.0),
        ("auth", "other", 1.0),
        ("other", "claude_code", 1.0),
    ];
    for (o, c, n) in expect {
        assert_eq!(outcome(&page, o, c), n, "{o} {c}\n{page}");
    }
    assert_eq!(up.seen_count(), cases.len() + 3, "nothing was answered by the forwarder itself");
    let log = fwd.proc.log();
    for o in [
        "plan",
        "extra_usage",
        "window_exhausted",
        "throttled",
        "request_limit",
        "third_party_refused",
        "overloaded",
        "auth",
        "other",
    ] {
        assert!(
            log.contains(&format!("account=\"{o}\"")) || log.contains(&format!("account={o}")),
            "{o} not in the access log:\n{log}"
        );
    }
    assert!(log.contains("client=claude_code") || log.contains("client=\"claude_code\""), "{log}");
}

/// The default: the first billed answer stops the requests that would be billed the same way. 50
/// requests from an SDK: one reaches the API and is billed, 49 are answered here with the API's 429
/// shape and why. Claude Code's requests, on the plan, still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billed_answer_stops_what_would_be_billed_the_same_way() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let up = &backends.upstream;
    up.set_billing(Billing::BillsOthers);
    let mut refused = 0;
    for i in 0..50 {
        let resp = ask(&fwd, As::Sdk).await;
        if i == 0 {
            assert_eq!(resp.status(), 200, "the first is served (and billed)");
            continue;
        }
        let (status, after, retry, body) = error_of(resp).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("extra usage") && message.contains("--allow-extra-usage"), "{message}");
        let after: u64 = after.unwrap().parse().unwrap();
        assert!((250..=300).contains(&after), "retry-after to the probe interval: {after}");
        assert_eq!(retry.as_deref(), Some("false"), "longer than any SDK waits");
        refused += 1;
    }
    assert_eq!((up.billed(), refused), (1, 49), "{}", up.log());
    assert_eq!(up.seen_count(), 1);

    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 200, "Claude Code is still on its plan");
    assert_eq!(up.billed(), 1);
    let h = health(&fwd).await;
    assert_eq!(h["account"]["state"], "extra_usage_in_use", "{h}");
    assert!(h["account"]["extra_usage_in_use"]["other"]["paused_until"].is_string(), "{h}");
    let page = metrics(&fwd).await;
    assert_eq!(
        sample(
            &page,
            r#"sidecred_forwarder_account_guard_refusals_total{reason="extra_usage",client="other"}"#
        ),
        49.0
    );
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_account_state{state="extra_usage_in_use"}"#),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"sidecred_forwarder_requests_total{route="messages",status_class="4xx",outcome="account_guard"}"#
        ),
        49.0
    );
}

/// The same 50 with `--allow-extra-usage` (here from its environment variable): all billed, all
/// counted and shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_extra_usage_allowed_all_50_are_billed_and_shown() {
    let backends = Backends::start().await;
    let mut cmd =
        sidecred_tests::forwarder_harness::forwarder_cmd(&backends.sandbox, &backends.upstream.url());
    cmd.env("SIDECRED_ALLOW_EXTRA_USAGE", "true");
    let fwd = sidecred_tests::forwarder_harness::start_forwarder(&backends.sandbox, "forwarder", cmd).await;
    backends.upstream.set_billing(Billing::BillsOthers);
    for _ in 0..50 {
        assert_eq!(ask(&fwd, As::Sdk).await.status(), 200);
    }
    assert_eq!(backends.upstream.billed(), 50);
    assert_eq!(outcome(&metrics(&fwd).await, "extra_usage", "other"), 50.0);
    let h = health(&fwd).await;
    assert_eq!(
        (h["account"]["state"].as_str(), h["account"]["extra_usage"].as_str()),
        (Some("extra_usage_in_use"), Some("allowed")),
        "{h}"
    );
}

/// A spent plan with extra usage allowed by the account: every client would be billed, so every client
/// is stopped, until the window's reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_plan_stops_every_client_until_its_reset() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let reset = now_epoch() + 3 * 3600;
    backends.upstream.set_billing(Billing::BillsAll { reset: reset.to_string() });
    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 200);
    for shape in [As::ClaudeCode, As::Sdk] {
        let (status, after, _, body) = error_of(ask(&fwd, shape).await).await;
        assert_eq!(status, 429, "{shape:?}: {body}");
        let after: u64 = after.unwrap().parse().unwrap();
        assert!((3 * 3600 - 60..=3 * 3600).contains(&after), "to the window's reset: {after}");
    }
    assert_eq!(backends.upstream.billed(), 1);
}

/// A rejected window: the API's 429 goes to the client with an honest `retry-after` added; then nothing
/// goes upstream until the reset, and then traffic flows again. The reset in milliseconds, as some
/// answers send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_window_sends_nothing_upstream_until_its_reset() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let up = &backends.upstream;
    let until = now_epoch() + 4;
    up.set_billing(Billing::WindowExhausted { reset: (until * 1000).to_string(), until });

    let (status, after, _, body) = error_of(ask(&fwd, As::ClaudeCode).await).await;
    assert_eq!((status, body["error"]["type"].as_str()), (429, Some("rate_limit_error")));
    let after: u64 = after.expect("an honest retry-after on the API's 429").parse().unwrap();
    assert!((1..=4).contains(&after), "{after}");
    assert_eq!(up.seen_count(), 1);

    let mut answered_here = 0;
    while now_epoch() < until {
        let (status, after, _, body) = error_of(ask(&fwd, As::Sdk).await).await;
        assert_eq!(status, 429, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("5h usage window"), "{body}");
        assert!(after.unwrap().parse::<u64>().unwrap() <= 4);
        answered_here += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered_here > 0);
    assert_eq!(up.seen_count(), 1, "0 requests upstream until the reset:\n{}", up.log());
    let h = health(&fwd).await;
    assert!(matches!(h["account"]["state"].as_str(), Some("window_exhausted" | "on_plan")), "{h}");

    // At the reset the pause ends by itself; the first request after it is served.
    let started = Instant::now();
    let f = &fwd;
    wait_until_async("a request served after the reset", Duration::from_secs(10), || async move {
        ask(f, As::Sdk).await.status() == 200
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 200);
    assert_eq!(health(&fwd).await["account"]["state"], "on_plan");
    let page = metrics(&fwd).await;
    let refusals = sample(
        &page,
        r#"sidecred_forwarder_account_guard_refusals_total{reason="window_exhausted",client="other"}"#,
    );
    assert!(refusals >= answered_here as f64, "{refusals} < {answered_here}\n{page}");
}

/// The state gauge is the state at the scrape: a window's pause shows as ended at its reset, with no
/// request since (alerts and dashboards read the gauge, and a paused account may see no traffic at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_gauge_shows_a_pause_ended_without_traffic() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let up = &backends.upstream;
    let until = now_epoch() + 3;
    up.set_billing(Billing::WindowExhausted { reset: until.to_string(), until });
    assert_eq!(ask(&fwd, As::Sdk).await.status(), 429);
    let state =
        |page: &str, s: &str| sample(page, &format!(r#"sidecred_forwarder_account_state{{state="{s}"}}"#));
    let page = metrics(&fwd).await;
    assert_eq!(state(&page, "window_exhausted"), 1.0, "{page}");
    let f = &fwd;
    wait_until_async(
        "the gauge to show the plan again after the reset",
        Duration::from_secs(10),
        || async move { state(&metrics(f).await, "on_plan") == 1.0 },
    )
    .await;
    assert!(now_epoch() >= until, "on_plan before the reset");
    assert_eq!(state(&metrics(&fwd).await, "window_exhausted"), 0.0);
    assert_eq!(up.seen_count(), 1, "a request went upstream");
}

/// An absurd reset (the year 3000) is not believed: nothing is paused, and no `retry-after` is made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_reset_pauses_nothing() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    backends.upstream.answer_next(Canned::window_exhausted("32503680000"));
    let (status, after, _, _) = error_of(ask(&fwd, As::Sdk).await).await;
    assert_eq!((status, after), (429, None));
    assert_eq!(ask(&fwd, As::Sdk).await.status(), 200);
    assert_eq!(backends.upstream.seen_count(), 2);
}

/// The long-context 429 is about the request: it pauses nothing, even with a rejected-looking status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_context_429_pauses_nothing() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let reset = (now_epoch() + 3600).to_string();
    backends.upstream.answer_next(Canned::long_context_429().with_unified(&[
        ("status", "rejected"),
        ("5h-status", "rejected"),
        ("5h-reset", &reset),
    ]));
    let (status, _, _, body) = error_of(ask(&fwd, As::Sdk).await).await;
    assert_eq!(status, 429);
    assert!(body["error"]["message"].as_str().unwrap().contains("long context"), "the API's own: {body}");
    for _ in 0..3 {
        assert_eq!(ask(&fwd, As::Sdk).await.status(), 200);
    }
    assert_eq!(backends.upstream.seen_count(), 4);
    assert_eq!(health(&fwd).await["account"]["state"], "on_plan");
}

/// Third-party traffic refused by the API: passed on as the API said it (it costs nothing), and shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_refusal_is_passed_on_and_shown() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    backends.upstream.set_billing(Billing::RefusesOthers);
    let (status, _, _, body) = error_of(ask(&fwd, As::Sdk).await).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Third-party apps"), "{body}");
    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 200);
    assert_eq!(health(&fwd).await["account"]["state"], "third_party_refused");
    assert_eq!(ask(&fwd, As::Sdk).await.status(), 400, "not paused: refusing costs nothing");
    assert_eq!(backends.upstream.seen_count(), 3);
}

/// Clients that accept compressed answers (One-Hub and the Python SDK send `accept-encoding: gzip,
/// deflate`) may get the API's errors gzipped: the account reads them decoded, and the client gets the
/// bytes the API sent. Read as what it is, the long-context 429 pauses nothing even with a
/// rejected-looking status (unread, it looked like a spent window and paused every client for an hour);
/// the third-party refusal is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzipped_errors_are_read_for_the_account_and_passed_on_as_sent() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let up = &backends.upstream;
    up.set_gzip_errors(true);
    let gzipped =
        |resp: &reqwest::Response| resp.headers().get("content-encoding").map(|v| v.as_bytes().to_vec());
    let gunzip = |bytes: &[u8]| {
        let mut out = String::new();
        flate2::read::GzDecoder::new(bytes).read_to_string(&mut out).unwrap();
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let reset = (now_epoch() + 3600).to_string();
    up.answer_next(Canned::long_context_429().with_unified(&[
        ("status", "rejected"),
        ("5h-status", "rejected"),
        ("5h-reset", &reset),
    ]));
    let resp = request(&fwd, As::Sdk).header("accept-encoding", "gzip, deflate").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(gzipped(&resp).as_deref(), Some(&b"gzip"[..]), "passed on as the API sent it");
    let body = gunzip(&resp.bytes().await.unwrap());
    assert!(body["error"]["message"].as_str().unwrap().contains("long context"), "{body}");
    assert_eq!(ask(&fwd, As::Sdk).await.status(), 200, "the long-context 429 paused the account");

    up.set_billing(Billing::RefusesOthers);
    let resp = request(&fwd, As::Sdk).header("accept-encoding", "gzip, deflate").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(gzipped(&resp).as_deref(), Some(&b"gzip"[..]));
    let body = gunzip(&resp.bytes().await.unwrap());
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Third-party apps"), "{body}");
    assert_eq!(health(&fwd).await["account"]["state"], "third_party_refused");
    let page = metrics(&fwd).await;
    assert_eq!(outcome(&page, "request_limit", "other"), 1.0, "{page}");
    assert_eq!(outcome(&page, "third_party_refused", "other"), 1.0, "{page}");
    assert_eq!(up.seen_count(), 3);
}

/// `--clients claude-code`: other clients get 403 with the mode named, and nothing goes upstream; Claude
/// Code's requests pass untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_claude_code_refuses_other_clients_and_passes_claude_code_untouched() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &["--clients", "claude-code"]).await;
    let (status, _, retry, body) = error_of(ask(&fwd, As::Sdk).await).await;
    assert_eq!((status, body["error"]["type"].as_str()), (403, Some("permission_error")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--clients claude-code"), "{body}");
    assert_eq!(retry.as_deref(), Some("false"));
    let models = http_client().get(fwd.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 403, "every route");
    assert_eq!(backends.upstream.seen_count(), 0);

    assert_eq!(ask(&fwd, As::ClaudeCode).await.status(), 200);
    let seen = backends.upstream.last_seen().unwrap();
    assert_eq!(seen.header("user-agent").as_deref(), Some("claude-cli/2.1.332 (external, sdk-cli)"));
    assert_eq!(seen.header(X_APP_HEADER).as_deref(), Some(CLAUDE_CODE_X_APP));
    assert_eq!(health(&fwd).await["account"]["clients"], "claude-code");
}
