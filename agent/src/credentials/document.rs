//! What a credentials file holds, judged in one place for every command that must know (`login` merges
//! into it, `logout` takes the login out of it), and what removing the login leaves.

use super::{has_flat_login, json_fault, login_shape, Credentials, DocSize, CLAUDE_KEY};
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

pub enum Document {
    /// A login that can be used.
    Login(Credentials),
    /// A JSON object without a login: `{}`, or only `mcpOAuth` after a logout.
    NoLogin(Map<String, Value>),
    /// A login that cannot be used (a field missing or of the wrong type; `Credentials::parse` says
    /// which).
    Damaged(Map<String, Value>),
    /// Not a JSON object at all.
    Unknown(NotAnObject),
}

/// Why the bytes are no credentials document, worded to follow the file's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnObject {
    /// Only the kind and position of the fault: the file holds tokens.
    #[error("is not valid JSON ({0})")]
    NotJson(String),
    #[error("is not a JSON object")]
    NotAnObject,
}

/// What is left once the login is taken out of a document.
#[derive(PartialEq)]
pub enum Removal {
    /// Other keys remain: the document to write back.
    Kept(Map<String, Value>),
    /// Nothing worth keeping (the login was all there was, or the file is no document): remove the file.
    Nothing,
    /// There is no login in it; nothing to do.
    NoLogin,
}

// A document holds tokens in the clear: `Debug` shows only its size.
impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Document::Login(credentials) => f.debug_tuple("Login").field(credentials).finish(),
            Document::NoLogin(doc) => f.debug_tuple("NoLogin").field(&DocSize(doc)).finish(),
            Document::Damaged(doc) => f.debug_tuple("Damaged").field(&DocSize(doc)).finish(),
            Document::Unknown(why) => f.debug_tuple("Unknown").field(why).finish(),
        }
    }
}

impl fmt::Debug for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removal::Kept(doc) => f.debug_tuple("Kept").field(&DocSize(doc)).finish(),
            Removal::Nothing => f.write_str("Nothing"),
            Removal::NoLogin => f.write_str("NoLogin"),
        }
    }
}

impl Document {
    /// Judges `bytes` read from `path` (the path is only used in error messages).
    pub fn classify(bytes: &[u8], path: &Path) -> Document {
        let value = match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => value,
            Err(e) => return Document::Unknown(NotAnObject::NotJson(json_fault(&e))),
        };
        let Value::Object(doc) = value else { return Document::Unknown(NotAnObject::NotAnObject) };
        if login_shape(&doc).is_none() {
            return Document::NoLogin(doc);
        }
        match Credentials::from_value(Value::Object(doc.clone()), path) {
            Ok(credentials) => Document::Login(credentials),
            Err(_) => Document::Damaged(doc),
        }
    }

    /// Takes the login out, usable or damaged alike, keeping every other key.
    pub fn remove_login(self) -> Removal {
        let mut doc = match self {
            Document::Login(credentials) => credentials.doc,
            Document::Damaged(doc) => doc,
            Document::NoLogin(doc) if doc.is_empty() => return Removal::Nothing,
            Document::NoLogin(_) => return Removal::NoLogin,
            Document::Unknown(_) => return Removal::Nothing,
        };
        // The flat shape's login is the top level itself: what sits beside it (email, user id)
        // describes that login and goes with it.
        if has_flat_login(&doc) {
            return Removal::Nothing;
        }
        // Not `remove`, which moves the last key into the login's place: the file keeps its order.
        doc.shift_remove(CLAUDE_KEY);
        if doc.is_empty() {
            Removal::Nothing
        } else {
            Removal::Kept(doc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(bytes: &[u8]) -> Document {
        Document::classify(bytes, Path::new("/c.json"))
    }

    #[test]
    fn documents_are_told_apart() {
        let live = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1800000000000}}"#;
        assert!(matches!(classify(live), Document::Login(_)));
        assert!(matches!(classify(br#"{"mcpOAuth":{}}"#), Document::NoLogin(_)));
        assert!(matches!(classify(b"{}"), Document::NoLogin(_)));
        let Document::Damaged(doc) = classify(br#"{"claudeAiOauth":{"accessToken":7},"mcpOAuth":{}}"#) else {
            panic!("a damaged block")
        };
        assert!(doc.contains_key("mcpOAuth") && doc.contains_key(CLAUDE_KEY));
        assert!(matches!(classify(br#"{"access_token":"a"}"#), Document::Damaged(_)));
        let Document::Unknown(not_json) = classify(b"sk-secret garbage") else { panic!("not JSON") };
        assert!(not_json.to_string().starts_with("is not valid JSON (syntax error at line 1"), "{not_json}");
        assert!(!not_json.to_string().contains("sk-secret"));
        let Document::Unknown(array) = classify(b"[1]") else { panic!("not an object") };
        assert_eq!(array.to_string(), "is not a JSON object");
    }

    #[test]
    fn removing_the_login_keeps_the_other_keys() {
        let remove = |bytes: &[u8]| classify(bytes).remove_login();
        let Removal::Kept(kept) = remove(br#"{"claudeAiOauth":{},"mcpOAuth":{"s":1}}"#) else {
            panic!("the other key is kept")
        };
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["mcpOAuth"]);
        assert_eq!(kept["mcpOAuth"]["s"], 1);
        let Removal::Kept(kept) = remove(br#"{"a":1,"claudeAiOauth":{},"b":2,"c":3}"#) else {
            panic!("kept")
        };
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a", "b", "c"], "the order of the file is kept");
        let live = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1},"x":true}"#;
        assert!(matches!(remove(live), Removal::Kept(doc) if doc.len() == 1 && doc["x"] == true));
        assert_eq!(remove(br#"{"claudeAiOauth":{}}"#), Removal::Nothing);
        assert_eq!(remove(br#"{"access_token":"a","refresh_token":"r","email":"x"}"#), Removal::Nothing);
        assert_eq!(remove(br#"{"claudeAiOauth":{},"access_token":"a"}"#), Removal::Nothing);
        assert_eq!(remove(b"not json"), Removal::Nothing);
        assert_eq!(remove(b"{}"), Removal::Nothing);
        assert_eq!(remove(br#"{"mcpOAuth":{}}"#), Removal::NoLogin);
    }
}
