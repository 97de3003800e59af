//! Files we do not control: reading them without blocking or swallowing the machine, and replacing them
//! crash-safely (a reader sees the old file or the new one, never a torn or empty one).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest credentials or state file read. Real ones are a few hundred bytes.
pub const MAX_FILE_LEN: u64 = 1024 * 1024;

/// Reads a file that someone else may have put there: only a regular file (a FIFO would block the
/// reader forever, `/dev/zero` would never end), at most [`MAX_FILE_LEN`] bytes. Opening does not block
/// either: a FIFO is opened non-blocking and then refused.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits())
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::new(ErrorKind::InvalidInput, format!("{what}, not a regular file")));
    }
    let too_large = || {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_LEN} bytes; not a credentials file"),
        )
    };
    if meta.len() > MAX_FILE_LEN {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow after the check: never read more than the limit allows.
    file.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Why a directory cannot hold a socket or credentials: someone else could replace what we put there.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeDir {
    #[error("{path} belongs to uid {owner}, not to this process's uid {me} (or root): another user could replace what is put there; use a directory of your own")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path} is writable by every user (mode {mode:o}) without the sticky bit: anyone could replace what is put there; use a directory of your own inside it")]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error("cannot inspect {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Checks that only this process's user (or root) can change what `dir` holds: it is owned by us or by
/// root, and not writable by others unless sticky (as `/tmp` is).
pub fn check_private_dir(dir: &Path) -> Result<(), UnsafeDir> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|source| UnsafeDir::Io { path: dir.to_owned(), source })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(UnsafeDir::Owner { path: dir.to_owned(), owner: meta.uid(), me });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(UnsafeDir::WorldWritable { path: dir.to_owned(), mode });
    }
    Ok(())
}

/// The name a temporary file for `target` gets: hidden, naming the writer, unique.
fn temp_name(target_name: &str) -> String {
    format!(".{target_name}.sidecred-{}-{:08x}.tmp", std::process::id(), rand::random::<u32>())
}

/// Removes temporary files that a writer killed mid-write left beside `target`. Only ours, by name.
pub fn remove_stale_temp_files(target: &Path) -> usize {
    let dir = parent_dir(target);
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else { return 0 };
    let prefix = format!(".{name}.sidecred-");
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let is_ours = file_name.starts_with(&prefix) && file_name.ends_with(".tmp");
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_ours && is_file && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

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
    let tmp = dir.join(temp_name(&name));

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
    fn only_regular_files_of_a_sane_size_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        // Would block forever if the open or the read blocked.
        let err = read_regular(&fifo).expect_err("a FIFO");
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        assert!(read_regular(&zero).expect_err("a device").to_string().contains("a device"));
        assert!(read_regular(dir.path()).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b' '; MAX_FILE_LEN as usize + 1]).expect("write");
        assert!(read_regular(&big).expect_err("too large").to_string().contains("larger than"));
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"{}").expect("write");
        assert_eq!(read_regular(&ok).expect("read"), b"{}");
    }

    #[test]
    fn stale_temp_files_of_this_target_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("credentials.json");
        let stale = dir.path().join(temp_name("credentials.json"));
        std::fs::write(&stale, b"half").expect("write");
        let other = dir.path().join(temp_name("other.json"));
        std::fs::write(&other, b"x").expect("write");
        std::fs::write(&target, b"{}").expect("write");
        assert_eq!(remove_stale_temp_files(&target), 1);
        assert!(!stale.exists() && other.exists() && target.exists());
    }

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
