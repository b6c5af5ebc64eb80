//! `hyperxl pause|unpause VM...`: stop scheduling a running VM's vCPUs, or let them run
//! again (Xen's pause, as `xl pause` does; `docker pause` freezes a container the same
//! way from the outside). Memory, devices and the watcher stay; `ps` shows `paused`.

use std::path::Path;

use clap::Args;

use hyperxl_core::vm::control;
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl pause` and `hyperxl unpause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Pauses (`paused`) or unpauses each VM; one that is not running is an error.
pub fn run(state_dir: &Path, args: PauseArgs, paused: bool) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    for which in &args.vms {
        let vm = vms.find(which)?;
        control::set_paused(&host, &vm, paused)?;
        println!("{which}");
    }
    Ok(0)
}
