//! The rootfs disk as blkback sees it: a read-only loop device that hyperxl sets up
//! itself, so no bash hotplug script runs on the way to boot.
//!
//! The loop device is created with `LO_FLAGS_AUTOCLEAR`: the kernel frees it when its
//! last opener closes it. hyperxl holds it open (a [`LoopDisk`]) until blkback has it
//! (the guest reported `started`) or the VM has ended; from then on blkback is the only
//! opener, so destroying the domain — by hyperxl, `xl destroy` or anything else — frees
//! the loop device too. A hyperxl process killed at any point leaks nothing.
//!
//! The hotplug step libxl always runs for a `phy` disk is `hyperxl-block`, a small
//! binary next to `hyperxl` that writes `physical-device` for blkback and exits; see
//! `src/bin/hyperxl-block.rs`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopdev::{LoopControl, LoopDevice};

/// Errors setting up a loop device.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `/dev/loop-control` could not be opened (no loop driver, or not root).
    #[error("opening /dev/loop-control (is the loop driver loaded, and are you root?): {0}")]
    Control(#[source] io::Error),
    /// Attaching the file failed.
    #[error("attaching {path} to a loop device: {source}")]
    Attach {
        /// The backing file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A read-only, auto-clearing loop device held open by this process.
pub struct LoopDisk {
    device: LoopDevice,
    path: PathBuf,
}

impl std::fmt::Debug for LoopDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopDisk")
            .field("path", &self.path)
            .finish()
    }
}

impl LoopDisk {
    /// Attaches `file` read-only to a free loop device.
    ///
    /// Several hyperxl processes may race for the same free device: the loser's attach
    /// fails with `EBUSY` and it asks for the next free one.
    pub fn attach(file: &Path) -> Result<Self, DiskError> {
        let control = LoopControl::open().map_err(DiskError::Control)?;
        let attach_err = |source| DiskError::Attach {
            path: file.to_path_buf(),
            source,
        };
        let mut attempts = 0;
        loop {
            let device = control.next_free().map_err(attach_err)?;
            match device.with().read_only(true).autoclear(true).attach(file) {
                Ok(()) => {
                    let path = device
                        .path()
                        .ok_or_else(|| attach_err(io::Error::other("no path for the device")))?;
                    return Ok(Self { device, path });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 32 => {
                    attempts += 1;
                }
                Err(e) => return Err(attach_err(e)),
            }
        }
    }

    /// Opens an existing loop device to hold it (a monitor taking over from `run -d`).
    pub fn hold(path: &Path) -> io::Result<Self> {
        Ok(Self {
            device: LoopDevice::open(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go of the device; the kernel frees it once blkback lets go too.
    pub fn release(self) {
        drop(self.device);
    }
}

/// Whether `/dev/loopN` is still bound to a file.
pub fn is_bound(device: &Path) -> bool {
    let Some(name) = device.file_name() else {
        return false;
    };
    Path::new("/sys/block")
        .join(name)
        .join("loop/backing_file")
        .exists()
}

/// Waits (briefly) for the kernel to free an auto-clearing loop device after its last
/// user closed it; blkback lets go asynchronously after the domain is destroyed.
pub fn wait_freed(device: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while is_bound(device) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Frees a loop device that was left bound (the autoclear flag was not set, or a crash
/// came between attach and its status call). Used by `rm -f` as a last resort.
pub fn detach(device: &Path) -> io::Result<()> {
    if !is_bound(device) {
        return Ok(());
    }
    LoopDevice::open(device)?.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Loop devices need root and the loop driver; elsewhere these tests say so and pass.
    fn loop_available() -> bool {
        let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/loop-control").exists();
        if !ok {
            eprintln!("skipped: needs root and /dev/loop-control");
        }
        ok
    }

    fn image() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x5a; 64 * 1024]).unwrap();
        f
    }

    #[test]
    fn attached_read_only_and_freed_when_released() {
        if !loop_available() {
            return;
        }
        let file = image();
        let disk = LoopDisk::attach(file.path()).unwrap();
        let dev = disk.path().to_path_buf();
        assert!(is_bound(&dev), "{} bound", dev.display());
        let ro = std::fs::read_to_string(
            Path::new("/sys/block")
                .join(dev.file_name().unwrap())
                .join("ro"),
        )
        .unwrap();
        assert_eq!(ro.trim(), "1", "the kernel marks it read-only");
        disk.release();
        assert!(
            wait_freed(&dev, Duration::from_secs(3)),
            "autoclear freed it"
        );
    }

    #[test]
    fn racing_attaches_get_distinct_devices() {
        if !loop_available() {
            return;
        }
        let files: Vec<_> = (0..4).map(|_| image()).collect();
        let disks: Vec<LoopDisk> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .iter()
                .map(|f| s.spawn(|| LoopDisk::attach(f.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut paths: Vec<_> = disks.iter().map(|d| d.path().to_path_buf()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 4, "{paths:?}");
        for d in disks {
            let p = d.path().to_path_buf();
            d.release();
            assert!(wait_freed(&p, Duration::from_secs(3)));
        }
    }
}
