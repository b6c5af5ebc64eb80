//! `hyperxl-block`: the hotplug step libxl runs for a hyperxl rootfs disk.
//!
//! libxl always runs a hotplug script for a `phy` disk (`SCRIPT add|remove`, with the
//! backend's xenstore path in `$XENBUS_PATH`). Xen's stock `block` script is bash that
//! sources several helpers and takes a lock; on the way to boot that costs more than
//! the whole rest of the disk attach. hyperxl sets up the loop device itself (see
//! `vm/disk.rs`), so all that is left to do is what blkback waits for: the device's
//! `major:minor` in `physical-device`. `remove` has nothing to do: the loop device is
//! auto-clearing and goes away when blkback closes it.
//!
//! On failure the reason goes to `hotplug-error`, where libxl reports it (see the
//! crate's `main`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::ExitCode;

use xenstore_wire::Xenstore;

fn add(xs: &mut Xenstore<impl xenstore_wire::Transport>, be: &str) -> Result<(), String> {
    let params = xs
        .read_string(&format!("{be}/params"))
        .map_err(|e| format!("reading {be}/params: {e}"))?;
    let meta = std::fs::metadata(&params).map_err(|e| format!("{params}: {e}"))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{params} is not a block device"));
    }
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    xs.write(
        &format!("{be}/physical-device"),
        format!("{major:x}:{minor:x}").as_bytes(),
    )
    .and_then(|()| xs.write(&format!("{be}/physical-device-path"), params.as_bytes()))
    .map_err(|e| format!("writing {be}/physical-device: {e}"))
}

fn main() -> ExitCode {
    hyperxl_hotplug::main("hyperxl-block", &["add"], add)
}
