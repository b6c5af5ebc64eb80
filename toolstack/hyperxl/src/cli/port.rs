//! `hyperxl port VM [GUEST[/PROTO]]`: a running VM's published ports, as `docker port`.

use std::path::Path;

use anyhow::bail;
use clap::Args;

use hyperxl_core::net::publish::{self, Proto};
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl port`.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// The VM's name or id.
    pub vm: String,
    /// Only this guest port (`80`, `80/tcp`, `53/udp`).
    pub port: Option<String>,
}

/// Prints `GUEST/PROTO -> IP:HOST` lines (only `IP:HOST` for one port).
pub fn run(state_dir: &Path, args: PortArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    reconcile_all(&vms, &Host::connect())?;
    let vm = vms.find(&args.vm)?;
    let ports = match &vm.network {
        Some(n) if vm.status.can_stop() => n.ports.clone(),
        _ => Vec::new(),
    };
    let only = match &args.port {
        Some(p) => {
            let r = publish::parse(p)?;
            if r.host_port.is_some() || r.host_ip.is_some() {
                bail!("invalid port {p:?}: expected GUEST[/tcp|/udp]");
            }
            Some((r.guest_port, r.proto))
        }
        None => None,
    };
    let mut shown = 0;
    for p in &ports {
        let host = format!(
            "{}:{}",
            p.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            p.host_port
        );
        match only {
            Some((g, proto)) if (g, proto) == (p.guest_port, p.proto) => println!("{host}"),
            Some(_) => continue,
            None => println!("{}/{} -> {host}", p.guest_port, p.proto.as_str()),
        }
        shown += 1;
    }
    if shown == 0 {
        if let Some((g, proto)) = only {
            let proto = if proto == Proto::Tcp { "tcp" } else { "udp" };
            bail!("no public port '{g}/{proto}' published for {}", vm.name);
        }
    }
    Ok(0)
}
