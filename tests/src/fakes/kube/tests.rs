//! The fake's own behaviour, checked with a plain HTTP client: what the agent will meet.

use super::*;

const NS: &str = "sc";
const TOKEN: &str = "sa-token";

async fn fake() -> FakeKube {
    FakeKube::start(NS, "creds", TOKEN, ".credentials.json", b"{}").await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn url(k: &FakeKube, path: &str) -> String {
    format!("http://{}{path}", k.addr)
}

#[tokio::test]
async fn leases_update_with_resource_versions_and_micro_times() {
    let k = fake().await;
    k.put_lease("sidecred", LeaseSpec { holder_identity: Some("a".into()), ..Default::default() });
    let path = url(&k, "/apis/coordination.k8s.io/v1/namespaces/sc/leases/sidecred");
    let got: Value = client().get(&path).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["spec"]["holderIdentity"], "a");
    let rv = got["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let mut body = got.clone();
    body["spec"]["holderIdentity"] = "b".into();
    body["spec"]["renewTime"] = "2026-11-30T11:00:00.123456Z".into();
    let ok = client().put(&path).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The same resourceVersion again: someone else updated meanwhile.
    let stale = client().put(&path).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(stale.status(), 409);
    assert_eq!(k.lease("sidecred").unwrap().holder_identity.as_deref(), Some("b"));
    assert!(rv != k.st().leases["sidecred"].rv.to_string());
    let mut bad = body.clone();
    bad["metadata"]["resourceVersion"] = k.st().leases["sidecred"].rv.to_string().into();
    bad["spec"]["renewTime"] = "2026-11-30T11:00:00Z".into();
    assert_eq!(client().put(&path).bearer_auth(TOKEN).json(&bad).send().await.unwrap().status(), 400);
    // Creating is forbidden unless allowed; deleting always.
    let create = url(&k, "/apis/coordination.k8s.io/v1/namespaces/sc/leases");
    let new = json!({"metadata": {"name": "other"}, "spec": {"holderIdentity": "x"}});
    assert_eq!(client().post(&create).bearer_auth(TOKEN).json(&new).send().await.unwrap().status(), 403);
    k.allow_lease_create();
    assert_eq!(client().post(&create).bearer_auth(TOKEN).json(&new).send().await.unwrap().status(), 201);
    assert_eq!(client().post(&create).bearer_auth(TOKEN).json(&new).send().await.unwrap().status(), 409);
    assert_eq!(client().delete(&path).bearer_auth(TOKEN).send().await.unwrap().status(), 403);
    let holders: Vec<_> = k.seen().iter().filter_map(|s| s.holder.clone()).collect();
    assert_eq!(holders, ["b", "x"]);
}

async fn next_event(
    lines: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    buf: &mut Vec<u8>,
) -> Option<Value> {
    use futures_util::StreamExt;
    loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            return Some(serde_json::from_slice(&line).unwrap());
        }
        match tokio::time::timeout(Duration::from_secs(5), lines.next()).await.expect("an event within 5 s") {
            Some(chunk) => buf.extend_from_slice(&chunk.unwrap()),
            None => return None,
        }
    }
}

#[tokio::test]
async fn the_secret_watch_streams_changes_bookmarks_and_gone() {
    let k = fake().await;
    k.set_bookmark_interval(Duration::from_millis(50));
    let watch = url(&k, "/api/v1/namespaces/sc/secrets?watch=true&fieldSelector=metadata.name%3Dcreds&allowWatchBookmarks=true&timeoutSeconds=10");
    // Without the field selector the Role's resourceNames do not cover it.
    let all = url(&k, "/api/v1/namespaces/sc/secrets?watch=true");
    assert_eq!(client().get(&all).bearer_auth(TOKEN).send().await.unwrap().status(), 403);

    let resp = client().get(&watch).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut lines = Box::pin(resp.bytes_stream());
    let mut buf = Vec::new();
    let added = next_event(&mut lines, &mut buf).await.unwrap();
    assert_eq!(added["type"], "ADDED");
    let rv0: u64 = added["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    k.set_value(".credentials.json", b"{\"new\":1}");
    let mut saw_modified = false;
    let mut saw_bookmark = false;
    while !(saw_modified && saw_bookmark) {
        let ev = next_event(&mut lines, &mut buf).await.unwrap();
        match ev["type"].as_str().unwrap() {
            "MODIFIED" => {
                assert_eq!(ev["object"]["data"][".credentials.json"], b64(b"{\"new\":1}"));
                saw_modified = true;
            }
            "BOOKMARK" => saw_bookmark = true,
            other => panic!("unexpected {other}"),
        }
    }
    // An outage ends the stream; requests answer 503.
    k.set_down(true);
    while next_event(&mut lines, &mut buf).await.is_some() {}
    assert_eq!(client().get(&watch).bearer_auth(TOKEN).send().await.unwrap().status(), 503);
    k.set_down(false);

    // Resuming from the first version replays the change; after a compaction it is 410 Gone.
    let resume = format!("{watch}&resourceVersion={rv0}");
    let mut lines = Box::pin(client().get(&resume).bearer_auth(TOKEN).send().await.unwrap().bytes_stream());
    let mut buf = Vec::new();
    assert_eq!(next_event(&mut lines, &mut buf).await.unwrap()["type"], "MODIFIED");
    k.compact();
    let mut lines = Box::pin(client().get(&resume).bearer_auth(TOKEN).send().await.unwrap().bytes_stream());
    let mut buf = Vec::new();
    let gone = next_event(&mut lines, &mut buf).await.unwrap();
    assert_eq!(gone["type"], "ERROR");
    assert_eq!(gone["object"]["code"], 410);
    assert!(next_event(&mut lines, &mut buf).await.is_none(), "the stream ends after 410");
}

#[tokio::test]
async fn the_switches_misbehave_as_named() {
    let k = fake().await;
    let secret = url(&k, "/api/v1/namespaces/sc/secrets/creds");
    let watch = url(&k, "/api/v1/namespaces/sc/secrets?watch=true&fieldSelector=metadata.name%3Dcreds&allowWatchBookmarks=true&timeoutSeconds=10");
    // A hung GET is accepted and never answered; after the window GETs answer again.
    k.hang_secret_gets_for(Duration::from_millis(300));
    let hung = client().get(&secret).bearer_auth(TOKEN).timeout(Duration::from_millis(500)).send().await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    assert_eq!(client().get(&secret).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(k.seen().iter().filter(|s| s.status == 0).count(), 1);
    // 410 on every watch, from any version.
    k.set_watch_mode(WatchMode::Gone);
    for _ in 0..2 {
        let mut lines =
            Box::pin(client().get(&watch).bearer_auth(TOKEN).send().await.unwrap().bytes_stream());
        let mut buf = Vec::new();
        assert_eq!(next_event(&mut lines, &mut buf).await.unwrap()["object"]["code"], 410);
    }
    assert_eq!(k.watch_requests(), 2);
    // Garbage, and an event for another object first.
    k.set_watch_mode(WatchMode::Garbage);
    let resp = client().get(&watch).bearer_auth(TOKEN).send().await.unwrap();
    let mut stream = Box::pin(resp.bytes_stream());
    let text = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut stream))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(text.starts_with(b"this is not"), "{text:?}");
    k.set_watch_mode(WatchMode::Normal);
    k.send_other_object_on_watch("other", b"{\"x\":1}");
    let mut lines = Box::pin(client().get(&watch).bearer_auth(TOKEN).send().await.unwrap().bytes_stream());
    let mut buf = Vec::new();
    let first = next_event(&mut lines, &mut buf).await.unwrap();
    assert_eq!(first["object"]["metadata"]["name"], "other");
    assert_eq!(next_event(&mut lines, &mut buf).await.unwrap()["object"]["metadata"]["name"], "creds");
    // A huge Secret is a valid Secret, just large.
    k.serve_huge_secret(2 * 1024 * 1024);
    let body = client().get(&secret).bearer_auth(TOKEN).send().await.unwrap().bytes().await.unwrap();
    assert!(body.len() > 2 * 1024 * 1024);
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["metadata"]["name"], "creds");
}
