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
    #[error("mounting the container's rootfs at {target}: {source}")]
    Mount {
        /// Where.
        target: PathBuf,
        /// Why.
        source: containerd_shim::Error,
    },
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
/// tree) at the bundle's rootfs, writes it to `disk` as squashfs, and unmounts it. On
/// failure nothing is left mounted and no partial disk stays.
pub fn build_disk(bundle: &Path, mounts: &[Mount], disk: &Path) -> Result<(), RootfsError> {
    let target = target(bundle);
    std::fs::create_dir_all(&target).map_err(|source| RootfsError::Io {
        what: "creating",
        path: target.clone(),
        source,
    })?;
    for m in mounts {
        let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(source) =
            containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, &target)
        {
            unmount(bundle);
            return Err(RootfsError::Mount { target, source });
        }
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

/// Unmounts whatever is mounted at the bundle's rootfs (best effort: nothing there is
/// fine).
pub fn unmount(bundle: &Path) {
    let target = target(bundle);
    if let Some(t) = target.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH);
    }
}
