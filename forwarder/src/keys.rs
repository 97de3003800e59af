//! Inbound API keys: who may use the forwarder when it listens beyond loopback.
//!
//! Keys are held only as SHA-256 digests and compared in constant time, digest against digest, so
//! neither the content nor the length of a key leaks through timing.

use http::header::{self, HeaderMap};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use subtle::{Choice, ConstantTimeEq};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the API keys file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the API keys file {path} holds no keys (one key per line; `#` starts a comment)")]
    Empty { path: PathBuf },
}

/// Why a request's key was refused. The message is for the client; it never repeats the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing API key: send it as the x-api-key header or as Authorization: Bearer <key>")]
    Missing,
    #[error("invalid API key")]
    Wrong,
}

pub struct InboundKeys {
    digests: Vec<[u8; 32]>,
}

impl InboundKeys {
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeysError::Read { path: path.to_owned(), source })?;
        let keys = Self::parse(&text);
        if keys.digests.is_empty() {
            return Err(KeysError::Empty { path: path.to_owned() });
        }
        Ok(keys)
    }

    /// One key per line; blank lines and `#` comments (whole-line or trailing) are ignored.
    pub fn parse(text: &str) -> Self {
        let digests = text
            .lines()
            .map(|line| line.split_once('#').map_or(line, |(key, _)| key).trim())
            .filter(|key| !key.is_empty())
            .map(|key| Sha256::digest(key.as_bytes()).into())
            .collect();
        InboundKeys { digests }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Checks the key a request presents as `x-api-key` or `Authorization: Bearer`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let presented = presented_key(headers).ok_or(Rejection::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every stored key is compared, whatever the outcome, so the time taken says nothing about which.
        let matched = self.digests.iter().fold(Choice::from(0), |acc, d| acc | d.ct_eq(&digest));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Rejection::Wrong)
        }
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

    fn keys() -> InboundKeys {
        InboundKeys::parse("# team keys\nkey-one\n\n  key-two  # laptop\n#key-three\n")
    }

    #[test]
    fn parses_keys_comments_and_blanks() {
        assert_eq!(keys().len(), 2);
        assert_eq!(InboundKeys::parse("\n# only comments\n   \n").len(), 0);
    }

    #[test]
    fn accepts_either_header_form() {
        let k = keys();
        assert_eq!(k.check(&headers("x-api-key", "key-one")), Ok(()));
        assert_eq!(k.check(&headers("authorization", "Bearer key-two")), Ok(()));
        assert_eq!(k.check(&headers("authorization", "bearer key-two")), Ok(()));
    }

    #[test]
    fn rejects_missing_and_wrong_keys() {
        let k = keys();
        assert_eq!(k.check(&HeaderMap::new()), Err(Rejection::Missing));
        assert_eq!(k.check(&headers("authorization", "Basic a2V5LW9uZQ==")), Err(Rejection::Missing));
        assert_eq!(k.check(&headers("authorization", "Bearer ")), Err(Rejection::Missing));
        assert_eq!(k.check(&headers("x-api-key", "key-thre")), Err(Rejection::Wrong));
        assert_eq!(k.check(&headers("x-api-key", "key-three")), Err(Rejection::Wrong));
        assert_eq!(k.check(&headers("x-api-key", "key-one ")), Ok(()));
        assert_eq!(k.check(&headers("x-api-key", "KEY-ONE")), Err(Rejection::Wrong));
    }

    #[test]
    fn load_refuses_an_empty_file() {
        let dir = std::env::temp_dir().join(format!("sidecred-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert!(matches!(InboundKeys::load(&path), Err(KeysError::Empty { .. })));
        std::fs::write(&path, "k\n").unwrap();
        assert_eq!(InboundKeys::load(&path).unwrap().len(), 1);
        assert!(matches!(InboundKeys::load(&dir.join("missing")), Err(KeysError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
