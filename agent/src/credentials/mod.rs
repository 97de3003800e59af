//! The credentials file: its two shapes, parsing with errors that name the field at fault, and
//! updating the tokens while every field we do not know survives untouched. [`document`] judges what a
//! file holds as a whole (a login, none, a damaged one) and removes a login; [`login_clock`] is the
//! record of when the login was made.

pub mod document;
mod login_clock;
mod shapes;

pub use login_clock::{ClockStart, LoginClock};

/// The key, in sidecred's record beside the login, of the fingerprint a pair was refreshed from.
const REFRESHED_FROM: &str = "refreshedFrom";

use serde_json::{Map, Value};
use shapes::{has_flat_login, login_shape};
use sidecred_proto::Secret;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Claude Code's key for the OAuth block.
pub const CLAUDE_KEY: &str = "claudeAiOauth";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON ({detail})")]
    Json { path: PathBuf, detail: String },
    #[error("{path}: field `{field}` {problem}")]
    Field { path: PathBuf, field: String, problem: String },
    #[error(
        "{path}: neither Claude Code's `claudeAiOauth` block nor the flat `access_token`/`refresh_token` \
         shape was found; log in with `sidecred-agent login` or copy ~/.claude/.credentials.json here"
    )]
    UnknownShape { path: PathBuf },
}

impl CredentialsError {
    /// Whether this means there is no login at all (no file, or a file without one, such as only
    /// `mcpOAuth` after a logout) rather than one that cannot be used.
    pub fn is_no_login(&self) -> bool {
        match self {
            CredentialsError::Read { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            CredentialsError::UnknownShape { .. } => true,
            _ => false,
        }
    }

    /// The field at fault, when one is (`claudeAiOauth.expiresAt`, ...).
    pub fn field(&self) -> Option<&str> {
        match self {
            CredentialsError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Which layout the file uses, so a write-back keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt" (epoch ms), ...}, ...}`
    ClaudeCode,
    /// `{"access_token", "refresh_token", "expires_at" (RFC 3339), ...}` from the deployment guide.
    Flat,
}

/// One OAuth credential set, plus the whole document it came from.
#[derive(Clone)]
pub struct Credentials {
    pub access_token: Secret,
    /// `None` for a login that came without one (a long-lived, inference-only login) and for a static
    /// token: such a token is served until it expires and never refreshed.
    pub refresh_token: Option<Secret>,
    /// Expiry as Unix epoch milliseconds.
    pub expires_at_ms: u64,
    pub scopes: Vec<String>,
    pub subscription_type: Option<String>,
    pub account: Option<String>,
    shape: Shape,
    /// The full document, so unknown fields at any level are written back as they were read.
    doc: Map<String, Value>,
}

/// Fingerprints of the tokens and the size of the document, never its text: it holds the tokens in the
/// clear, and other secrets beside them (`mcpOAuth`'s).
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("scopes", &self.scopes)
            .field("subscription_type", &self.subscription_type)
            .field("account", &self.account)
            .field("shape", &self.shape)
            .field("doc", &DocSize(&self.doc))
            .finish()
    }
}

/// A document in `Debug` output: how many keys it has, nothing of what they hold.
pub(crate) struct DocSize<'a>(pub &'a Map<String, Value>);

impl fmt::Debug for DocSize<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{} keys}}", self.0.len())
    }
}

/// What a refresh or login brought back, to be merged into the document.
#[derive(Debug, Clone)]
pub struct TokenUpdate {
    pub access_token: Secret,
    /// `None` when the endpoint did not send one: the old refresh token stays valid and is kept.
    pub refresh_token: Option<Secret>,
    pub expires_at_ms: u64,
    pub scopes: Option<Vec<String>>,
}

impl Credentials {
    /// Parses `bytes` read from `path` (the path is only used in error messages).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, CredentialsError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CredentialsError::Json { path: path.to_owned(), detail: json_fault(&e) })?;
        Self::from_value(value, path)
    }

    /// Interprets an already-parsed document (the state file embeds one).
    pub fn from_value(value: Value, path: &Path) -> Result<Self, CredentialsError> {
        let Value::Object(doc) = value else {
            return Err(CredentialsError::Json {
                path: path.to_owned(),
                detail: "the top level must be an object".into(),
            });
        };
        let fields = match login_shape(&doc) {
            Some(Shape::ClaudeCode) => shapes::claude_code_fields(&doc, path)?,
            Some(Shape::Flat) => shapes::flat_fields(&doc, path)?,
            None => return Err(CredentialsError::UnknownShape { path: path.to_owned() }),
        };
        Ok(fields.into_credentials(doc))
    }

    pub fn read(path: &Path) -> Result<Self, CredentialsError> {
        let bytes = crate::atomic::read_regular(path)
            .map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
        Self::parse(&bytes, path)
    }

    /// A new Claude Code-shaped document, for a first login.
    pub fn new_claude_code(update: TokenUpdate) -> Self {
        Self::claude_code_in(Map::new(), update)
    }

    /// A token handed over on its own (`run --static-token-env`): no refresh token, no file behind it,
    /// and an expiry nobody told us, so it is taken as never reached.
    pub fn static_token(access_token: Secret) -> Self {
        Credentials {
            access_token,
            refresh_token: None,
            expires_at_ms: u64::MAX,
            scopes: Vec::new(),
            subscription_type: None,
            account: None,
            shape: Shape::ClaudeCode,
            doc: Map::new(),
        }
    }

    /// A login written into an existing document that holds no usable credentials (only `mcpOAuth`
    /// after a logout, or a damaged `claudeAiOauth` block): every other key, and every other field of
    /// an existing `claudeAiOauth` object, is kept.
    pub fn claude_code_in(mut doc: Map<String, Value>, update: TokenUpdate) -> Self {
        if !doc.get(CLAUDE_KEY).is_some_and(Value::is_object) {
            doc.insert(CLAUDE_KEY.into(), Value::Object(Map::new()));
        }
        let base = Credentials {
            access_token: Secret::default(),
            refresh_token: None,
            expires_at_ms: 0,
            scopes: Vec::new(),
            subscription_type: None,
            account: None,
            shape: Shape::ClaudeCode,
            doc,
        };
        base.with_login(update)
    }

    #[cfg(test)]
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The same document after a refresh. A refresh token the answer leaves out stays as it was; fields
    /// the update does not name are left exactly as read.
    pub fn with_update(&self, update: TokenUpdate) -> Self {
        let refresh_token = update.refresh_token.clone().or_else(|| self.refresh_token.clone());
        self.with_tokens(update, refresh_token)
    }

    /// The same document holding a new login: unlike a refresh, a login that brings no refresh token
    /// leaves none, since the old one belongs to the login it replaces.
    /// A login starts a new clock ([`LoginClock`]): the record of the login it replaces goes with it.
    pub fn with_login(&self, update: TokenUpdate) -> Self {
        let refresh_token = update.refresh_token.clone();
        self.with_tokens(update, refresh_token).with_login_clock(LoginClock::login(now_ms()))
    }

    /// When this login was made, if the document records it.
    pub fn login_clock(&self) -> Option<LoginClock> {
        LoginClock::read(&self.doc)
    }

    /// The same document recording `clock` as the start of the login.
    pub fn with_login_clock(&self, clock: LoginClock) -> Self {
        let mut next = self.clone();
        clock.write(&mut next.doc);
        next
    }

    /// The fingerprint of the refresh token this pair was refreshed from, when an agent made it: a pair
    /// adopted from the Secret that grew from the live one means the live one is spent; one that did not
    /// (a backup restored, a login from elsewhere) leaves the live one unspent, worth keeping.
    pub fn refreshed_from(&self) -> Option<&str> {
        self.doc.get(login_clock::RECORD_KEY)?.as_object()?.get(REFRESHED_FROM)?.as_str()
    }

    /// The same document noting that it was refreshed from the refresh token of fingerprint `fp`.
    pub fn with_refreshed_from(&self, fp: &str) -> Self {
        let mut next = self.clone();
        let record = next.doc.entry(login_clock::RECORD_KEY).or_insert_with(|| Value::Object(Map::new()));
        if !record.is_object() {
            *record = Value::Object(Map::new());
        }
        if let Value::Object(record) = record {
            record.insert(REFRESHED_FROM.into(), fp.into());
        }
        next
    }

    fn with_tokens(&self, update: TokenUpdate, refresh_token: Option<Secret>) -> Self {
        let mut next = self.clone();
        let scopes = update.scopes.unwrap_or_else(|| self.scopes.clone());
        match self.shape {
            Shape::ClaudeCode => {
                let block = next.doc.entry(CLAUDE_KEY).or_insert_with(|| Value::Object(Map::new()));
                if !block.is_object() {
                    *block = Value::Object(Map::new());
                }
                if let Value::Object(oauth) = block {
                    oauth.insert("accessToken".into(), update.access_token.expose().into());
                    match &refresh_token {
                        Some(r) => oauth.insert("refreshToken".into(), r.expose().into()),
                        None => oauth.shift_remove("refreshToken"),
                    };
                    oauth.insert("expiresAt".into(), update.expires_at_ms.into());
                    oauth.insert("scopes".into(), scopes.clone().into());
                }
            }
            Shape::Flat => {
                next.doc.insert("access_token".into(), update.access_token.expose().into());
                match &refresh_token {
                    Some(r) => next.doc.insert("refresh_token".into(), r.expose().into()),
                    None => next.doc.shift_remove("refresh_token"),
                };
                next.doc.insert("expires_at".into(), format_rfc3339(update.expires_at_ms).into());
                // The scopes go where the file keeps them, in its form; a file without them gets none.
                if next.doc.contains_key("scopes") {
                    next.doc.insert("scopes".into(), scopes.clone().into());
                } else if next.doc.contains_key("scope") {
                    next.doc.insert("scope".into(), scopes.join(" ").into());
                }
            }
        }
        next.access_token = update.access_token;
        next.refresh_token = refresh_token;
        next.expires_at_ms = update.expires_at_ms;
        next.scopes = scopes;
        next
    }

    /// The same document with the plan a login learnt from the profile endpoint. `None` leaves a field
    /// as it was.
    pub fn with_plan(&self, subscription_type: Option<&str>, rate_limit_tier: Option<&str>) -> Self {
        let mut next = self.clone();
        let (sub_key, tier_key) = match self.shape {
            Shape::ClaudeCode => ("subscriptionType", "rateLimitTier"),
            Shape::Flat => ("subscription_type", "rate_limit_tier"),
        };
        let target = match self.shape {
            Shape::ClaudeCode => next.doc.get_mut(CLAUDE_KEY).and_then(Value::as_object_mut),
            Shape::Flat => Some(&mut next.doc),
        };
        if let Some(obj) = target {
            if let Some(s) = subscription_type {
                obj.insert(sub_key.into(), s.into());
            }
            if let Some(t) = rate_limit_tier {
                obj.insert(tier_key.into(), t.into());
            }
        }
        if let Some(s) = subscription_type {
            next.subscription_type = Some(s.to_owned());
        }
        next
    }

    /// The whole document, ready to write.
    pub fn to_json(&self) -> Value {
        Value::Object(self.doc.clone())
    }

    /// The serialized file, pretty-printed with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_pretty_bytes(&self.to_json())
    }

    /// Whether both tokens equal `other`'s: the same credential set, whatever else differs.
    pub fn same_tokens(&self, other: &Credentials) -> bool {
        self.access_token == other.access_token && self.refresh_token == other.refresh_token
    }

    /// Milliseconds of validity left at `now_ms`, zero once expired.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }
}

/// Which shape's login the document holds, if any. Claude Code's block wins when both are present.
pub fn to_pretty_bytes(value: &Value) -> Vec<u8> {
    // A serde_json::Value always serializes.
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Whether a token's text can be stored: the file refuses a blank one, so a token endpoint's answer
/// must be judged the same way or a pair would be saved that cannot be read back.
pub fn is_storable_token(text: &str) -> bool {
    !text.trim().is_empty()
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z), in epoch milliseconds.
pub(crate) const MAX_RFC3339_MS: u64 = 253_402_300_799_000;

pub(crate) fn format_rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.min(MAX_RFC3339_MS))).to_string()
}

/// Describes a JSON error by kind and position, never by the text around it: the file holds tokens.
pub fn json_fault(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected value",
        Category::Eof => "unexpected end of file",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
