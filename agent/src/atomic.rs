//! Crash-safe file replacement: a reader sees the old file or the new one, never a torn or empty one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "{path} is on a read-only file system (a Kubernetes Secret or a `:ro` mount?): \
         pass --state-dir with a writable directory so rotated tokens are kept"
    )]
    ReadOnly { path: PathBuf },
    #[error(
        "{path} is a bind-mounted single file, which cannot be replaced atomically: mount its directory \
         instead, or pass --state-dir with a writable directory"
    )]
    BindMountedFile { path: PathBuf },
    #[error("no permission to write in {dir}: {source}")]
    Permission { dir: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Replaces `path` with `bytes`: write a temporary file in the same directory, fsync it, rename it over
/// `path`, fsync the directory. The file gets mode 0600 whatever the umask.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.sidecred-{}-{:08x}.tmp", std::process::id(), rand::random::<u32>()));

    let result = write_new(&tmp, bytes).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| classify(e, path, &dir, true))?;
        // The rename is durable only once the directory entry is.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| WriteError::Io { path: dir.clone(), source })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| match e {
        // A failure to create the temp file is about the directory: say so with the target's path.
        WriteError::Io { path: p, source } if p == tmp => classify(source, path, &dir, false),
        other => other,
    })
}

fn write_new(tmp: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|source| WriteError::Io { path: tmp.to_owned(), source })?;
    file.write_all(bytes).map_err(|source| WriteError::Io { path: tmp.to_owned(), source })?;
    file.sync_all().map_err(|source| WriteError::Io { path: tmp.to_owned(), source })
}

fn classify(e: std::io::Error, path: &Path, dir: &Path, renaming: bool) -> WriteError {
    match e.raw_os_error() {
        Some(code) if code == nix::libc::EROFS => WriteError::ReadOnly { path: path.to_owned() },
        // Renaming over a mount point fails with EBUSY (or EXDEV on some kernels).
        Some(code) if renaming && (code == nix::libc::EBUSY || code == nix::libc::EXDEV) => {
            WriteError::BindMountedFile { path: path.to_owned() }
        }
        Some(code) if code == nix::libc::EACCES || code == nix::libc::EPERM => {
            WriteError::Permission { dir: dir.to_owned(), source: e }
        }
        _ => WriteError::Io { path: path.to_owned(), source: e },
    }
}

/// Checks, without changing anything, that `path` can later be replaced by [`write_atomic`]: its
/// directory accepts new files and `path` is not itself a mount point.
pub fn check_replaceable(path: &Path) -> Result<(), WriteError> {
    if is_mount_point(path) {
        return Err(WriteError::BindMountedFile { path: path.to_owned() });
    }
    let dir = parent_dir(path);
    let probe = dir.join(format!(".sidecred-probe-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(classify(e, path, &dir, false)),
    }
}

/// Whether `path` is the mount point of a mount (a bind-mounted single file, typically), read from
/// `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().filter_map(|line| line.split(' ').nth(4)).any(|mount| Path::new(&unescape(mount)) == real)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The file a path finally names, so an atomic replace lands on the file behind a symlink (Kubernetes
/// Secret keys, a dotfile manager) instead of replacing the link. A path that does not resolve is used as is.
pub fn resolve_symlinks(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_with_mode_0600_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, b"old").expect("seed");
        write_atomic(&path, b"new").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_file() {
        let err = write_atomic(Path::new("/nonexistent-sidecred/x/c.json"), b"x").expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent-sidecred/x"), "{err}");
    }

    #[test]
    fn root_is_a_mount_point_and_a_temp_file_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, b"x").expect("write");
        assert!(!is_mount_point(&path));
        check_replaceable(&path).expect("writable temp dir");
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
