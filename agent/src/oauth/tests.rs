use super::*;

const URL: &str = "https://token.test/v1/oauth/token";

#[test]
fn status_table() {
    let cases: &[(u16, &str, bool)] = &[
        (400, r#"{"error":"invalid_grant","error_description":"Refresh token not found"}"#, false),
        (401, r#"{"error":"invalid_token"}"#, false),
        (403, "", false),
        (400, r#"{"error":"invalid_request"}"#, true),
        (429, r#"{"error":{"type":"rate_limit_error"}}"#, true),
        (500, "oops", true),
        (502, "<html>bad gateway</html>", true),
        (503, "", true),
    ];
    for (status, body, transient) in cases {
        let err = classify_failure(*status, body.as_bytes(), None, URL);
        assert_eq!(matches!(err, TokenError::Transient { .. }), *transient, "{status} {body}: {err}");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
    }
}

#[test]
fn failure_text_never_echoes_tokens() {
    let body = r#"{"error":"sk-ant-ort01-leaked","error_description":"bad token sk-ant-ort01-leaked"}"#;
    let err = classify_failure(400, body.as_bytes(), None, URL);
    assert!(!err.to_string().contains("leaked"), "{err}");
}

#[test]
fn parses_success_and_keeps_missing_refresh_token_as_none() {
    let body = br#"{"access_token":"A","expires_in":28800,"scope":"user:inference user:profile","token_type":"Bearer"}"#;
    let r = parse_success(body, URL).expect("ok");
    assert!(r.refresh_token.is_none());
    assert_eq!(r.expires_in, Duration::from_secs(28800));
    assert_eq!(r.scopes, Some(vec!["user:inference".to_owned(), "user:profile".to_owned()]));
}

#[test]
fn blank_tokens_are_no_tokens() {
    // Found by the token_response fuzz target: a blank access token was accepted and saved, and the
    // file then failed to parse at the next start, which lost the login.
    let blank_access = br#"{"access_token":" ","refresh_token":"R","expires_in":60}"#;
    assert!(matches!(parse_success(blank_access, URL), Err(TokenError::Transient { .. })));
    let blank_refresh = br#"{"access_token":"A","refresh_token":"\t ","expires_in":60}"#;
    let r = parse_success(blank_refresh, URL).expect("a blank refresh token is none");
    assert!(r.refresh_token.is_none(), "so the old one is kept");
}

#[test]
fn malformed_success_is_transient_and_quiet() {
    let err = parse_success(br#"{"access_token":"sk-ant-oat01-leak","expires_in":"#, URL).expect_err("bad");
    assert!(matches!(err, TokenError::Transient { .. }));
    assert!(!err.to_string().contains("leak"), "{err}");
}

#[test]
fn an_absurd_or_missing_lifetime_never_loses_the_pair() {
    let ok = |body: &str| parse_success(body.as_bytes(), URL).expect(body);
    let huge = ok(r#"{"access_token":"A","refresh_token":"R","expires_in":1e19}"#);
    assert_eq!(huge.expires_in, MAX_TOKEN_LIFETIME);
    assert_eq!(huge.refresh_token.as_ref().map(Secret::expose), Some("R"));
    assert_eq!(
        ok(r#"{"access_token":"A","expires_in":18446744073709551615}"#).expires_in,
        MAX_TOKEN_LIFETIME
    );
    assert_eq!(ok(r#"{"access_token":"A","expires_in":"10000000000000"}"#).expires_in, MAX_TOKEN_LIFETIME);
    for odd in [
        r#""expires_in":-5"#,
        r#""expires_in":0"#,
        r#""expires_in":"soon""#,
        r#""expires_in":null"#,
        r#""x":1"#,
    ] {
        let r = ok(&format!(r#"{{"access_token":"A","refresh_token":"R",{odd}}}"#));
        assert_eq!(r.expires_in, FALLBACK_TOKEN_LIFETIME, "{odd}");
    }
    assert_eq!(ok(r#"{"access_token":"A","expires_in":28800.9}"#).expires_in.as_secs(), 28800);
    // The update's expiry cannot overflow either.
    assert_eq!(huge.into_update(u64::MAX - 5).expires_at_ms, u64::MAX);
}

#[test]
fn a_refresh_asks_for_the_logins_scopes_as_claude_code_does() {
    let token = Secret::new("sk-ant-ort01-sctest-x");
    let scopes = ["user:inference".to_owned(), "user:profile".to_owned()];
    let body = refresh_body(&token, "client", &scopes);
    assert_eq!(body["scope"], "user:inference user:profile");
    assert_eq!(body["grant_type"], "refresh_token");
    // A flat file records no scopes: nothing is asked, so the endpoint keeps what it granted.
    assert!(refresh_body(&token, "client", &[]).get("scope").is_none());
}

#[test]
fn retry_after_forms() {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("hv"));
    assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    h.insert(reqwest::header::RETRY_AFTER, "999999".parse().expect("hv"));
    assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    h.insert(reqwest::header::RETRY_AFTER, "Sun, 06 Nov 1994 08:49:37 GMT".parse().expect("hv"));
    assert_eq!(retry_after(&h), Some(Duration::ZERO));
}

/// A token endpoint that answers 200 with a body of 1 MiB (or one that never ends): the client stops
/// reading at the bound instead of filling its memory.
#[tokio::test]
async fn a_huge_answer_is_cut_off_at_the_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut peer, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 4096];
        let _ = peer.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        peer.write_all(head.as_bytes()).await.expect("head");
        let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
        for _ in 0..128 {
            if peer.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = peer.write_all(b"0\r\n\r\n").await;
    });
    let client = OAuthClient::new(OAuthConfig {
        token_url: format!("http://{addr}/v1/oauth/token"),
        client_id: "client".into(),
        user_agent: "test".into(),
        timeout: Duration::from_secs(60),
    })
    .expect("client");
    let answer = tokio::time::timeout(Duration::from_secs(30), client.refresh(&Secret::new("r"), &[]))
        .await
        .expect("the read stopped at the bound");
    let err = answer.expect_err("an answer past the bound is refused");
    assert!(matches!(err, TokenError::Transient { .. }), "{err}");
    assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
    server.abort();
}
