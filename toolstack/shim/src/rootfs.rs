//! A container's root filesystem, as containerd hands it over (the snapshot's mounts),
//! turned into the VM's read-only root disk: mounted at the bundle's `rootfs`, written
//! out as squashfs, unmounted again. The VM never sees the snapshot itself.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use hyperxl_image::disk::{build_squashfs_from_dir, Compressor};

/// Why the rootfs could not become a disk.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Mounting the snapshot failed.
    #[error("mounting the container's rootfs ({kind} {source_path}) at {}: {errno}", target.display())]
    Mount {
        /// The mount's type.
        kind: String,
        /// The mount's source.
        source_path: String,
        /// Where.
        target: PathBuf,
        /// Why.
        errno: nix::errno::Errno,
    },
    /// The tree cannot run the task (its command is missing).
    #[error("{0}")]
    Refused(String),
    /// Building the squashfs failed.
    #[error("building the root disk: {0}")]
    Disk(#[from] hyperxl_image::disk::DiskError),
    /// A directory or file could not be made or removed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The bundle's rootfs directory.
pub fn target(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts `mounts` (containerd's snapshot; none: the bundle's rootfs is already the
/// tree) at the bundle's rootfs, runs `check` on the tree, writes it to `disk` as
/// squashfs, and unmounts it. On failure nothing is left mounted and no partial disk
/// stays.
pub fn build_disk(
    bundle: &Path,
    mounts: &[Mount],
    disk: &Path,
    check: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), RootfsError> {
    let target = target(bundle);
    std::fs::create_dir_all(&target).map_err(|source| RootfsError::Io {
        what: "creating",
        path: target.clone(),
        source,
    })?;
    for m in mounts {
        if let Err(errno) = mount_one(m, &target) {
            unmount(bundle);
            return Err(RootfsError::Mount {
                kind: m.type_.clone(),
                source_path: m.source.clone(),
                target,
                errno,
            });
        }
    }
    if let Err(why) = check(&target) {
        if !mounts.is_empty() {
            unmount(bundle);
        }
        return Err(RootfsError::Refused(why));
    }
    // lz4: the disk is built at every create (containerd keeps the snapshot, not us);
    // it is the fastest to build.
    let built = build_squashfs_from_dir(&target, Compressor::Lz4, disk);
    if !mounts.is_empty() {
        unmount(bundle);
    }
    if built.is_err() {
        let _ = std::fs::remove_file(disk);
    }
    Ok(built?)
}

/// The guest init's default PATH, for a spec without one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `cmd` names an executable file in the tree at `root`, looked up as the
/// guest's init will: a name with a `/` as it is (relative to `cwd`), any other in each
/// directory of `path` (default: the init's). Every path is resolved inside the tree
/// (`openat2` with `RESOLVE_IN_ROOT`: an absolute symlink or `..` cannot leave it), never
/// on dom0.
pub fn has_executable(root: &Path, cmd: &str, path: Option<&str>, cwd: &str) -> bool {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::AsRawFd;
    let Ok(dir) = std::fs::File::open(root) else {
        return false;
    };
    let candidates: Vec<String> = if cmd.contains('/') {
        vec![if cmd.starts_with('/') {
            cmd.to_string()
        } else {
            format!("{cwd}/{cmd}")
        }]
    } else {
        path.unwrap_or(DEFAULT_PATH)
            .split(':')
            .map(|d| if d.is_empty() { cwd } else { d })
            .map(|d| format!("{d}/{cmd}"))
            .collect()
    };
    candidates.iter().any(|c| {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        let Ok(fd) = openat2(dir.as_raw_fd(), c.as_str(), how) else {
            return false;
        };
        let stat = nix::sys::stat::fstat(fd);
        let _ = nix::unistd::close(fd);
        stat.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o111 != 0)
    })
}

/// Mounts one of containerd's mounts at `target`: its flag options (`ro`, `rbind`,
/// `nosuid`...) become mount flags, the rest (overlay's `lowerdir=...`) its data. (The
/// shim crate's own helper waits for a forked child through its SIGCHLD reaper, which
/// this shim turns off: hyperxl waits for its own children.)
fn mount_one(m: &Mount, target: &Path) -> nix::Result<()> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            other => data.push(other),
        }
    }
    let kind = match m.type_.as_str() {
        "" | "bind" | "rbind" => None,
        t => Some(t),
    };
    if m.type_ == "bind" || m.type_ == "rbind" {
        flags |= MsFlags::MS_BIND;
    }
    let data = data.join(",");
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    nix::mount::mount(
        source,
        target,
        kind,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
}

/// Unmounts whatever is mounted at the bundle's rootfs (best effort: nothing there is
/// fine).
pub fn unmount(bundle: &Path) {
    let target = target(bundle);
    // Stacked mounts (a bind over an overlay) come off one at a time.
    while nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn commands_are_looked_up_inside_the_tree_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("srv")).unwrap();
        let exe = root.join("bin/busybox");
        std::fs::write(&exe, b"x").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("bin/data"), b"x").unwrap();
        symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        // dom0's /bin/true exists; the tree's does not: a link must not find dom0's.
        symlink("/bin/true", root.join("bin/escape")).unwrap();
        symlink("../../../../../../bin/true", root.join("bin/dots")).unwrap();
        assert!(has_executable(root, "sh", None, "/"));
        assert!(has_executable(root, "/bin/sh", None, "/"));
        assert!(has_executable(root, "../bin/sh", None, "/srv"));
        assert!(!has_executable(root, "data", None, "/"), "not executable");
        assert!(!has_executable(root, "missing", None, "/"));
        assert!(
            !has_executable(root, "sh", Some("/usr/bin"), "/"),
            "not on PATH"
        );
        assert!(!has_executable(root, "escape", None, "/"));
        assert!(!has_executable(root, "dots", None, "/"));
        assert!(!has_executable(root, "bin", None, "/"), "a directory");
    }
}
