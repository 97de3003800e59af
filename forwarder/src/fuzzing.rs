//! What the header rules must do with any headers a client or the upstream sends, checked by the
//! `headers` fuzz target (`fuzz/` at the repository's root) and by the replay of its seed corpus below.
//! A property that does not hold panics, which is what libFuzzer reports as a crash.

use crate::headers::{self, ANTHROPIC_BETA, ANTHROPIC_VERSION, X_API_KEY, X_REQUEST_ID};
use http::header::{self as h, HeaderMap, HeaderName, HeaderValue};
use sidecred_proto::{anthropic, Secret};

/// Served when the input's token cannot be a header value.
const FALLBACK_TOKEN: &str = "sk-ant-oat01-sctest-fuzz";

/// What RFC 9110 §7.6.1 and HTTP/2 say never crosses a proxy, written out here as the specification the
/// rules are checked against.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `data` is the agent's token on the first line, then one `name: value` header per line (lines that
/// are no header are skipped). The headers go through the request rules as a client's and through the
/// response rules as the upstream's.
pub fn headers(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let token = Secret::new(String::from_utf8_lossy(lines.next().unwrap_or_default()));
    let mut sent = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start()),
        ) else {
            continue;
        };
        if sent.try_append(name, value).is_err() {
            break;
        }
    }
    let authorization = match headers::authorization(&token) {
        Ok(value) => value,
        Err(e) => {
            assert!(!e.to_string().contains(token.expose()), "the error quotes the token: {e}");
            headers::authorization(&Secret::new(FALLBACK_TOKEN)).expect("a plain token is a header value")
        }
    };
    check_request(&sent, authorization);
    check_response(&sent);
}

/// The names the `Connection` headers list: they describe this connection only.
fn named_by_connection(sent: &HeaderMap) -> Vec<HeaderName> {
    sent.get_all(h::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

fn is_dropped(name: &HeaderName, named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || named.contains(name)
}

/// Beta names in the order given, trimmed, blanks skipped.
fn betas<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Vec<&'a [u8]> {
    values
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|b| !b.is_empty())
        .collect()
}

/// The upstream gets exactly the agent's token, never the client's credentials or anything hop-by-hop,
/// one beta list that holds the OAuth beta and every beta the client asked for, each once, the API
/// version, its own host, the request's id, and every other header as the client sent it.
fn check_request(sent: &HeaderMap, authorization: HeaderValue) {
    let named = named_by_connection(sent);
    let host = HeaderValue::from_static("api.anthropic.com");
    let mut out = sent.clone();
    let id = headers::request_id(&mut out);
    assert!((1..=128).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic), "id {id:?}");
    assert_eq!(out.get(&X_REQUEST_ID), Some(&id), "the id the log names is the one sent on");
    headers::to_upstream(&mut out, authorization.clone(), &host);

    let auth: Vec<_> = out.get_all(h::AUTHORIZATION).iter().collect();
    assert!(auth.len() == 1 && auth[0] == authorization && auth[0].is_sensitive(), "one token, the agent's");
    assert!(!out.contains_key(&X_API_KEY) && !out.contains_key(h::EXPECT));
    assert_eq!(out.get_all(h::HOST).iter().collect::<Vec<_>>(), [&host]);
    for name in out.keys() {
        assert!(!HOP_BY_HOP.contains(&name.as_str()), "{name} crossed");
    }
    let set_here =
        [h::AUTHORIZATION, h::HOST, ANTHROPIC_BETA.clone(), ANTHROPIC_VERSION.clone(), X_REQUEST_ID.clone()];
    for name in named.iter().filter(|n| !set_here.contains(n)) {
        assert!(!out.contains_key(name), "{name}, named by Connection, crossed");
    }

    let beta_values: Vec<_> = out.get_all(&ANTHROPIC_BETA).iter().collect();
    assert_eq!(beta_values.len(), 1, "one beta list");
    let merged = betas(beta_values.into_iter());
    assert!(merged.contains(&anthropic::OAUTH_BETA.as_bytes()), "the OAuth beta is sent");
    for (i, beta) in merged.iter().enumerate() {
        assert!(!merged[..i].contains(beta), "a beta is listed twice");
    }
    if !is_dropped(&ANTHROPIC_BETA, &named) {
        for asked in betas(sent.get_all(&ANTHROPIC_BETA).iter()) {
            assert!(merged.contains(&asked), "a beta the client asked for was lost");
        }
    }

    // The client's version, unless it named it in `Connection` (then it is gone) or sent none: then
    // the default. Never no version at all.
    let sent_versions: Vec<_> = sent.get_all(&ANTHROPIC_VERSION).iter().cloned().collect();
    let want = if sent_versions.is_empty() || named.contains(&ANTHROPIC_VERSION) {
        vec![HeaderValue::from_static(anthropic::ANTHROPIC_VERSION)]
    } else {
        sent_versions
    };
    assert!(out.get_all(&ANTHROPIC_VERSION).iter().eq(want.iter()), "the API version");
    assert_eq!(
        out.get(&X_REQUEST_ID),
        Some(&id),
        "the request's id reaches the upstream, whatever Connection says"
    );

    let special = [X_API_KEY.clone(), h::EXPECT];
    for name in
        sent.keys().filter(|n| !is_dropped(n, &named) && !special.contains(n) && !set_here.contains(n))
    {
        assert!(out.get_all(name).iter().eq(sent.get_all(name).iter()), "{name} changed on its way up");
    }
}

/// The client gets the upstream's headers less everything hop-by-hop and what `Connection` names.
fn check_response(sent: &HeaderMap) {
    let named = named_by_connection(sent);
    let mut out = sent.clone();
    headers::to_client(&mut out);
    for name in sent.keys() {
        if is_dropped(name, &named) {
            assert!(!out.contains_key(name), "{name} crossed on the way back");
        } else {
            assert!(out.get_all(name).iter().eq(sent.get_all(name).iter()), "{name} changed on the way back");
        }
    }
    assert!(out.keys().all(|n| sent.contains_key(n)), "the response rules add nothing");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_header_corpus_holds() {
        sidecred_proto::fuzzing::replay_corpus("headers", super::headers);
    }
}
