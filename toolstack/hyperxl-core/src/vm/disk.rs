//! The rootfs disk as blkback sees it: a read-only loop device that hyperxl sets up
//! itself, so no bash hotplug script runs on the way to boot.
//!
//! The loop device is created with `LO_FLAGS_AUTOCLEAR` and `LO_FLAGS_READ_ONLY` in one
//! step (`LOOP_CONFIGURE`, Linux 5.8; older kernels get `LOOP_SET_FD` then
//! `LOOP_SET_STATUS64`, where a kill between the two leaks a device): the kernel frees
//! it when its last opener closes it. hyperxl holds it open (a [`LoopDisk`]) until blkback has it
//! (the guest reported `started`) or the VM has ended; from then on blkback is the only
//! opener, so destroying the domain — by hyperxl, `xl destroy` or anything else — frees
//! the loop device too. A hyperxl process killed at any point leaks nothing.
//!
//! Loop devices are reused as soon as they are free, so the recorded `/dev/loopN` of a
//! VM may be another VM's by the time someone cleans up. Each device hyperxl binds
//! carries its VM's id in `lo_file_name` (`hyperxl:ID`); [`detach`] and
//! [`LoopDisk::hold`] act on a device only if it carries the VM's tag and is backed by
//! the VM's disk file (`lo_device`/`lo_inode`), checked and acted on through one open
//! descriptor, which keeps the binding from changing in between.
//!
//! The hotplug step libxl always runs for a `phy` disk is `hyperxl-block`, a small
//! binary next to `hyperxl` that writes `physical-device` for blkback and exits; see
//! `toolstack/hotplug/src/bin/hyperxl-block.rs`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

// The kernel's loop ABI (linux/loop.h); loopdev 0.5 has no LOOP_CONFIGURE.
const LOOP_SET_FD: u32 = 0x4C00;
const LOOP_CLR_FD: u32 = 0x4C01;
const LOOP_SET_STATUS64: u32 = 0x4C04;
const LOOP_GET_STATUS64: u32 = 0x4C05;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn zeroed() -> Self {
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }

    /// Read-only, auto-clearing, tagged with its VM.
    fn ours(owner: &str, readonly: bool) -> Self {
        let mut info = Self::zeroed();
        info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if readonly {
            info.lo_flags |= LO_FLAGS_READ_ONLY;
        }
        let tag = owner_tag(owner);
        let n = tag.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&tag.as_bytes()[..n]);
        info
    }

    /// The text in `lo_file_name`, up to its NUL.
    fn file_name(&self) -> &[u8] {
        let end = self
            .lo_file_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(LO_NAME_SIZE);
        &self.lo_file_name[..end]
    }
}

/// What hyperxl writes into `lo_file_name` of VM `owner`'s loop device.
pub fn owner_tag(owner: &str) -> String {
    format!("hyperxl:{owner}")
}

/// An ioctl's return value as a `Result`.
fn ioctl_result(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `LOOP_CONFIGURE`: backing file, flags and name in one step.
fn loop_configure(fd: RawFd, config: &LoopConfig) -> io::Result<()> {
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, whose layout `LoopConfig`
    // mirrors (size asserted above), from a pointer to a live value.
    ioctl_result(unsafe { libc::ioctl(fd, LOOP_CONFIGURE as _, config as *const LoopConfig) })
}

/// `LOOP_SET_STATUS64`.
fn loop_set_status(fd: RawFd, info: &LoopInfo64) -> io::Result<()> {
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` (mirrored by
    // `LoopInfo64`, size asserted above) from a pointer to a live value.
    ioctl_result(unsafe { libc::ioctl(fd, LOOP_SET_STATUS64 as _, info as *const LoopInfo64) })
}

/// `LOOP_SET_FD`.
fn loop_set_fd(fd: RawFd, backing: RawFd) -> io::Result<()> {
    // SAFETY: LOOP_SET_FD takes a plain integer (a file descriptor), no pointer.
    ioctl_result(unsafe { libc::ioctl(fd, LOOP_SET_FD as _, backing as libc::c_ulong) })
}

/// `LOOP_CLR_FD`.
fn loop_clr_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    ioctl_result(unsafe { libc::ioctl(fd, LOOP_CLR_FD as _, 0) })
}

fn get_status(fd: RawFd) -> io::Result<LoopInfo64> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` (mirrored by
    // `LoopInfo64`, size asserted above) through a pointer to a live, writable value.
    ioctl_result(unsafe { libc::ioctl(fd, LOOP_GET_STATUS64 as _, &mut info as *mut LoopInfo64) })?;
    Ok(info)
}

/// Set once LOOP_CONFIGURE turned out not to exist (kernel before 5.8).
static NO_CONFIGURE: AtomicBool = AtomicBool::new(false);

/// Binds `backing` to the free device `dev` for VM `owner`: one LOOP_CONFIGURE, or on
/// an older kernel LOOP_SET_FD then LOOP_SET_STATUS64 (undone if the second fails).
fn bind(dev: RawFd, backing: &File, owner: &str, readonly: bool) -> io::Result<()> {
    let info = LoopInfo64::ours(owner, readonly);
    if !NO_CONFIGURE.load(Ordering::Relaxed) {
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        match loop_configure(dev, &config) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                NO_CONFIGURE.store(true, Ordering::Relaxed);
            }
            done => return done,
        }
    }
    loop_set_fd(dev, backing.as_raw_fd())?;
    if let Err(e) = loop_set_status(dev, &info) {
        let _ = loop_clr_fd(dev);
        return Err(e);
    }
    Ok(())
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
    /// Attaches `file` read-only and auto-clearing to a free loop device, tagged as VM
    /// `owner`'s.
    ///
    /// Several hyperxl processes may race for the same free device: the loser's attach
    /// fails with `EBUSY` and it asks for the next free one.
    pub fn attach(file: &Path, owner: &str) -> Result<Self, DiskError> {
        Self::attach_mode(file, owner, true)
    }

    /// As [`LoopDisk::attach`], read-write unless `readonly` (a volume, a scratch disk).
    pub fn attach_mode(file: &Path, owner: &str, readonly: bool) -> Result<Self, DiskError> {
        let control = LoopControl::open().map_err(DiskError::Control)?;
        let attach_err = |source| DiskError::Attach {
            path: file.to_path_buf(),
            source,
        };
        let backing = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(file)
            .map_err(attach_err)?;
        let mut attempts = 0;
        loop {
            let device = control.next_free().map_err(attach_err)?;
            match bind(device.as_raw_fd(), &backing, owner, readonly) {
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

    /// Opens VM `owner`'s loop device at `path` to hold it (a monitor taking over from
    /// `run -d`); fails if the device is not (any more) the VM's (see [`detach`]).
    pub fn hold(path: &Path, owner: &str, backing: Option<&Path>) -> io::Result<Self> {
        let device = LoopDevice::open(path)?;
        if !is_ours(device.as_raw_fd(), owner, backing)? {
            return Err(io::Error::other(format!(
                "{} is no longer bound to this VM's disk",
                path.display()
            )));
        }
        Ok(Self {
            device,
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

/// Whether the device open at `fd` is bound, tagged as VM `owner`'s, and (if `backing`
/// is given and exists) backed by that very file.
fn is_ours(fd: RawFd, owner: &str, backing: Option<&Path>) -> io::Result<bool> {
    let info = match get_status(fd) {
        Ok(info) => info,
        // Not bound.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(false),
        Err(e) => return Err(e),
    };
    if info.file_name() != owner_tag(owner).as_bytes() {
        return Ok(false);
    }
    match backing.map(std::fs::metadata) {
        Some(Ok(meta)) => Ok(meta.dev() == info.lo_device && meta.ino() == info.lo_inode),
        // The disk file is gone (pruned): the tag alone says whose it is.
        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Some(Err(e)) => Err(e),
        None => Ok(true),
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

/// Frees VM `owner`'s loop device at `device` if it was left bound (a device attached
/// on an old kernel whose attacher was killed between its two steps), and only if it is
/// still the VM's: tagged with its id and backed by its disk file `backing`. A device
/// that is free, or bound to anything else, is left alone. Returns whether it was the
/// VM's. Used by `rm -f`, `finish` and reconciliation as a last resort.
pub fn detach(device: &Path, owner: &str, backing: Option<&Path>) -> io::Result<bool> {
    let dev = match LoopDevice::open(device) {
        Ok(dev) => dev,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // Checked and detached through the same descriptor: while it is open the binding
    // cannot be cleared and replaced by another.
    if !is_ours(dev.as_raw_fd(), owner, backing)? {
        return Ok(false);
    }
    dev.detach()?;
    Ok(true)
}

/// Whether `device` is still bound to VM `owner`'s file `backing` (someone, blkback,
/// still holds it after an end).
pub fn still_ours(device: &Path, owner: &str, backing: Option<&Path>) -> bool {
    LoopDevice::open(device)
        .ok()
        .is_some_and(|dev| is_ours(dev.as_raw_fd(), owner, backing).unwrap_or(false))
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
        let disk = LoopDisk::attach(file.path(), "aa01").unwrap();
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
                .map(|f| s.spawn(|| LoopDisk::attach(f.path(), "aa01").unwrap()))
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

    fn sys(dev: &Path, attr: &str) -> String {
        std::fs::read_to_string(
            Path::new("/sys/block")
                .join(dev.file_name().unwrap())
                .join(attr),
        )
        .unwrap()
        .trim()
        .to_owned()
    }

    /// `losetup` binds a device the way anything else on the host might: not ours.
    fn losetup(file: &Path) -> PathBuf {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }

    #[test]
    fn defect6_attach_is_read_only_auto_clearing_and_tagged_in_one_step() {
        if !loop_available() {
            return;
        }
        let file = image();
        let disk = LoopDisk::attach(file.path(), "aa01").unwrap();
        let dev = disk.path().to_path_buf();
        assert_eq!(sys(&dev, "ro"), "1");
        assert_eq!(sys(&dev, "loop/autoclear"), "1");
        let info = get_status(disk.device.as_raw_fd()).unwrap();
        assert_eq!(info.file_name(), b"hyperxl:aa01");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        if (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (5, 8) {
            assert!(
                !NO_CONFIGURE.load(Ordering::Relaxed),
                "LOOP_CONFIGURE was used"
            );
        }
        assert!(is_ours(disk.device.as_raw_fd(), "aa01", Some(file.path())).unwrap());
        assert!(!is_ours(disk.device.as_raw_fd(), "bb02", Some(file.path())).unwrap());
        let other = image();
        assert!(!is_ours(disk.device.as_raw_fd(), "aa01", Some(other.path())).unwrap());
        disk.release();
        assert!(wait_freed(&dev, Duration::from_secs(3)));
    }

    #[test]
    fn defect6_a_reused_loop_device_is_not_detached() {
        if !loop_available() {
            return;
        }
        // VM aa01 had /dev/loopN; it was freed and now someone else's file is bound
        // there (another VM, or the operator's losetup).
        let file = image();
        let dev = losetup(file.path());
        let kept = !detach(&dev, "aa01", Some(file.path())).unwrap() && is_bound(&dev);
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&dev)
            .status();
        assert!(kept, "{} must stay bound", dev.display());
        // Nothing bound there at all: nothing to do.
        assert!(wait_freed(&dev, Duration::from_secs(3)));
        assert!(!detach(&dev, "aa01", None).unwrap());
        assert!(!detach(Path::new("/dev/no-such-loop"), "aa01", None).unwrap());
    }

    #[test]
    fn defect6_the_vms_own_leftover_device_is_detached() {
        if !loop_available() {
            return;
        }
        let file = image();
        let disk = LoopDisk::attach(file.path(), "aa01").unwrap();
        let dev = disk.path().to_path_buf();
        // A monitor taking over checks the same way.
        assert!(LoopDisk::hold(&dev, "bb02", Some(file.path())).is_err());
        let held = LoopDisk::hold(&dev, "aa01", Some(file.path())).unwrap();
        assert!(detach(&dev, "aa01", Some(file.path())).unwrap());
        disk.release();
        held.release();
        assert!(wait_freed(&dev, Duration::from_secs(3)));
    }
}
