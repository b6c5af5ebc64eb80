//! Early mounts, the rootfs overlay, and the switch into it.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use hyperxl_contract::mounts::{self, Source};
use hyperxl_contract::Spec;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};

use crate::console::say;
use crate::error::{InitError, SysContext};

const NONE: Option<&str> = None;

fn mkdir_p(p: &str) -> Result<(), InitError> {
    fs::create_dir_all(p).ctx(format!("mkdir {p}"))
}

/// Mounts `fstype` on `target`, ignoring EBUSY (already mounted, e.g. devtmpfs).
fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mkdir_p(target)?;
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(InitError::Sys {
            what: format!("mount {fstype} on {target}"),
            source: e,
        }),
    }
}

/// /proc, /sys, /dev (devtmpfs), then /dev/pts and /dev/shm (best effort: the kernel
/// may lack devpts).
pub fn early() -> Result<(), InitError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    if let Err(e) = mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    ) {
        say!("no /dev/pts: {e}");
    }
    if let Err(e) = mount_fs("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777")) {
        say!("no /dev/shm: {e}");
    }
    Ok(())
}

/// Waits for a path to exist.
pub fn wait_for(path: &str, timeout: Duration) -> Result<(), InitError> {
    wait_until(path, timeout, || Path::new(path).exists())
}

/// Waits until `ready` says yes, looking every 5 ms; after `timeout`, an error naming
/// `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), InitError> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() >= timeout {
            return Err(InitError::Timeout(what.to_string(), timeout.as_secs()));
        }
        sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Finds the xenbus device: `/dev/xen/xenbus`, else xenfs on /proc/xen.
pub fn xenbus_device() -> Result<&'static str, InitError> {
    if wait_for(xenstore_wire::XENBUS_DEVICE, Duration::from_secs(2)).is_ok() {
        return Ok(xenstore_wire::XENBUS_DEVICE);
    }
    say!(
        "{} missing, mounting xenfs on /proc/xen",
        xenstore_wire::XENBUS_DEVICE
    );
    mount_fs("xenfs", "/proc/xen", "xenfs", MsFlags::empty(), None)
        .and_then(|()| wait_for(xenstore_wire::XENBUS_PROC, Duration::from_secs(2)))
        .map_err(|e| InitError::NoXenbus(Box::new(e)))?;
    Ok(xenstore_wire::XENBUS_PROC)
}

/// `/sys/block/<name>` for a `/dev/<name>` device path.
pub fn sysfs_block(device: &str) -> String {
    format!("/sys/block/{}", device.rsplit('/').next().unwrap_or(device))
}

/// Where the pieces go in the initramfs.
pub const LOWER: &str = "/mnt/lower";
/// Holds the overlay's upper and work dirs (tmpfs or scratch disk).
pub const RW: &str = "/mnt/rw";
/// The overlay: the app's root.
pub const NEWROOT: &str = "/mnt/root";

/// The overlayfs option string.
pub fn overlay_options() -> String {
    format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work")
}

fn read_or_empty(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The size limit of the writable layer when it lives in memory: half of the guest's
/// memory (tmpfs' own default) when there is plenty, a quarter in a small guest, so that
/// an app filling its root gets ENOSPC rather than the OOM killer.
pub fn upper_tmpfs_size(meminfo: &str) -> String {
    let total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    match total_kib {
        Some(k) if k < 128 * 1024 => format!("{}k", (k / 4).max(4096)),
        _ => "50%".to_string(),
    }
}

/// Mounts the image read-only, a writable layer and the overlay at [`NEWROOT`].
pub fn rootfs(spec: &Spec) -> Result<(), InitError> {
    // Generous: blkfront is slow to attach in the emulated test host.
    let timeout = Duration::from_secs(30);
    wait_for(&sysfs_block(&spec.rootfs.device), timeout)?;
    wait_for(&spec.rootfs.device, timeout)?;
    mkdir_p(LOWER)?;
    mount(
        Some(spec.rootfs.device.as_str()),
        LOWER,
        Some(spec.rootfs.fstype.as_str()),
        MsFlags::MS_RDONLY,
        NONE,
    )
    .ctx(format!(
        "mount {} ({}) read-only",
        spec.rootfs.device, spec.rootfs.fstype
    ))?;
    match &spec.scratch {
        Some(d) => {
            wait_for(&sysfs_block(&d.device), timeout)?;
            wait_for(&d.device, timeout)?;
            mkdir_p(RW)?;
            mount(
                Some(d.device.as_str()),
                RW,
                Some(d.fstype.as_str()),
                MsFlags::empty(),
                NONE,
            )
            .ctx(format!("mount scratch {} ({})", d.device, d.fstype))?;
        }
        None => {
            let opts = format!(
                "mode=0755,size={}",
                upper_tmpfs_size(&read_or_empty("/proc/meminfo"))
            );
            mount_fs("tmpfs", RW, "tmpfs", MsFlags::empty(), Some(opts.as_str()))?
        }
    }
    mkdir_p(&format!("{RW}/upper"))?;
    mkdir_p(&format!("{RW}/work"))?;
    mkdir_p(NEWROOT)?;
    mount(
        Some("overlay"),
        NEWROOT,
        Some("overlay"),
        MsFlags::empty(),
        Some(overlay_options().as_str()),
    )
    .ctx("mount overlay")?;
    Ok(())
}

/// Moves /dev, /proc, /sys into the new root and makes it `/` (the switch_root way:
/// an initramfs cannot be pivot_root'ed).
pub fn switch_root() -> Result<(), InitError> {
    for m in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEWROOT}{m}");
        mkdir_p(&target)?;
        mount(Some(m), target.as_str(), NONE, MsFlags::MS_MOVE, NONE).ctx(format!("move {m}"))?;
    }
    chdir(NEWROOT).ctx("chdir new root")?;
    mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE).ctx("move new root to /")?;
    chroot(".").ctx("chroot")?;
    chdir("/").ctx("chdir /")?;
    Ok(())
}

/// Mounts the spec's volumes, snapshots and tmpfs into the (already switched-to) root,
/// parents first; each target is created if missing, resolved inside the guest's tree.
pub fn extra(spec: &Spec) -> Result<(), InitError> {
    let timeout = Duration::from_secs(30);
    for m in mounts::mount_order(&spec.mounts) {
        let target = mounts::normal_target(&m.target);
        let mut flags = if m.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        match &m.source {
            Source::Disk { device, fstype } => {
                wait_for(&sysfs_block(device), timeout)?;
                wait_for(device, timeout)?;
                mkdir_p(target)?;
                // A read-only device cannot replay a journal left by a VM killed while
                // writing: mount what was committed.
                let data = (m.readonly && fstype == "ext4").then_some("norecovery");
                mount(
                    Some(device.as_str()),
                    target,
                    Some(fstype.as_str()),
                    flags,
                    data,
                )
                .ctx(format!("mount {device} ({fstype}) on {target}"))?;
            }
            Source::Tmpfs { size, mode } => {
                flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                let mut data = format!("mode={:o}", mode.unwrap_or(0o1777));
                if let Some(size) = size {
                    data.push_str(&format!(",size={size}"));
                }
                mkdir_p(target)?;
                mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    flags,
                    Some(data.as_str()),
                )
                .ctx(format!("mount tmpfs on {target}"))?;
            }
        }
    }
    Ok(())
}

/// `--read-only`: the app's root becomes read-only (its mounts keep their own modes).
pub fn seal_root() -> Result<(), InitError> {
    mount(
        NONE,
        "/",
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        NONE,
    )
    .ctx("remount / read-only")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_names() {
        assert_eq!(sysfs_block("/dev/xvda"), "/sys/block/xvda");
        assert_eq!(sysfs_block("/dev/xvdb"), "/sys/block/xvdb");
    }

    #[test]
    fn upper_size() {
        assert_eq!(upper_tmpfs_size("MemTotal:       24000 kB\n"), "6000k");
        assert_eq!(upper_tmpfs_size("MemTotal:        8000 kB\n"), "4096k");
        assert_eq!(upper_tmpfs_size("MemTotal:     1000000 kB\n"), "50%");
        assert_eq!(upper_tmpfs_size(""), "50%");
    }

    #[test]
    fn overlay_opts() {
        assert_eq!(
            overlay_options(),
            "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"
        );
    }
}
