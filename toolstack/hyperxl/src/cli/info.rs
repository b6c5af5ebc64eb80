//! `hyperxl info`: what this host offers and holds: Xen and its free memory, VMs,
//! networks, storage, the pool.

use std::path::Path;

use clap::Args;

use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

pub fn run(state_dir: &Path, args: InfoArgs) -> anyhow::Result<u8> {
    if !matches!(args.format.as_str(), "table" | "json") {
        anyhow::bail!(
            "unknown --format {:?} (expected table or json)",
            args.format
        );
    }
    let xen = super::version::xen_version();
    let vm_store = VmStore::open(state_dir)?;
    let vms = reconcile_all(&vm_store, &Host::connect())?;
    let running = vms.iter().filter(|v| v.status.can_stop()).count();
    let usage = hyperxl_core::usage::measure(&vm_store, &vms)?;
    let networks = hyperxl_core::net::store::NetStore::open(state_dir)?
        .list()?
        .len();
    let fs = nix::sys::statvfs::statvfs(state_dir).ok();
    let free_disk = fs.map(|s| s.blocks_available() * s.fragment_size());
    let guest = hyperxl_core::vm::machine::guest_dir();
    let kib = |k: u64| super::human_size(k * 1024, 1024);

    if args.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "xen": xen.as_ref().ok().map(|h| serde_json::json!({
                    "version": h.xen_version, "cpus": h.cpus,
                    "total_memory_kib": h.total_memory_kib, "free_memory_kib": h.free_memory_kib,
                })),
                "vms": {"total": vms.len(), "running": running, "exited": vms.len() - running},
                "networks": networks,
                "pool": null,
                "state_dir": state_dir,
                "state_dir_free_bytes": free_disk,
                "guest_dir": guest,
                "usage": usage,
            }))?
        );
        return Ok(0);
    }
    match &xen {
        Ok(h) => {
            println!("Xen:          {}", h.xen_version);
            println!("CPUs:         {}", h.cpus);
            println!(
                "Memory:       {} total, {} free for VMs",
                kib(h.total_memory_kib),
                kib(h.free_memory_kib)
            );
        }
        Err(why) => println!("Xen:          none: {why}"),
    }
    println!(
        "VMs:          {} ({running} running, {} exited)",
        vms.len(),
        vms.len() - running
    );
    println!("Networks:     {networks}");
    println!("Pool:         none (VMs boot on demand)");
    println!(
        "Images:       {} ({})",
        usage.images.total,
        super::human_size(usage.images.size, 1000)
    );
    println!(
        "Volumes:      {} ({})",
        usage.volumes.total,
        super::human_size(usage.volumes.size, 1000)
    );
    match free_disk {
        Some(free) => println!(
            "State dir:    {} ({} free)",
            state_dir.display(),
            super::human_size(free, 1000)
        ),
        None => println!("State dir:    {}", state_dir.display()),
    }
    println!("Guest:        {}", guest.display());
    println!("hyperxl:      {}", env!("CARGO_PKG_VERSION"));
    Ok(0)
}
