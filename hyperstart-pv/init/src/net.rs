//! The guest's network: `lo` always, `eth0` as the spec says, and the files that name
//! things (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) in the writable layer.

use std::fs;
use std::time::Duration;

use hyperxl_contract::net::{hosts_file, resolv_conf, GUEST_IFACE};
use hyperxl_contract::Spec;
use hyperxl_netconf as netconf;

use crate::error::{InitError, SysContext};
use crate::mounts::{wait_for, wait_until};

/// Brings `lo` up, and `eth0` with its address, MTU and default route when the spec has
/// a network. Runs before the rootfs is mounted: a vif hot-added to a pooled VM probes
/// meanwhile.
pub fn configure(spec: &Spec) -> Result<(), InitError> {
    netconf::set_up("lo")?;
    let Some(net) = &spec.network else {
        return Ok(());
    };
    // Generous, as for the disks: netfront is slow to connect in the emulated test host.
    let timeout = Duration::from_secs(30);
    wait_for(&format!("/sys/class/net/{GUEST_IFACE}"), timeout)?;
    // hyperxl's networks are IPv4 only and the bridge drops a guest's IPv6 frames, so,
    // as Docker does on a network without IPv6, eth0 gets no IPv6 at all: no link-local
    // address, and none of the duplicate-address, router and multicast-listener packets
    // it would send into a bridge that drops them. `lo` keeps ::1.
    netconf::disable_ipv6(GUEST_IFACE)?;
    netconf::set_mtu(GUEST_IFACE, net.mtu)?;
    netconf::set_ipv4(GUEST_IFACE, net.address, net.prefix)?;
    netconf::set_up(GUEST_IFACE)?;
    if let Some(gw) = net.gateway {
        netconf::add_default_route(gw)?;
    }
    // netfront registers eth0 a moment before it turns the carrier on, and a vif
    // hot-added to a pooled VM can be seen in between: the app starts only once frames
    // can go out.
    let carrier = format!("/sys/class/net/{GUEST_IFACE}/carrier");
    wait_until(&format!("{GUEST_IFACE}'s carrier"), timeout, || {
        fs::read_to_string(&carrier).is_ok_and(|c| c.trim() == "1")
    })
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
