//! The guest's network: `lo` always, `eth0` as the spec says, and the files that name
//! things (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) in the writable layer.

use std::fs;
use std::time::Duration;

use hyperxl_contract::net::{hosts_file, resolv_conf, GUEST_IFACE};
use hyperxl_contract::Spec;
use hyperxl_netconf as netconf;

use crate::error::{InitError, SysContext};
use crate::mounts::wait_for;

/// Brings `lo` up, and `eth0` with its address, MTU and default route when the spec has
/// a network. Runs before the rootfs is mounted: netfront probes meanwhile.
pub fn configure(spec: &Spec) -> Result<(), InitError> {
    netconf::set_up("lo")?;
    let Some(net) = &spec.network else {
        return Ok(());
    };
    // Generous, as for the disks: netfront is slow to connect in the emulated test host.
    wait_for(
        &format!("/sys/class/net/{GUEST_IFACE}"),
        Duration::from_secs(30),
    )?;
    netconf::set_mtu(GUEST_IFACE, net.mtu)?;
    netconf::set_ipv4(GUEST_IFACE, net.address, net.prefix)?;
    netconf::set_up(GUEST_IFACE)?;
    if let Some(gw) = net.gateway {
        netconf::add_default_route(gw)?;
    }
    Ok(())
}

/// Writes the naming files into the new root (after the switch). Without a network the
/// image's own files are left exactly as they are.
pub fn write_files(spec: &Spec) -> Result<(), InitError> {
    let Some(net) = &spec.network else {
        return Ok(());
    };
    fs::create_dir_all("/etc").ctx("mkdir /etc")?;
    let write = |path: &str, text: String| {
        // A symlink in the image must not redirect the write elsewhere in the guest.
        let _ = fs::remove_file(path);
        fs::write(path, text).ctx(format!("writing {path}"))
    };
    write("/etc/hosts", hosts_file(&spec.hostname, Some(net)))?;
    write("/etc/resolv.conf", resolv_conf(net))?;
    if !spec.hostname.is_empty() {
        write("/etc/hostname", format!("{}\n", spec.hostname))?;
    }
    Ok(())
}
