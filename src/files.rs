//! Files clavis writes and the private files it reads, never through a
//! link someone planted: the generated admin token, the snapshot, the audit
//! log and the CA live in directories a misconfigured volume may share, and
//! a symlink at one of their paths must not send a secret to its target
//! (keeping the target's mode, readable by others) nor let clavis
//! overwrite another file. Every write here opens with `O_NOFOLLOW` (the
//! last path component; directories are the operator's), and a file that
//! replaces another is a fresh temp file (`O_EXCL`) renamed over it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How [`write`] puts a file at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Nothing may be there yet (`O_EXCL`): a CA's key and certificate.
    New,
    /// A regular file there is truncated and rewritten; a link there is
    /// refused (the public CA bundle, rewritten at every start).
    Overwrite,
    /// Written to a fresh temp file beside the path (`O_EXCL`, so never an
    /// existing file or link), synced, then renamed over the path and the
    /// directory synced: whatever was at the path (a file, a planted link)
    /// is replaced, never written through, and a crash leaves the old file
    /// or the new one, never half of either.
    Replace,
}

/// Writes `bytes` to `path` with permissions `mode`.
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32, put: Put) -> std::io::Result<()> {
    match put {
        Put::New | Put::Overwrite => {
            let mut options = OpenOptions::new();
            options
                .write(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW);
            if put == Put::New {
                options.create_new(true);
            } else {
                options.create(true).truncate(true);
            }
            let mut file = options.open(path)?;
            file.write_all(bytes)?;
            file.sync_all()
        }
        Put::Replace => replace(path, bytes, mode),
    }
}

fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_beside(path)?;
    let written = (|| {
        // create_new is O_CREAT|O_EXCL: it fails on any existing name,
        // a dangling link included; O_NOFOLLOW says so once more.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The umask may have narrowed the mode, never widened it; set it
        // exactly so a 0600 file is 0600 whatever the process's umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `.<name>.<random>.tmp` in the same directory (so the rename stays on one
/// file system), with a random part no one can plant in advance.
fn temp_beside(path: &Path) -> std::io::Result<PathBuf> {
    use ring::rand::SecureRandom;
    let mut random = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.tmp", crate::encoding::hex(&random)));
    Ok(path.with_file_name(name))
}

/// Opens `path` to append to, created `0600` when absent; a link at the
/// path is refused (the audit log).
pub(crate) fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Who besides the owner may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readers {
    Owner,
    /// Its group (a Kubernetes Secret mounted with `fsGroup`, say).
    Group,
    /// Anyone on the machine.
    Others,
}

/// Who may read the file at `path` (a link is followed: Kubernetes mounts
/// Secrets as links into a `..data` directory), and its mode.
pub(crate) fn readers(path: &Path) -> std::io::Result<(Readers, u32)> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    let readers = if mode & 0o004 != 0 {
        Readers::Others
    } else if mode & 0o040 != 0 {
        Readers::Group
    } else {
        Readers::Owner
    };
    Ok((readers, mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    mod write {
        use super::*;

        #[test]
        fn replace_never_writes_through_a_planted_link() {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("target");
            std::fs::write(&target, "theirs").unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
            let path = dir.path().join("admin.token");
            symlink(&target, &path).unwrap();
            write(&path, b"secret", 0o600, Put::Replace).unwrap();
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");
            assert_eq!(mode_of(&target), 0o644);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.is_file(), "the link was replaced by a file");
            assert_eq!(mode_of(&path), 0o600);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        }

        #[test]
        fn replace_leaves_no_temp_file_and_replaces_a_wide_old_file() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snap");
            std::fs::write(&path, "old").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
            write(&path, b"new", 0o600, Put::Replace).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
            assert_eq!(mode_of(&path), 0o600);
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "only the file itself");
        }

        #[test]
        fn new_and_overwrite_refuse_a_link() {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("target");
            let path = dir.path().join("file");
            symlink(&target, &path).unwrap();
            assert!(write(&path, b"x", 0o600, Put::New).is_err());
            assert!(write(&path, b"x", 0o644, Put::Overwrite).is_err());
            assert!(!target.exists(), "written through the link");
        }
    }

    mod append {
        use super::*;

        #[test]
        fn refuses_a_link_and_creates_owner_only() {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("target");
            std::fs::write(&target, "").unwrap();
            let link = dir.path().join("audit.jsonl");
            symlink(&target, &link).unwrap();
            assert!(append(&link).is_err());
            let path = dir.path().join("audit2.jsonl");
            append(&path).unwrap().write_all(b"x\n").unwrap();
            assert_eq!(mode_of(&path) & 0o077, 0);
        }
    }

    mod readers {
        use super::*;

        #[test]
        fn tells_owner_group_and_others_apart_through_a_link() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("key");
            std::fs::write(&path, "k").unwrap();
            for (mode, who) in [
                (0o600, Readers::Owner),
                (0o400, Readers::Owner),
                (0o640, Readers::Group),
                (0o644, Readers::Others),
                (0o604, Readers::Others),
            ] {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                assert_eq!(readers(&path).unwrap().0, who, "{mode:o}");
            }
            let link = dir.path().join("link");
            symlink(&path, &link).unwrap();
            assert_eq!(readers(&link).unwrap().0, Readers::Others);
        }
    }
}
