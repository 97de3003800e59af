//! Inbound API keys: who may use the forwarder when it listens beyond loopback, under which name, and
//! within which limits.
//!
//! The file is one key per line, as it always was, and a line may go on with settings:
//! `KEY name=ci rpm=60 burst=10 concurrent=4`. A line per key keeps the file a plain list that fits a
//! Kubernetes Secret and a `grep`, needs no parser beyond splitting words, and every old file still
//! reads the same (a key alone is unlimited).
//!
//! Keys are held only as SHA-256 digests and compared in constant time, digest against digest, so
//! neither the content nor the length of a key leaks through timing.

use http::header::{self, HeaderMap};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

pub mod quota;

use quota::{Limiter, Quota};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the API keys file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the API keys file {path} holds no keys (one key per line; `#` starts a comment)")]
    Empty { path: PathBuf },
    #[error("the API keys file {path}, line {line}: {reason} (a line is `KEY [name=NAME] [rpm=N] [burst=N] [concurrent=N]`)")]
    Line { path: PathBuf, line: usize, reason: String },
}

/// Why a request's key was refused. The message is for the client; it never repeats the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("missing API key: send it as the x-api-key header or as Authorization: Bearer <key>")]
    Missing,
    #[error("invalid API key")]
    Wrong,
}

/// One key of the file: its digest, the name metrics and logs show instead of it, and its limits.
#[derive(Debug)]
pub struct Key {
    digest: [u8; 32],
    pub name: String,
    pub limiter: Limiter,
}

pub struct InboundKeys {
    keys: Vec<Key>,
}

/// A key's name goes into metric labels and logs: short, and nothing that needs escaping.
const MAX_NAME: usize = 64;

impl InboundKeys {
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeysError::Read { path: path.to_owned(), source })?;
        let keys = Self::parse(&text, Instant::now()).map_err(|(line, reason)| KeysError::Line {
            path: path.to_owned(),
            line,
            reason,
        })?;
        if keys.keys.is_empty() {
            return Err(KeysError::Empty { path: path.to_owned() });
        }
        Ok(keys)
    }

    /// One key per line, optionally followed by `name=`, `rpm=`, `burst=` and `concurrent=` settings;
    /// blank lines and `#` comments (a `#` that starts the line or follows a space) are ignored. A key
    /// alone on its line (the original format) is unlimited and named after its line. A line that does
    /// not parse is an error with its number (1-based) and what is wrong, never the key: a `#` inside a
    /// word (it used to cut a key short silently), settings without a key before them, and a key that
    /// an earlier line already holds.
    pub fn parse(text: &str, now: Instant) -> Result<Self, (usize, String)> {
        let mut keys: Vec<Key> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            let content = without_comment(line).map_err(|reason| (number, reason))?;
            let mut words = content.split_whitespace();
            let Some(key) = words.next() else { continue };
            if let Some((setting, _)) = key.split_once('=').filter(|(s, _)| SETTINGS.contains(s)) {
                return Err((
                    number,
                    format!("the line starts with the setting `{setting}=`: the key goes first, then its settings"),
                ));
            }
            let mut name = None;
            let mut limits = Quota::default();
            for word in words {
                let (setting, value) = word
                    .split_once('=')
                    .ok_or_else(|| (number, format!("`{}` is not a setting such as rpm=60", shown(word))))?;
                let count = || -> Result<u32, (usize, String)> {
                    value.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        (number, format!("{setting}= wants a whole number above 0, not `{}`", shown(value)))
                    })
                };
                match setting {
                    "name" => name = Some(valid_name(value).map_err(|reason| (number, reason))?),
                    "rpm" => limits.per_minute = Some(count()?),
                    "burst" => limits.burst = Some(count()?),
                    "concurrent" => limits.concurrent = Some(count()?),
                    other => return Err((number, format!("unknown setting `{}`", shown(other)))),
                }
            }
            if limits.burst.is_some() && limits.per_minute.is_none() {
                return Err((number, "burst= needs rpm= (the rate the burst refills at)".to_owned()));
            }
            let name = name.unwrap_or_else(|| format!("line-{number}"));
            if keys.iter().any(|k| k.name == name) {
                return Err((number, format!("the name `{name}` is taken by an earlier line")));
            }
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if let Some(earlier) = keys.iter().position(|k| k.digest == digest) {
                return Err((
                    number,
                    format!("the key is the same as line {}'s; each key once", lines_of[earlier]),
                ));
            }
            keys.push(Key { digest, name, limiter: Limiter::new(limits, now) });
            lines_of.push(number);
        }
        Ok(InboundKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key a request presents as `x-api-key` or `Authorization: Bearer`.
    pub fn check(&self, headers: &HeaderMap) -> Result<&Key, BadKey> {
        let presented = presented_key(headers).ok_or(BadKey::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every stored key is compared, whatever the outcome, so the time taken says nothing about which.
        let mut matched = Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let equal = key.digest.ct_eq(&digest);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), equal);
            matched |= equal;
        }
        if bool::from(matched) {
            self.keys.get(index as usize).ok_or(BadKey::Wrong)
        } else {
            Err(BadKey::Wrong)
        }
    }
}

/// The settings a line may carry after its key.
const SETTINGS: [&str; 4] = ["name", "rpm", "burst", "concurrent"];

/// The line up to its comment: a `#` at the start of the line or after whitespace. A `#` anywhere
/// else is inside a word, which no key or setting may hold.
fn without_comment(line: &str) -> Result<&str, String> {
    let start = line
        .char_indices()
        .find(|&(i, c)| c == '#' && line[..i].chars().next_back().is_none_or(char::is_whitespace))
        .map_or(line.len(), |(i, _)| i);
    let content = &line[..start];
    if content.contains('#') {
        return Err("a `#` inside a key or setting: a comment starts with `#` at the start of a line or \
                    after a space, and a key cannot hold `#`"
            .to_owned());
    }
    Ok(content)
}

fn valid_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!("a name is 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`"))
    }
}

/// Part of a line for an error message: short, so a key pasted in the wrong place is not repeated whole.
fn shown(word: &str) -> String {
    let mut chars = word.chars();
    let head: String = chars.by_ref().take(12).collect();
    if chars.next().is_some() {
        format!("{head}...")
    } else {
        head
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(&crate::headers::X_API_KEY) {
        return Some(v.as_bytes().trim_ascii()).filter(|k| !k.is_empty());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii()).filter(|k| !k.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    fn parse(text: &str) -> Result<InboundKeys, (usize, String)> {
        InboundKeys::parse(text, Instant::now())
    }

    fn keys() -> InboundKeys {
        parse("# team keys\nkey-one\n\n  key-two  # laptop\n#key-three\n").unwrap()
    }

    #[test]
    fn the_one_key_per_line_file_reads_as_before() {
        let k = keys();
        assert_eq!(k.len(), 2);
        assert_eq!(parse("\n# only comments\n   \n").unwrap().len(), 0);
        assert_eq!(k.check(&headers("x-api-key", "key-one")).unwrap().name, "line-2");
        assert_eq!(k.check(&headers("x-api-key", "key-two")).unwrap().name, "line-4");
    }

    #[test]
    fn accepts_either_header_form() {
        let k = keys();
        assert!(k.check(&headers("x-api-key", "key-one")).is_ok());
        assert!(k.check(&headers("authorization", "Bearer key-two")).is_ok());
        assert!(k.check(&headers("authorization", "bearer key-two")).is_ok());
    }

    #[test]
    fn rejects_missing_and_wrong_keys() {
        let k = keys();
        let err = |h: HeaderMap| k.check(&h).map(|key| key.name.clone()).unwrap_err();
        assert_eq!(err(HeaderMap::new()), BadKey::Missing);
        assert_eq!(err(headers("authorization", "Basic a2V5LW9uZQ==")), BadKey::Missing);
        assert_eq!(err(headers("authorization", "Bearer ")), BadKey::Missing);
        assert_eq!(err(headers("x-api-key", "key-thre")), BadKey::Wrong);
        assert_eq!(err(headers("x-api-key", "key-three")), BadKey::Wrong);
        assert!(k.check(&headers("x-api-key", "key-one ")).is_ok());
        assert_eq!(err(headers("x-api-key", "KEY-ONE")), BadKey::Wrong);
    }

    #[test]
    fn names_and_limits() {
        let k =
            parse("k1 name=ci rpm=60 burst=10 concurrent=4\nk2=padded== name=laptop # comment\nk3 rpm=5\n")
                .unwrap();
        assert_eq!(k.check(&headers("x-api-key", "k1")).unwrap().name, "ci");
        assert_eq!(k.check(&headers("x-api-key", "k2=padded==")).unwrap().name, "laptop");
        assert_eq!(k.check(&headers("x-api-key", "k3")).unwrap().name, "line-3");
    }

    #[test]
    fn a_line_that_does_not_parse_is_named_and_the_key_not_repeated() {
        for (text, line, says) in [
            ("ok\nk1 rpm=fast\n", 2, "rpm= wants a whole number"),
            ("k1 rpm=0\n", 1, "above 0"),
            ("k1 colour=blue\n", 1, "unknown setting `colour`"),
            ("# c\n\nk1 sk-ant-api03-sctest-x\n", 3, "is not a setting"),
            ("k1 name=has/slash\n", 1, "a name is"),
            ("k1 name=a\nk2 name=a\n", 2, "taken by an earlier line"),
            ("k1 burst=5\n", 1, "burst= needs rpm="),
            // Found by attack: the key was cut at the `#` (its prefix worked, the whole key got 401).
            ("ok\nk1sctest-x#tail\n", 2, "a `#` inside a key"),
            ("k1 name=ci#x\n", 1, "a `#` inside a key"),
            // ... and a line of settings alone became a key named `rpm=60`.
            ("ok\nrpm=60 burst=5\n", 2, "starts with the setting `rpm=`"),
            ("name=ci\n", 1, "starts with the setting `name=`"),
            ("k1sctest-x\n# c\nk1sctest-x name=b\n", 3, "the same as line 1's"),
        ] {
            let (n, reason) = parse(text).map(|_| ()).unwrap_err();
            assert_eq!(n, line, "{text}: {reason}");
            assert!(reason.contains(says), "{text}: {reason}");
            assert!(!reason.contains("sctest-x"), "the key was repeated: {reason}");
        }
    }

    #[test]
    fn load_refuses_an_empty_file_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert!(matches!(InboundKeys::load(&path), Err(KeysError::Empty { .. })));
        std::fs::write(&path, "k\n").unwrap();
        assert_eq!(InboundKeys::load(&path).unwrap().len(), 1);
        std::fs::write(&path, "k\nk2 rpm=x\n").unwrap();
        let e = InboundKeys::load(&path).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains(&path.display().to_string()), "{e}");
        assert!(matches!(InboundKeys::load(&dir.path().join("missing")), Err(KeysError::Read { .. })));
    }
}
