//! The file's two shapes, read and updated.

use super::*;

const CLAUDE: &str = r#"{
  "claudeAiOauth": {
    "accessToken": "sk-ant-oat01-AAA",
    "refreshToken": "sk-ant-ort01-RRR",
    "expiresAt": 1747909518727,
    "scopes": ["user:inference", "user:profile"],
    "subscriptionType": "max",
    "rateLimitTier": "default_claude_max_20x",
    "nested": {"keep": [1, 2, {"deep": true}]}
  },
  "mcpOAuth": {"server": {"token": "x"}},
  "zzz": null
}"#;

fn p() -> &'static Path {
    Path::new("/creds/.credentials.json")
}

#[test]
fn reads_claude_code_shape() {
    let c = Credentials::parse(CLAUDE.as_bytes(), p()).expect("parse");
    assert_eq!(c.shape(), Shape::ClaudeCode);
    assert_eq!(c.access_token.expose(), "sk-ant-oat01-AAA");
    assert_eq!(c.refresh_token.as_ref().map(Secret::expose), Some("sk-ant-ort01-RRR"));
    assert_eq!(c.expires_at_ms, 1747909518727);
    assert_eq!(c.scopes, vec!["user:inference", "user:profile"]);
    assert_eq!(c.subscription_type.as_deref(), Some("max"));
}

#[test]
fn update_keeps_every_unknown_field() {
    let c = Credentials::parse(CLAUDE.as_bytes(), p()).expect("parse");
    let next = c.with_update(TokenUpdate {
        access_token: Secret::new("A2"),
        refresh_token: Some(Secret::new("R2")),
        expires_at_ms: 42,
        scopes: None,
    });
    let before: Value = serde_json::from_str(CLAUDE).expect("json");
    let after = next.to_json();
    assert_eq!(after["mcpOAuth"], before["mcpOAuth"]);
    assert_eq!(after["zzz"], Value::Null);
    assert_eq!(after[CLAUDE_KEY]["rateLimitTier"], before[CLAUDE_KEY]["rateLimitTier"]);
    assert_eq!(after[CLAUDE_KEY]["nested"], before[CLAUDE_KEY]["nested"]);
    assert_eq!(after[CLAUDE_KEY]["subscriptionType"], "max");
    assert_eq!(after[CLAUDE_KEY]["accessToken"], "A2");
    assert_eq!(after[CLAUDE_KEY]["refreshToken"], "R2");
    assert_eq!(after[CLAUDE_KEY]["expiresAt"], 42);
    assert_eq!(after[CLAUDE_KEY]["scopes"], before[CLAUDE_KEY]["scopes"]);
    let reparsed = Credentials::parse(&next.to_bytes(), p()).expect("reparse");
    assert_eq!(reparsed.refresh_token.as_ref().map(Secret::expose), Some("R2"));
}

#[test]
fn update_without_refresh_token_keeps_the_old_one() {
    let c = Credentials::parse(CLAUDE.as_bytes(), p()).expect("parse");
    let next = c.with_update(TokenUpdate {
        access_token: Secret::new("A2"),
        refresh_token: None,
        expires_at_ms: 42,
        scopes: None,
    });
    assert_eq!(next.refresh_token.as_ref().map(Secret::expose), Some("sk-ant-ort01-RRR"));
    assert_eq!(next.to_json()[CLAUDE_KEY]["refreshToken"], "sk-ant-ort01-RRR");
}

/// A long-lived login may come without a refresh token: it is a login all the same, in both shapes.
#[test]
fn a_login_without_a_refresh_token_is_read_and_written_without_one() {
    let claude = r#"{"claudeAiOauth":{"accessToken":"A","expiresAt":1800000000000,"scopes":["user:inference"]},"x":1}"#;
    let c = Credentials::parse(claude.as_bytes(), p()).expect("parse");
    assert!(c.refresh_token.is_none());
    let null = r#"{"claudeAiOauth":{"accessToken":"A","refreshToken":null,"expiresAt":1800000000000}}"#;
    assert!(Credentials::parse(null.as_bytes(), p()).expect("parse").refresh_token.is_none());
    let flat = r#"{"access_token":"A","expires_at":"2027-01-15T08:00:00Z"}"#;
    let f = Credentials::parse(flat.as_bytes(), p()).expect("parse");
    assert!(f.refresh_token.is_none());
    // A refresh that brings none keeps none, and the file gains no empty field.
    let next = c.with_update(TokenUpdate {
        access_token: Secret::new("A2"),
        refresh_token: None,
        expires_at_ms: 42,
        scopes: None,
    });
    assert!(next.refresh_token.is_none());
    assert_eq!(next.to_json()[CLAUDE_KEY].get("refreshToken"), None);
    assert_eq!(next.to_json()["x"], 1);
    let reparsed = Credentials::parse(&next.to_bytes(), p()).expect("reparse");
    assert!(reparsed.refresh_token.is_none());
}

/// A new login replaces the pair: a long-lived login written over a refreshable one must not inherit
/// its refresh token, which belongs to the login it replaces. Everything else stays.
#[test]
fn a_login_without_a_refresh_token_drops_the_old_one() {
    let c = Credentials::parse(CLAUDE.as_bytes(), p()).expect("parse");
    let long_lived = TokenUpdate {
        access_token: Secret::new("L"),
        refresh_token: None,
        expires_at_ms: 1_900_000_000_000,
        scopes: Some(vec!["user:inference".into()]),
    };
    let next = c.with_login(long_lived);
    assert!(next.refresh_token.is_none());
    let v = next.to_json();
    assert_eq!(v[CLAUDE_KEY].get("refreshToken"), None);
    assert_eq!(v[CLAUDE_KEY]["accessToken"], "L");
    assert_eq!(v[CLAUDE_KEY]["scopes"], serde_json::json!(["user:inference"]));
    assert_eq!(v[CLAUDE_KEY]["nested"]["keep"][2]["deep"], true);
    assert_eq!(v["mcpOAuth"]["server"]["token"], "x");
    let keys: Vec<&String> = v[CLAUDE_KEY].as_object().expect("object").keys().collect();
    assert_eq!(keys[0], "accessToken", "the block keeps its order: {keys:?}");
    let flat = r#"{"access_token":"A","refresh_token":"R","expires_at":"2025-12-31T23:59:59Z","email":"e"}"#;
    let f = Credentials::parse(flat.as_bytes(), p()).expect("parse").with_login(TokenUpdate {
        access_token: Secret::new("L"),
        refresh_token: None,
        expires_at_ms: 1_900_000_000_000,
        scopes: None,
    });
    assert_eq!(f.to_json().get("refresh_token"), None);
    assert_eq!(f.to_json()["email"], "e");
}

#[test]
fn login_into_a_document_without_credentials_keeps_the_rest() {
    let doc = serde_json::json!({
        "mcpOAuth": {"server": {"token": "x"}},
        "claudeAiOauth": {"accessToken": 7, "keepMe": true}
    });
    let Value::Object(doc) = doc else { unreachable!() };
    let c = Credentials::claude_code_in(
        doc,
        TokenUpdate {
            access_token: Secret::new("A"),
            refresh_token: Some(Secret::new("R")),
            expires_at_ms: 1_800_000_000_000,
            scopes: Some(vec!["user:inference".into()]),
        },
    )
    .with_plan(Some("max"), Some("tier"));
    let v = c.to_json();
    assert_eq!(v["mcpOAuth"]["server"]["token"], "x");
    assert_eq!(v[CLAUDE_KEY]["keepMe"], true);
    assert_eq!(v[CLAUDE_KEY]["accessToken"], "A");
    assert_eq!(v[CLAUDE_KEY]["subscriptionType"], "max");
    assert_eq!(v[CLAUDE_KEY]["rateLimitTier"], "tier");
    let reparsed = Credentials::parse(&c.to_bytes(), p()).expect("reparse");
    assert_eq!(reparsed.subscription_type.as_deref(), Some("max"));
    assert_eq!(reparsed.scopes, vec!["user:inference"]);
}

#[test]
fn reads_and_writes_the_flat_shape() {
    let flat = r#"{"access_token":"A","refresh_token":"R","expires_at":"2025-12-31T23:59:59Z",
                   "user_id":"user-1","email":"me@example.com"}"#;
    let c = Credentials::parse(flat.as_bytes(), p()).expect("parse");
    assert_eq!(c.shape(), Shape::Flat);
    assert_eq!(c.expires_at_ms, 1767225599000);
    assert_eq!(c.account.as_deref(), Some("me@example.com"));
    let next = c.with_update(TokenUpdate {
        access_token: Secret::new("A2"),
        refresh_token: Some(Secret::new("R2")),
        expires_at_ms: 1767225600000,
        scopes: None,
    });
    let v = next.to_json();
    assert_eq!(v["expires_at"], "2026-01-01T00:00:00Z");
    assert_eq!(v["user_id"], "user-1");
    assert_eq!(v["refresh_token"], "R2");
    // An expiry past what RFC 3339 can write is written as its last second, not a panic.
    let far = c.with_update(TokenUpdate {
        access_token: Secret::new("A3"),
        refresh_token: None,
        expires_at_ms: u64::MAX,
        scopes: None,
    });
    assert_eq!(far.to_json()["expires_at"], "9999-12-31T23:59:59Z");
}

#[test]
fn errors_name_the_file_and_field_and_hide_values() {
    let cases = [
        (r#"{"claudeAiOauth":{"refreshToken":"sk-secret","expiresAt":1}}"#, "claudeAiOauth.accessToken"),
        (
            r#"{"claudeAiOauth":{"accessToken":"sk-secret","refreshToken":7,"expiresAt":1}}"#,
            "claudeAiOauth.refreshToken",
        ),
        (
            r#"{"claudeAiOauth":{"accessToken":"sk-secret","refreshToken":"","expiresAt":1}}"#,
            "claudeAiOauth.refreshToken",
        ),
        (r#"{"claudeAiOauth":{"accessToken":"sk-secret","refreshToken":"r"}}"#, "claudeAiOauth.expiresAt"),
        (
            r#"{"claudeAiOauth":{"accessToken":"sk-secret","refreshToken":"r","expiresAt":"soon"}}"#,
            "claudeAiOauth.expiresAt",
        ),
        (r#"{"claudeAiOauth":"sk-secret"}"#, "`claudeAiOauth`"),
        (r#"{"access_token":"sk-secret","refresh_token":"r","expires_at":"tomorrow"}"#, "expires_at"),
        (r#"{"claudeAiOauth":{"accessToken":"sk-secret""#, "line 1"),
        (r#"{"something":"sk-secret"}"#, "claudeAiOauth"),
    ];
    for (input, needle) in cases {
        let err = Credentials::parse(input.as_bytes(), p()).expect_err(input).to_string();
        assert!(err.contains("/creds/.credentials.json"), "{err}");
        assert!(err.contains(needle), "{err} should mention {needle}");
        assert!(!err.contains("sk-secret"), "{err} leaks a value");
    }
}

#[test]
fn a_flat_scope_string_is_updated_in_its_own_form() {
    // Found by the credentials fuzz target: new scopes were kept in memory but never written to `scope`.
    let flat = r#"{"access_token":"A","refresh_token":"R","expires_at":"2025-12-31T23:59:59Z",
                   "scope":"user:inference user:profile"}"#;
    let c = Credentials::parse(flat.as_bytes(), p()).expect("parse");
    let next = c.with_update(TokenUpdate {
        access_token: Secret::new("A2"),
        refresh_token: None,
        expires_at_ms: 1767225600000,
        scopes: Some(vec!["user:inference".into(), "user:sessions".into()]),
    });
    let v = next.to_json();
    assert_eq!(v["scope"], "user:inference user:sessions");
    assert!(v.get("scopes").is_none(), "no second place for the scopes");
    let reparsed = Credentials::parse(&next.to_bytes(), p()).expect("reparse");
    assert_eq!(reparsed.scopes, ["user:inference", "user:sessions"]);
}

#[test]
fn debug_shows_fingerprints_never_the_document() {
    // Found by the credentials fuzz target: the derived `Debug` printed the whole document, tokens and
    // `mcpOAuth` secrets in the clear.
    let c = Credentials::parse(CLAUDE.as_bytes(), p()).expect("parse");
    let shown = format!("{c:?}");
    assert!(!shown.contains("AAA") && !shown.contains("RRR"), "{shown}");
    assert!(shown.contains(&c.access_token.fingerprint()), "{shown}");
    let doc = document::Document::classify(br#"{"mcpOAuth":{"s":{"accessToken":"mcp-secret"}}}"#, p());
    assert_eq!(format!("{doc:?}"), "NoLogin({1 keys})");
    let damaged = document::Document::classify(br#"{"claudeAiOauth":7,"mcpOAuth":{"t":"mcp-secret"}}"#, p());
    assert_eq!(format!("{damaged:?}"), "Damaged({2 keys})");
    assert_eq!(format!("{:?}", damaged.remove_login()), "Kept({1 keys})");
}

#[test]
fn unknown_numbers_survive_a_write_back_exactly() {
    // Found by the credentials fuzz target: serde_json's default float parsing misread some of its own
    // output, so a float in a field we do not know changed on every write-back (float_roundtrip fixes it).
    let doc = r#"{"claudeAiOauth":{"accessToken":"A","refreshToken":"R","expiresAt":1800000000000},
                  "stats":{"big":1.8000000044444443e85,"tiny":2.2250738585072011e-308,"ratio":0.1}}"#;
    let c = Credentials::parse(doc.as_bytes(), p()).expect("parse");
    let mut bytes = c.to_bytes();
    for _ in 0..3 {
        bytes = Credentials::parse(&bytes, p()).expect("reparse").to_bytes();
    }
    let back = Credentials::parse(&bytes, p()).expect("reparse");
    assert_eq!(back.to_json()["stats"], c.to_json()["stats"]);
}

/// The record of when the login was made rides in the document: a refresh keeps it, a login replaces
/// it, and the file keeps Claude Code's block exactly as it was.
#[test]
fn the_login_clock_survives_a_refresh_and_a_login_starts_a_new_one() {
    let c = Credentials::parse(CLAUDE.as_bytes(), p()).expect("parse");
    assert_eq!(c.login_clock(), None, "an older file has no record");
    let seen = c.with_login_clock(LoginClock::first_seen(1_000));
    let refreshed = seen.with_update(TokenUpdate {
        access_token: Secret::new("A2"),
        refresh_token: Some(Secret::new("R2")),
        expires_at_ms: 1_900_000_000_000,
        scopes: None,
    });
    let back = Credentials::parse(&refreshed.to_bytes(), p()).expect("parse");
    assert_eq!(back.login_clock(), Some(LoginClock::first_seen(1_000)));
    let before = serde_json::to_value(c.to_json()[CLAUDE_KEY].clone()).expect("json");
    let mut expected = before;
    expected["accessToken"] = "A2".into();
    expected["refreshToken"] = "R2".into();
    expected["expiresAt"] = 1_900_000_000_000u64.into();
    assert_eq!(back.to_json()[CLAUDE_KEY], expected, "Claude Code's block holds nothing of ours");

    let before_login = now_ms();
    let relogged = back.with_login(TokenUpdate {
        access_token: Secret::new("N"),
        refresh_token: Some(Secret::new("NR")),
        expires_at_ms: 1_900_000_000_000,
        scopes: None,
    });
    let clock = relogged.login_clock().expect("a login records itself");
    assert_eq!(clock.start, ClockStart::Login);
    assert!(clock.started_at_ms >= before_login, "{clock:?}");
    let first = Credentials::new_claude_code(TokenUpdate {
        access_token: Secret::new("F"),
        refresh_token: None,
        expires_at_ms: 1,
        scopes: None,
    });
    assert_eq!(first.login_clock().map(|c| c.start), Some(ClockStart::Login));
}

#[test]
fn a_refreshed_pair_notes_what_it_grew_from_and_keeps_the_login_clock() {
    let c = Credentials::parse(
        br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1},"sidecred":7}"#,
        Path::new("c.json"),
    )
    .unwrap();
    assert_eq!(c.refreshed_from(), None, "a login from elsewhere says nothing");
    let seen = c.with_login_clock(LoginClock::first_seen(1_000)).with_refreshed_from("fp:12345678");
    let back = Credentials::parse(&seen.to_bytes(), Path::new("c.json")).unwrap();
    assert_eq!(back.refreshed_from(), Some("fp:12345678"));
    assert_eq!(back.login_clock(), Some(LoginClock::first_seen(1_000)), "the record keeps both notes");
}
