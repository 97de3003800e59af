//! What the kubelet does to a pod's credentials: a Secret volume's layout and its atomic updates, and a
//! read-only mount of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Lays out `dir` the way the kubelet mounts a Secret: `..<timestamp>/` with the files, a `..data`
/// symlink to it, and one symlink per key into `..data`.
pub struct SecretDir {
    pub dir: PathBuf,
    generation: u32,
}

impl SecretDir {
    pub fn create(dir: &Path, files: &[(&str, &[u8])]) -> SecretDir {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = SecretDir { dir: dir.to_owned(), generation: 0 };
        s.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
        }
        s
    }

    /// The kubelet's atomic update: a new timestamped directory, a new `..data` symlink renamed over the
    /// old one, then the old directory removed.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        use std::os::unix::fs::PermissionsExt;
        self.generation += 1;
        let ts = format!("..2026_11_23_20_00_{:02}.{}", self.generation % 60, self.generation);
        let new_dir = self.dir.join(&ts);
        std::fs::create_dir(&new_dir).unwrap();
        for (name, bytes) in files {
            let p = new_dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp_link = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&ts, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
    }
}

/// Wraps a command so it runs in a private mount namespace where `dir` is mounted read-only, the way
/// the kubelet mounts a Secret. Root ignores permission bits, so this is the only honest read-only
/// test when the tests run as root.
pub fn with_readonly_mount(dir: &Path, cmd: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .arg("-m")
        .arg("sh")
        .arg("-c")
        .arg(r#"mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@""#)
        .arg(dir)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// Whether this process can make private read-only mounts (root, or CAP_SYS_ADMIN).
pub fn can_mount_readonly() -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null || mount -t tmpfs none /tmp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
