//! `hyperxl-vif`: the hotplug step libxl runs for a hyperxl VM's network interface.
//!
//! libxl runs `SCRIPT online|offline type_if=vif` with the backend's xenstore path in
//! `$XENBUS_PATH` and the vif's dom0 name in `$vif`, and netback does not connect until
//! the script writes `hotplug-status=connected`. Xen's stock `vif-bridge` is bash that
//! sources several helpers, takes a lock and calls `ip` and `iptables`; hyperxl sets up
//! the bridge and the VM's nftables rules itself (see `net/`), so all that is left is
//! what the stock scripts do to the device: rename netback's `vif<domid>.<devid>` to the
//! `vifname` libxl recorded in the backend (hyperxl's per-VM rules match that name), make
//! it a port of the backend's bridge and bring it up (IPv6 off), with ioctls. `offline`
//! has nothing to do: the kernel drops the port with the vif.
//!
//! On failure the reason goes to `hotplug-error`, where libxl reports it (see the
//! crate's `main`).

use std::process::ExitCode;

use hyperxl_netconf as netconf;
use xenstore_wire::Xenstore;

fn online(
    xs: &mut Xenstore<impl xenstore_wire::Transport>,
    be: &str,
    vif: &str,
) -> Result<(), String> {
    let bridge = xs
        .read_string(&format!("{be}/bridge"))
        .map_err(|e| format!("reading {be}/bridge: {e}"))?;
    let mut dev = vif.to_string();
    if let Ok(name) = xs.read_string(&format!("{be}/vifname")) {
        if !name.is_empty() && name != dev {
            netconf::rename(&dev, &name).map_err(|e| e.to_string())?;
            dev = name;
        }
    }
    netconf::add_bridge_port(&bridge, &dev).map_err(|e| e.to_string())?;
    // A bridge port needs no address of its own, and hyperxl's networks are IPv4 only:
    // dom0 sends no IPv6 packets into the guest's link.
    netconf::disable_ipv6(&dev).map_err(|e| e.to_string())?;
    netconf::set_up(&dev).map_err(|e| e.to_string())?;
    xs.write(&format!("{be}/hotplug-status"), b"connected")
        .map_err(|e| format!("writing {be}/hotplug-status: {e}"))
}

fn main() -> ExitCode {
    hyperxl_hotplug::main("hyperxl-vif", &["online", "add"], |xs, be| {
        online(xs, be, &std::env::var("vif").unwrap_or_default())
    })
}
