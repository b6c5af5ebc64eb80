//! Files under the state dir, kept private and whole: directories are 0700 and owned by
//! root (or by the user running hyperxl, for unprivileged tests), files are created 0600
//! without following symlinks, and every record is replaced atomically (a fresh temp
//! file, fsync, rename, fsync of the directory), so a crash leaves the old record or the
//! new one, never half of one, and `spec.json` (which holds the app's environment,
//! secrets included) is readable by root alone.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A state directory hyperxl will not use.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Creating or inspecting it failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Owned by another user: whoever owns it could plant records or symlinks.
    #[error(
        "refusing {path}: it is owned by uid {owner}, not by root or by this user (uid {euid})"
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user running hyperxl.
        euid: u32,
    },
    /// A symlink, or not a directory, where a directory of ours belongs.
    #[error("refusing {0}: not a directory")]
    NotADirectory(PathBuf),
}

/// Creates `path` (and missing parents) as a 0700 directory, or checks an existing one:
/// it must be owned by root or by the effective user; one that is group- or
/// world-accessible is made 0700. `path` itself may be a symlink to a directory (an
/// operator's choice of where the state lives); directories inside it are made with
/// [`private_subdir`], which refuses symlinks.
pub fn secure_dir(path: &Path) -> Result<(), DirError> {
    let io_err = |action| {
        move |source| DirError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    match DirBuilder::new().recursive(true).mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating")(e)),
    }
    let meta = fs::metadata(path).map_err(io_err("inspecting"))?;
    check_owned(path, &meta)?;
    tighten(path, &meta).map_err(io_err("restricting"))
}

/// Creates the directory `path` (its parent exists and is ours) as 0700, or checks an
/// existing one, without following a symlink there.
pub fn private_subdir(path: &Path) -> Result<(), DirError> {
    let io_err = |action| {
        move |source| DirError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating")(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting"))?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory(path.to_path_buf()));
    }
    check_owned(path, &meta)?;
    tighten(path, &meta).map_err(io_err("restricting"))
}

fn check_owned(path: &Path, meta: &fs::Metadata) -> Result<(), DirError> {
    if !meta.is_dir() {
        return Err(DirError::NotADirectory(path.to_path_buf()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(DirError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok(())
}

fn tighten(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens (creating 0600, never through a symlink) the lock file `path` and takes an
/// exclusive flock on it; `wait`: block until it is free, else `None` when it is held.
///
/// A lock file may be removed by its holder (`down` cleans up after itself): a lock
/// taken on a file that is no longer at `path` is dropped and taken again on the new
/// one, so two processes never both believe they hold it.
pub fn lock(path: &Path, wait: bool) -> io::Result<Option<nix::fcntl::Flock<File>>> {
    use nix::fcntl::{Flock, FlockArg};
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match Flock::lock(file, arg) {
            Ok(l) if still_at(&l, path) => return Ok(Some(l)),
            // Removed (or replaced) while we waited for it: lock the current one.
            Ok(_) => continue,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => return Ok(None),
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// Whether the open `file` is the one `path` names now.
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(now)) => open.ino() == now.ino() && open.dev() == now.dev(),
        _ => false,
    }
}

/// Tells apart the temp files of several writers in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh 0600 file next to `path` that nobody else can have prepared: created
/// exclusively (`O_CREAT|O_EXCL`), never through a symlink (`O_NOFOLLOW`).
fn create_temp(path: &Path) -> io::Result<(File, PathBuf)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            // Left by a crashed process that had our pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && seq < u64::MAX => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably: temp file (0600, exclusive, no
/// symlinks), fsync, rename over `path`, fsync of the directory. The one way hyperxl
/// writes a record.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// [`write_atomic`] for a record of runtime facts only (a domid, a loop device, a
/// status, a start time: none of them outlives the host). The rename is not made
/// durable (no fsync of the directory); the data is, so that after a crash the file is
/// the old record or the new one, whole. Saves a journal commit per write on the way
/// to a VM's boot and end.
pub fn write_atomic_runtime(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes)
}

/// Temp file, fsync, rename over `path`.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (mut file, tmp) = create_temp(path)?;
    let written = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Replaces `path` with `bytes` written into `reserve`, a file whose blocks were
/// allocated earlier: on a full disk this needs no new space (the rewrite stays inside
/// the allocated blocks; the rest is given back), where [`write_atomic`] would fail.
/// `reserve` is consumed (renamed over `path`).
pub fn write_atomic_into(reserve: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(reserve)?;
    if file.metadata()?.len() < bytes.len() as u64 {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "the reserved space is smaller than the record",
        ));
    }
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()?;
    drop(file);
    fs::rename(reserve, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `path` for appending, creating it 0600, never through a symlink (console and
/// monitor logs).
pub fn open_private_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// `down` removes the deployment's lock files while holding the lock: a waiter
    /// must then hold the new file, never the removed one.
    #[test]
    fn a_lock_file_removed_by_its_holder_is_taken_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = lock(&path, true).unwrap().unwrap();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let l = lock(&p2, true).unwrap().unwrap();
            still_at(&l, &p2)
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs::remove_file(&path).unwrap();
        drop(held);
        assert!(
            waiter.join().unwrap(),
            "the waiter locks the file at the path"
        );
        assert!(path.exists());
    }

    #[test]
    fn a_record_written_into_the_reserve_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (reserve, path) = (dir.path().join("reserve"), dir.path().join("state.json"));
        fs::write(&path, b"old").unwrap();
        fs::write(&reserve, [0u8; 8]).unwrap();
        assert!(write_atomic_into(&reserve, &path, b"far too long").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        write_atomic_into(&reserve, &path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!reserve.exists());
    }

    #[test]
    fn atomic_writes_are_private_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic_runtime(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_planted_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("rec");
        // Every name this process could pick next is a symlink to the victim.
        let next = TEMP_SEQ.load(Ordering::Relaxed);
        for seq in next..next + 64 {
            let tmp = dir
                .path()
                .join(format!(".rec.tmp.{}.{seq}", std::process::id()));
            std::os::unix::fs::symlink(&victim, tmp).unwrap();
        }
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn logs_are_created_private_and_never_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        drop(open_private_append(&log).unwrap());
        assert_eq!(mode(&log), 0o600);
        let link = dir.path().join("monitor.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        assert!(open_private_append(&link).is_err());
    }

    #[test]
    fn state_dirs_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        secure_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        let fresh = dir.path().join("a/b");
        secure_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let sub = fresh.join("vms");
        private_subdir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        let link = fresh.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(matches!(
            private_subdir(&link),
            Err(DirError::NotADirectory(_))
        ));
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let err = secure_dir(&theirs).unwrap_err();
        assert!(
            matches!(err, DirError::NotOwned { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
