//! Where credentials come from and where rotated ones go.
//!
//! The seed is the file a person or Kubernetes put there (Claude Code's `.credentials.json`, a Secret).
//! When it is writable and no state directory is given, rotated credentials are written back in place
//! so a local Claude Code sees the new pair. Otherwise they go to `<state-dir>/credentials.json`, which
//! records the SHA-256 of the seed it grew from and the fingerprints of the refresh tokens it has
//! already spent. On start the state wins over the seed unless the seed changed since (a new login,
//! an updated Secret) and is not one we have already rotated past.

use crate::atomic::{
    check_replaceable, read_regular, remove_stale_temp_files, resolve_symlinks, write_atomic, WriteError,
};
use crate::credentials::{json_fault, to_pretty_bytes, Credentials, CredentialsError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "credentials.json";
const STATE_VERSION: u32 = 1;
/// Spent refresh tokens remembered, to recognise a stale seed (a Secret not yet updated).
const RETIRED_KEEP: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("the state directory is not safe: {0}")]
    UnsafeStateDir(#[from] crate::atomic::UnsafeDir),
    #[error("state file {path} is damaged ({detail}); move it aside to start again from the seed")]
    StateDamaged { path: PathBuf, detail: String },
    #[error("state file {path} has version {version}, newer than this agent understands ({STATE_VERSION})")]
    StateVersion { path: PathBuf, version: u32 },
    #[error(
        "no credentials: the seed {seed} is unusable ({reason}) and there is no saved state; \
         log in with `sidecred-agent login` or mount Claude Code's .credentials.json there"
    )]
    NoCredentials { seed: PathBuf, reason: String },
}

/// Where rotated credentials are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Back into the seed file itself.
    InPlace,
    /// Into this state file.
    StateFile(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Store {
    seed: PathBuf,
    target: Target,
}

/// The seed as last read: its hash, and its credentials or why they are unusable.
#[derive(Debug)]
pub struct SeedRead {
    pub sha256: String,
    pub credentials: Result<Credentials, CredentialsError>,
    /// Set when the seed was read from the shared Secret through the Kubernetes API (`--lease`): its
    /// `resourceVersion`. Such a seed only moves forward, so the pair it replaces is spent.
    pub secret_rv: Option<String>,
    /// Where the pair came from, for the logs: the file path, or the Secret, key and version.
    pub origin: String,
}

impl SeedRead {
    /// The credentials document held in a Secret, as read through the API at `resource_version`.
    pub fn from_secret(bytes: &[u8], label: &Path, resource_version: String) -> SeedRead {
        SeedRead {
            sha256: sha256_hex(bytes),
            credentials: Credentials::parse(bytes, label),
            origin: format!("{} (resourceVersion {resource_version})", label.display()),
            secret_rv: Some(resource_version),
        }
    }
}

/// The state file on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateDoc {
    version: u32,
    seed_sha256: Option<String>,
    #[serde(default)]
    retired_refresh_tokens: Vec<String>,
    credentials: serde_json::Value,
    /// A pair kept until the one that replaced it proves itself (absent in files older than it, and
    /// when nothing is kept; an agent that does not know the field ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept: Option<KeptDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeptDoc {
    replaced_by: String,
    from_secret: bool,
    credentials: serde_json::Value,
}

/// A valid pair that an adopted pair replaced, kept until the adopted one has proved itself (a
/// successful refresh), to go back to if the adopted one's refresh token turns out dead
/// (`lifecycle/machine/kept.rs`). Saved with the live pair in a state directory.
#[derive(Debug, Clone)]
pub struct KeptPair {
    pub credentials: Credentials,
    /// The fingerprint of the adopted pair's refresh token.
    pub replaced_by: String,
    /// Adopted from the shared Secret, not the seed file.
    pub from_secret: bool,
}

#[derive(Debug, Clone)]
pub struct StateRead {
    pub seed_sha256: Option<String>,
    pub retired: Vec<String>,
    pub credentials: Credentials,
    pub kept: Option<KeptPair>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Seed,
    State,
}

/// What the agent starts from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub credentials: Credentials,
    pub origin: Origin,
    /// Hash of the seed as it is now (`None` when it could not be read).
    pub seed_sha256: Option<String>,
    pub retired: Vec<String>,
    /// Why the seed was passed over, when it was unusable.
    pub seed_problem: Option<String>,
    /// The pair kept beside the state's (only when starting from the state).
    pub kept: Option<KeptPair>,
}

impl Store {
    /// Decides where rotated credentials go and checks now, not after the first refresh, that they can
    /// be written there: a refresh token that cannot be saved is a login lost.
    pub fn open(seed: PathBuf, state_dir: Option<PathBuf>) -> Result<Self, StoreError> {
        let target = match state_dir {
            Some(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|source| StoreError::StateDir { path: dir.clone(), source })?;
                crate::atomic::check_private_dir(&dir)?;
                let file = dir.join(STATE_FILE);
                check_replaceable(&file)?;
                Target::StateFile(file)
            }
            None => {
                if let Some(parent) = seed.parent().filter(|p| !p.as_os_str().is_empty()) {
                    // A first login may have nowhere to go yet; create ~/.claude like Claude Code does.
                    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent);
                }
                check_replaceable(&resolve_symlinks(&seed))?;
                Target::InPlace
            }
        };
        let store = Store { seed, target };
        let removed = remove_stale_temp_files(&store.persist_path());
        if removed > 0 {
            tracing::info!(removed, dir = %store.persist_path().display(), "removed temporary files a killed writer left behind");
        }
        Ok(store)
    }

    pub fn seed_path(&self) -> &Path {
        &self.seed
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The file rotated credentials are written to.
    pub fn persist_path(&self) -> PathBuf {
        match &self.target {
            Target::InPlace => resolve_symlinks(&self.seed),
            Target::StateFile(p) => p.clone(),
        }
    }

    /// Reads the seed once: the hash and the parse come from the same bytes.
    pub fn read_seed(&self) -> Result<SeedRead, CredentialsError> {
        read_seed_file(&self.seed)
    }

    pub fn read_state(&self) -> Result<Option<StateRead>, StoreError> {
        let Target::StateFile(path) = &self.target else { return Ok(None) };
        let bytes = match read_regular(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CredentialsError::Read { path: path.clone(), source }.into()),
        };
        let doc: StateDoc = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::StateDamaged { path: path.clone(), detail: json_fault(&e) })?;
        if doc.version > STATE_VERSION {
            return Err(StoreError::StateVersion { path: path.clone(), version: doc.version });
        }
        let credentials = Credentials::from_value(doc.credentials, path)?;
        // A kept pair that cannot be read is no reason not to start: it is only a fallback.
        let kept = doc.kept.and_then(|k| {
            let credentials = Credentials::from_value(k.credentials, path).ok()?;
            Some(KeptPair { credentials, replaced_by: k.replaced_by, from_secret: k.from_secret })
        });
        Ok(Some(StateRead {
            seed_sha256: doc.seed_sha256,
            retired: doc.retired_refresh_tokens,
            credentials,
            kept,
        }))
    }

    /// The credentials to start from, by the precedence rules at the top of this module.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let seed = self.read_seed();
        let state = self.read_state()?;
        let (seed_sha256, seed_creds, seed_problem) = match seed {
            Ok(SeedRead { sha256, credentials: Ok(c), .. }) => (Some(sha256), Some(c), None),
            Ok(SeedRead { sha256, credentials: Err(e), .. }) => (Some(sha256), None, Some(e.to_string())),
            Err(e) => (None, None, Some(e.to_string())),
        };
        let retired = state.as_ref().map(|s| s.retired.clone()).unwrap_or_default();
        let origin =
            choose(seed_creds.as_ref().map(|c| (seed_sha256.as_deref().unwrap_or(""), c)), state.as_ref());
        let (credentials, kept) = match (origin, seed_creds, state) {
            (Some(Origin::Seed), Some(c), _) => (c, None),
            (Some(Origin::State), _, Some(s)) => (s.credentials, s.kept),
            _ => {
                return Err(StoreError::NoCredentials {
                    seed: self.seed.clone(),
                    reason: seed_problem.unwrap_or_else(|| "unreadable".into()),
                })
            }
        };
        Ok(Loaded {
            credentials,
            origin: origin.unwrap_or(Origin::Seed),
            seed_sha256,
            retired,
            seed_problem,
            kept,
        })
    }

    /// Writes `creds` where rotated credentials belong, atomically; in a state file, with the pair
    /// `kept` beside it (without one, a kept pair lives only in memory).
    pub fn persist(
        &self,
        creds: &Credentials,
        seed_sha256: Option<&str>,
        retired: &[String],
        kept: Option<&KeptPair>,
    ) -> Result<(), WriteError> {
        match &self.target {
            Target::InPlace => write_atomic(&resolve_symlinks(&self.seed), &creds.to_bytes()),
            Target::StateFile(path) => {
                let doc = StateDoc {
                    version: STATE_VERSION,
                    seed_sha256: seed_sha256.map(str::to_owned),
                    retired_refresh_tokens: retired.to_vec(),
                    credentials: creds.to_json(),
                    kept: kept.map(|k| KeptDoc {
                        replaced_by: k.replaced_by.clone(),
                        from_secret: k.from_secret,
                        credentials: k.credentials.to_json(),
                    }),
                };
                let value = serde_json::to_value(&doc).unwrap_or_default();
                write_atomic(path, &to_pretty_bytes(&value))
            }
        }
    }
}

/// Reads a seed file: its hash and its credentials from the same bytes.
pub fn read_seed_file(path: &Path) -> Result<SeedRead, CredentialsError> {
    let bytes =
        read_regular(path).map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
    Ok(SeedRead {
        sha256: sha256_hex(&bytes),
        credentials: Credentials::parse(&bytes, path),
        secret_rv: None,
        origin: path.display().to_string(),
    })
}

/// Which source wins. The seed wins when there is no state, or when it changed since the state was
/// written and does not carry a refresh token the state already spent (then it is stale, not new).
pub fn choose(seed: Option<(&str, &Credentials)>, state: Option<&StateRead>) -> Option<Origin> {
    match (seed, state) {
        (None, None) => None,
        (Some(_), None) => Some(Origin::Seed),
        (None, Some(_)) => Some(Origin::State),
        (Some((sha, seed)), Some(state)) => {
            let unchanged = state.seed_sha256.as_deref() == Some(sha);
            let spent =
                seed.refresh_token.as_ref().is_some_and(|r| is_retired(&state.retired, &r.fingerprint()));
            // Logins without a refresh token (long-lived ones) are told apart by their access token.
            let same_pair = match (&seed.refresh_token, &state.credentials.refresh_token) {
                (Some(a), Some(b)) => a == b,
                _ => seed.same_tokens(&state.credentials),
            };
            if unchanged || spent || same_pair {
                Some(Origin::State)
            } else {
                Some(Origin::Seed)
            }
        }
    }
}

pub fn is_retired(retired: &[String], fingerprint: &str) -> bool {
    retired.iter().any(|r| r == fingerprint)
}

/// Adds a spent refresh token's fingerprint, keeping the most recent [`RETIRED_KEEP`].
pub fn retire(retired: &mut Vec<String>, fingerprint: String) {
    if !is_retired(retired, &fingerprint) {
        retired.push(fingerprint);
    }
    let excess = retired.len().saturating_sub(RETIRED_KEEP);
    retired.drain(..excess);
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::TokenUpdate;
    use sidecred_proto::Secret;

    fn creds(refresh: &str) -> Credentials {
        let json = format!(
            r#"{{"claudeAiOauth":{{"accessToken":"a-{refresh}","refreshToken":"{refresh}","expiresAt":1800000000000}}}}"#
        );
        Credentials::parse(json.as_bytes(), Path::new("x")).expect("parse")
    }

    fn state(seed_sha: &str, refresh: &str, retired: &[&str]) -> StateRead {
        StateRead {
            seed_sha256: Some(seed_sha.into()),
            retired: retired.iter().map(|r| Secret::new(*r).fingerprint()).collect(),
            credentials: creds(refresh),
            kept: None,
        }
    }

    #[test]
    fn precedence_table() {
        let seed = creds("R0");
        // No state: the seed.
        assert_eq!(choose(Some(("s1", &seed)), None), Some(Origin::Seed));
        // Seed unchanged since the state grew from it: the state (its refresh token is the live one).
        assert_eq!(choose(Some(("s1", &seed)), Some(&state("s1", "R5", &["R0"]))), Some(Origin::State));
        // Seed changed to a new login: the seed.
        let new_login = creds("N0");
        assert_eq!(choose(Some(("s2", &new_login)), Some(&state("s1", "R5", &["R0"]))), Some(Origin::Seed));
        // Seed changed but carries a refresh token we already spent (a stale Secret): the state.
        assert_eq!(choose(Some(("s2", &seed)), Some(&state("s1", "R5", &["R0"]))), Some(Origin::State));
        // Seed rewritten with the pair the state holds (a write-back landed): the state.
        assert_eq!(
            choose(Some(("s3", &creds("R5"))), Some(&state("s1", "R5", &["R0"]))),
            Some(Origin::State)
        );
        // Long-lived logins (no refresh token): a new one in the seed wins, the same one does not.
        let long_lived = |access: &str| {
            let json =
                format!(r#"{{"claudeAiOauth":{{"accessToken":"{access}","expiresAt":1800000000000}}}}"#);
            Credentials::parse(json.as_bytes(), Path::new("x")).expect("parse")
        };
        let state_of = |c: Credentials| StateRead {
            seed_sha256: Some("s1".into()),
            retired: Vec::new(),
            credentials: c,
            kept: None,
        };
        assert_eq!(
            choose(Some(("s2", &long_lived("L2"))), Some(&state_of(long_lived("L1")))),
            Some(Origin::Seed)
        );
        assert_eq!(
            choose(Some(("s2", &long_lived("L1"))), Some(&state_of(long_lived("L1")))),
            Some(Origin::State)
        );
        assert_eq!(
            choose(Some(("s2", &long_lived("L2"))), Some(&state("s1", "R5", &[]))),
            Some(Origin::Seed)
        );
        assert_eq!(choose(Some(("s2", &seed)), Some(&state_of(long_lived("L1")))), Some(Origin::Seed));
        // Seed unusable: the state; neither: nothing.
        assert_eq!(choose(None, Some(&state("s1", "R5", &[]))), Some(Origin::State));
        assert_eq!(choose(None, None), None);
    }

    #[test]
    fn retire_keeps_the_most_recent() {
        let mut retired = Vec::new();
        for i in 0..40 {
            retire(&mut retired, format!("fp{i}"));
        }
        retire(&mut retired, "fp39".into());
        assert_eq!(retired.len(), RETIRED_KEEP);
        assert_eq!(retired.first().map(String::as_str), Some("fp8"));
        assert_eq!(retired.last().map(String::as_str), Some("fp39"));
    }

    #[test]
    fn state_dir_round_trip_and_precedence_on_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed_path = dir.path().join("seed.json");
        std::fs::write(&seed_path, creds("R0").to_bytes()).expect("seed");
        let store = Store::open(seed_path.clone(), Some(dir.path().join("state"))).expect("open");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.origin, Origin::Seed);

        let next = loaded.credentials.with_update(TokenUpdate {
            access_token: Secret::new("a1"),
            refresh_token: Some(Secret::new("R1")),
            expires_at_ms: 1,
            scopes: None,
        });
        let mut retired = Vec::new();
        retire(&mut retired, Secret::new("R0").fingerprint());
        store.persist(&next, loaded.seed_sha256.as_deref(), &retired, None).expect("persist");
        let again = store.load().expect("load");
        assert_eq!(again.origin, Origin::State);
        assert_eq!(again.credentials.refresh_token, Some(Secret::new("R1")));
        assert!(again.kept.is_none());

        // A pair kept beside the live one comes back with it.
        let kept = KeptPair { credentials: creds("K0"), replaced_by: "fp:R1".into(), from_secret: true };
        store.persist(&next, loaded.seed_sha256.as_deref(), &retired, Some(&kept)).expect("persist");
        let with_kept = store.load().expect("load").kept.expect("the kept pair");
        assert_eq!(with_kept.credentials.refresh_token, Some(Secret::new("K0")));
        assert_eq!((with_kept.replaced_by.as_str(), with_kept.from_secret), ("fp:R1", true));

        // A new login in the seed wins.
        std::fs::write(&seed_path, creds("N0").to_bytes()).expect("seed");
        let after_login = store.load().expect("load");
        assert_eq!(after_login.origin, Origin::Seed);
        assert_eq!(after_login.credentials.refresh_token, Some(Secret::new("N0")));
        assert!(after_login.kept.is_none(), "a kept pair goes with the state it was kept beside");
    }

    #[test]
    fn damaged_state_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed_path = dir.path().join("seed.json");
        std::fs::write(&seed_path, creds("R0").to_bytes()).expect("seed");
        let state_dir = dir.path().join("state");
        let store = Store::open(seed_path, Some(state_dir.clone())).expect("open");
        std::fs::write(state_dir.join(STATE_FILE), b"{\"version\":1,").expect("write");
        let err = store.load().expect_err("damaged").to_string();
        assert!(err.contains("state/credentials.json"), "{err}");
    }
}
