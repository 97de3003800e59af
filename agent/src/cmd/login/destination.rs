//! Where a login's credentials go: the credentials file (its directory created 0700, the new login
//! merged into whatever the file already holds) or stdout.

use super::error::LoginError;
use super::LoginKind;
use crate::atomic::{check_replaceable, write_atomic, WriteError};
use crate::credentials::document::Document;
use crate::credentials::{Credentials, TokenUpdate};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub enum Destination {
    File(PathBuf),
    Stdout,
}

impl Destination {
    /// Creates the directory (0700, like Claude Code's ~/.claude), checks that the file can be replaced
    /// and that an existing file is one we can merge into. Called before the person signs in: a code
    /// cannot be exchanged twice, so a login must not fail after it. A long-lived login does not
    /// replace a login that refreshes: that is most likely Claude Code's own, in its default file.
    pub fn prepare(&self, kind: LoginKind) -> Result<(), LoginError> {
        let Destination::File(path) = self else { return Ok(()) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| LoginError::CreateDir { dir: dir.to_owned(), source })?;
        }
        check_replaceable(path).map_err(LoginError::NotWritable)?;
        match read_existing(path)? {
            Existing::Credentials(c) if kind == LoginKind::LongLived && c.refresh_token.is_some() => {
                Err(LoginError::WouldReplaceRefreshable { path: path.clone() })
            }
            _ => Ok(()),
        }
    }

    /// Writes the new login, with the plan learnt from the profile when there is one.
    pub fn save(
        &self,
        update: TokenUpdate,
        subscription: Option<&str>,
        tier: Option<&str>,
    ) -> Result<(), LoginError> {
        match self {
            Destination::Stdout => {
                let creds = Credentials::new_claude_code(update).with_plan(subscription, tier);
                let mut out = std::io::stdout().lock();
                out.write_all(&creds.to_bytes()).and_then(|()| out.flush()).map_err(|source| {
                    LoginError::Save(WriteError::Io { path: PathBuf::from("<stdout>"), source })
                })
            }
            Destination::File(path) => {
                // Read again: the file may have changed while the person was signing in.
                let creds = match read_existing(path)? {
                    Existing::Absent => Credentials::new_claude_code(update),
                    Existing::Credentials(c) => c.with_login(update),
                    Existing::Other(doc) => Credentials::claude_code_in(doc, update),
                }
                .with_plan(subscription, tier);
                write_atomic(path, &creds.to_bytes()).map_err(LoginError::Save)
            }
        }
    }
}

/// What is at the destination now.
enum Existing {
    Absent,
    Credentials(Credentials),
    /// A JSON object without usable credentials (only `mcpOAuth`, a damaged block): kept around the
    /// new login.
    Other(Map<String, Value>),
}

fn read_existing(path: &Path) -> Result<Existing, LoginError> {
    let bytes = match crate::atomic::read_regular(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => {
            return Err(LoginError::Existing {
                path: path.to_owned(),
                problem: format!("cannot be read ({e})"),
            })
        }
    };
    Ok(match Document::classify(&bytes, path) {
        Document::Login(c) => Existing::Credentials(c),
        Document::NoLogin(doc) | Document::Damaged(doc) => Existing::Other(doc),
        Document::Unknown(why) => {
            return Err(LoginError::Existing { path: path.to_owned(), problem: why.to_string() })
        }
    })
}
