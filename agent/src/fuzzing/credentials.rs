//! The credentials file, both shapes: parsing, judging the document, removing a login, and updating
//! the tokens, which must write a file that reads back with the new tokens and every other field.

use super::{assert_no_token, MARKER};
use crate::credentials::document::{Document, Removal};
use crate::credentials::MAX_RFC3339_MS;
use crate::credentials::{to_pretty_bytes, Credentials, CredentialsError, TokenUpdate, CLAUDE_KEY};
use serde_json::{Map, Value};
use sidecred_proto::Secret;
use std::path::Path;

const NEXT_ACCESS: &str = "sk-ant-oat01-sctest-fuzz-next";
const NEXT_REFRESH: &str = "sk-ant-ort01-sctest-fuzz-next";

/// The expiries and clocks tried when the input brings none: ordinary, zero, past what RFC 3339 can
/// write, under the smallest epoch-milliseconds value, and the largest.
const EDGES: [(u64, u64); 5] = [
    (1_800_000_000_000, 1_799_999_000_000),
    (0, 0),
    (MAX_RFC3339_MS + 1, 1),
    (999_999_999_999, 1_000_000_000_000),
    (u64::MAX, u64::MAX / 2),
];

/// `data` is a credentials file, optionally followed by a NUL and two little-endian u64s: an expiry to
/// update it with and a clock to ask the time left at (a NUL is never valid in JSON, so a file with the
/// tail is still a file the fuzzer can mutate).
pub fn credentials(data: &[u8]) {
    let (file, tail) = match data.len().checked_sub(17).map(|at| data.split_at(at)) {
        Some((file, tail)) if tail[0] == 0 => (file, Some(tail)),
        _ => (data, None),
    };
    let numbers = tail.map(|t| (le_u64(&t[1..9]), le_u64(&t[9..17])));
    let parsed = Credentials::parse(file, path());
    check_document(file, &parsed);
    match parsed {
        Ok(c) => {
            assert_debug_hides_secrets(&format!("{:?}", without_public(&c)));
            for (expires_at_ms, now_ms) in numbers.map_or(EDGES.to_vec(), |n| vec![n]) {
                check_update(&c, expires_at_ms, now_ms);
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert_no_token(&text);
            assert!(!text.contains(MARKER), "{text}");
        }
    }
}

fn path() -> &'static Path {
    Path::new("/fuzz/.credentials.json")
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

/// The judgement of the whole document agrees with the parser, and removing the login takes exactly
/// the login out.
fn check_document(file: &[u8], parsed: &Result<Credentials, CredentialsError>) {
    let document = Document::classify(file, path());
    let value: Option<Value> = serde_json::from_slice(file).ok();
    match &document {
        Document::Login(c) => {
            assert_debug_hides_secrets(&format!("{:?}", Document::Login(without_public(c))))
        }
        other => assert_debug_hides_secrets(&format!("{other:?}")),
    }
    match (&document, parsed) {
        (Document::Login(c), Ok(p)) => {
            assert!(c.same_tokens(p) && c.expires_at_ms == p.expires_at_ms);
        }
        (Document::NoLogin(_), Err(CredentialsError::UnknownShape { .. }))
        | (Document::Damaged(_), Err(CredentialsError::Field { .. })) => {}
        (Document::Unknown(why), Err(CredentialsError::Json { .. })) => assert_no_token(&why.to_string()),
        (document, parsed) => panic!(
            "classify says {} but parse says {}",
            kind(document),
            parsed.as_ref().map_or_else(ToString::to_string, |_| "a login".into())
        ),
    }
    let had_login = matches!(document, Document::Login(_) | Document::Damaged(_));
    let removal = document.remove_login();
    assert_debug_hides_secrets(&format!("{removal:?}"));
    let Some(Value::Object(doc)) = value else {
        assert_eq!(removal, Removal::Nothing, "a file that is no document is removed");
        return;
    };
    let flat = doc.contains_key("access_token") || doc.contains_key("refresh_token");
    let mut rest = doc.clone();
    rest.shift_remove(CLAUDE_KEY);
    match removal {
        Removal::Kept(kept) => {
            assert!(had_login && !flat && !kept.is_empty());
            assert_eq!(kept, rest, "everything but the login is kept, in order");
            let again = Document::classify(&to_pretty_bytes(&Value::Object(kept)), path());
            assert!(matches!(again, Document::NoLogin(_)), "what is kept holds no login");
        }
        Removal::Nothing => assert!(doc.is_empty() || (had_login && (flat || rest.is_empty()))),
        Removal::NoLogin => assert!(!had_login && !doc.is_empty()),
    }
}

fn kind(document: &Document) -> &'static str {
    match document {
        Document::Login(_) => "a login",
        Document::NoLogin(_) => "no login",
        Document::Damaged(_) => "a damaged login",
        Document::Unknown(_) => "no document",
    }
}

/// The login without the fields that are no secret (scopes, plan, account), which `Debug` may show.
fn without_public(c: &Credentials) -> Credentials {
    let mut c = c.clone();
    c.scopes.clear();
    c.subscription_type = None;
    c.account = None;
    c
}

/// `Debug` shows fingerprints and sizes, never the document's text, where the seeds' tokens are.
fn assert_debug_hides_secrets(debug: &str) {
    assert!(!debug.contains(MARKER), "Debug shows a token: {debug}");
    assert_no_token(debug);
}

/// New tokens, with and without a rotated refresh token and new scopes, merge into the document and
/// read back from the written file with every other field as it was.
fn check_update(c: &Credentials, expires_at_ms: u64, now_ms: u64) {
    let rotate = expires_at_ms % 2 == 0;
    let update = TokenUpdate {
        access_token: Secret::new(NEXT_ACCESS),
        refresh_token: rotate.then(|| Secret::new(NEXT_REFRESH)),
        expires_at_ms,
        scopes: (expires_at_ms % 3 == 0).then(|| vec!["user:inference".to_owned()]),
    };
    let next = c.with_update(update);
    assert_eq!(next.access_token.expose(), NEXT_ACCESS);
    let refresh = if rotate { Some(NEXT_REFRESH) } else { c.refresh_token.as_ref().map(Secret::expose) };
    assert_eq!(
        next.refresh_token.as_ref().map(Secret::expose),
        refresh,
        "the refresh token is rotated or kept"
    );
    assert_eq!(next.expires_at_ms, expires_at_ms);
    assert_eq!(next.remaining_ms(now_ms), expires_at_ms.saturating_sub(now_ms));
    assert_eq!(c.remaining_ms(now_ms), c.expires_at_ms.saturating_sub(now_ms));

    let bytes = next.to_bytes();
    let back = Credentials::parse(&bytes, path()).unwrap_or_else(|e| panic!("the written file: {e}"));
    assert!(back.same_tokens(&next), "the written file holds the new tokens");
    assert!(matches!(Document::classify(&bytes, path()), Document::Login(_)));

    let (Value::Object(before), Value::Object(after)) = (c.to_json(), back.to_json()) else {
        unreachable!("a document is an object")
    };
    let claude_code = before.contains_key(CLAUDE_KEY);
    if (1_000_000_000_000..=MAX_RFC3339_MS).contains(&expires_at_ms) {
        let written = if claude_code { expires_at_ms } else { expires_at_ms / 1000 * 1000 };
        assert_eq!(back.expires_at_ms, written, "the expiry reads back (RFC 3339 keeps seconds)");
    } else if !claude_code && expires_at_ms > MAX_RFC3339_MS {
        assert_eq!(back.expires_at_ms, MAX_RFC3339_MS, "the latest time RFC 3339 can write");
    }
    let written: &[&str] = if claude_code {
        &["accessToken", "refreshToken", "expiresAt", "scopes"]
    } else {
        &["access_token", "refresh_token", "expires_at", "scopes", "scope"]
    };
    let has_scopes = if claude_code {
        let (Some(Value::Object(old)), Some(Value::Object(new))) =
            (before.get(CLAUDE_KEY), after.get(CLAUDE_KEY))
        else {
            panic!("the written file lost the {CLAUDE_KEY} block")
        };
        assert_kept(old, new, written);
        assert_kept(&before, &after, &[CLAUDE_KEY]);
        true
    } else {
        assert_kept(&before, &after, written);
        after.contains_key("scopes") || after.contains_key("scope")
    };
    if has_scopes {
        assert_eq!(back.scopes, next.scopes, "the scopes are written where the file keeps them");
    }
}

/// Every key of `old` that is not one of `written` is in `new` with the same value; the keys both
/// hold are in the same order; `new` adds nothing but keys in `written`, which it may also drop (a
/// `refreshToken: null` goes when there is no refresh token to write).
fn assert_kept(old: &Map<String, Value>, new: &Map<String, Value>, written: &[&str]) {
    let mut added = new.keys().filter(|k| !old.contains_key(*k));
    if let Some(k) = added.find(|k| !written.contains(&k.as_str())) {
        panic!("the update added `{k}`");
    }
    let in_new: Vec<&String> = new.keys().filter(|k| old.contains_key(*k)).collect();
    let in_old: Vec<&String> = old.keys().filter(|k| new.contains_key(*k)).collect();
    assert_eq!(in_new, in_old, "the update reordered the keys");
    for (k, v) in old.iter().filter(|(k, _)| !written.contains(&k.as_str())) {
        assert!(new.get(k) == Some(v), "the update changed `{k}`");
    }
}
