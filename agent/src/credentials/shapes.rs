//! Reading a login out of either shape of the file: Claude Code's (`claudeAiOauth` with camelCase
//! fields, epoch milliseconds) and the deployment guide's flat one (snake_case, RFC 3339), each field
//! checked with an error that names it.

use super::{is_storable_token, Credentials, CredentialsError, Shape, CLAUDE_KEY};
use serde_json::{Map, Value};
use sidecred_proto::Secret;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// What a document says about its login, whichever shape spells it; the document itself is kept beside.
pub(super) struct Fields {
    access_token: String,
    refresh_token: Option<String>,
    expires_at_ms: u64,
    scopes: Vec<String>,
    subscription_type: Option<String>,
    account: Option<String>,
    shape: Shape,
}

impl Fields {
    pub(super) fn into_credentials(self, doc: Map<String, Value>) -> Credentials {
        Credentials {
            access_token: Secret::new(self.access_token),
            refresh_token: self.refresh_token.map(Secret::new),
            expires_at_ms: self.expires_at_ms,
            scopes: self.scopes,
            subscription_type: self.subscription_type,
            account: self.account,
            shape: self.shape,
            doc,
        }
    }
}

pub(super) fn login_shape(doc: &Map<String, Value>) -> Option<Shape> {
    if doc.contains_key(CLAUDE_KEY) {
        Some(Shape::ClaudeCode)
    } else if has_flat_login(doc) {
        Some(Shape::Flat)
    } else {
        None
    }
}

/// Whether the top level holds the flat shape's token fields.
pub(super) fn has_flat_login(doc: &Map<String, Value>) -> bool {
    doc.contains_key("access_token") || doc.contains_key("refresh_token")
}

pub(super) fn claude_code_fields(doc: &Map<String, Value>, path: &Path) -> Result<Fields, CredentialsError> {
    let field_err = |field: &str, problem: &str| CredentialsError::Field {
        path: path.to_owned(),
        field: format!("{CLAUDE_KEY}.{field}"),
        problem: problem.to_owned(),
    };
    let Some(Value::Object(oauth)) = doc.get(CLAUDE_KEY) else {
        return Err(CredentialsError::Field {
            path: path.to_owned(),
            field: CLAUDE_KEY.to_owned(),
            problem: "must be an object".to_owned(),
        });
    };
    let access_token = required_string(oauth, "accessToken").map_err(|p| field_err("accessToken", p))?;
    let refresh_token = optional_string(oauth, "refreshToken").map_err(|p| field_err("refreshToken", p))?;
    let expires_at_ms = match oauth.get("expiresAt") {
        Some(v) => epoch_ms(v).ok_or_else(|| field_err("expiresAt", "must be epoch milliseconds"))?,
        None => return Err(field_err("expiresAt", "is missing")),
    };
    let scopes = string_list(oauth.get("scopes")).map_err(|p| field_err("scopes", p))?;
    let subscription_type = oauth.get("subscriptionType").and_then(Value::as_str).map(str::to_owned);
    let account =
        oauth.get("emailAddress").or_else(|| oauth.get("email")).and_then(Value::as_str).map(str::to_owned);
    Ok(Fields {
        access_token,
        refresh_token,
        expires_at_ms,
        scopes,
        subscription_type,
        account,
        shape: Shape::ClaudeCode,
    })
}

pub(super) fn flat_fields(doc: &Map<String, Value>, path: &Path) -> Result<Fields, CredentialsError> {
    let field_err = |field: &str, problem: &str| CredentialsError::Field {
        path: path.to_owned(),
        field: field.to_owned(),
        problem: problem.to_owned(),
    };
    let access_token = required_string(doc, "access_token").map_err(|p| field_err("access_token", p))?;
    let refresh_token = optional_string(doc, "refresh_token").map_err(|p| field_err("refresh_token", p))?;
    let expires_at_ms = match doc.get("expires_at") {
        Some(Value::String(s)) => parse_rfc3339_ms(s).ok_or_else(|| {
            field_err("expires_at", "must be an RFC 3339 time such as 2025-12-31T23:59:59Z")
        })?,
        Some(v) => epoch_ms(v).ok_or_else(|| field_err("expires_at", "must be RFC 3339 or epoch ms"))?,
        None => return Err(field_err("expires_at", "is missing")),
    };
    let scopes = match doc.get("scopes") {
        Some(v) => string_list(Some(v)).map_err(|p| field_err("scopes", p))?,
        None => doc
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let subscription_type = doc.get("subscription_type").and_then(Value::as_str).map(str::to_owned);
    let account = doc.get("email").and_then(Value::as_str).map(str::to_owned);
    Ok(Fields {
        access_token,
        refresh_token,
        expires_at_ms,
        scopes,
        subscription_type,
        account,
        shape: Shape::Flat,
    })
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String, &'static str> {
    match obj.get(key) {
        Some(Value::String(s)) if is_storable_token(s) => Ok(s.clone()),
        Some(Value::String(_)) => Err("is empty"),
        Some(_) => Err("must be a string"),
        None => Err("is missing"),
    }
}

/// A string that may be absent (or null); present, it must be a non-empty string.
fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, &'static str> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => required_string(obj, key).map(Some),
    }
}

fn string_list(value: Option<&Value>) -> Result<Vec<String>, &'static str> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_owned).ok_or("must be a list of strings")).collect()
        }
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(_) => Err("must be a list of strings"),
    }
}

/// Epoch milliseconds from a JSON number. Values that can only be seconds (before 2001 as ms) are
/// taken as seconds, since some tools write those.
fn epoch_ms(value: &Value) -> Option<u64> {
    let n = value.as_u64().or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    Some(if n < 1_000_000_000_000 { n.saturating_mul(1000) } else { n })
}

fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}
