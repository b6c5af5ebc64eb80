//! `hyperxl kill VM...`: destroy a running VM's domain at once (exit code 137).

use std::path::Path;

use anyhow::bail;
use clap::Args;

use hyperxl_core::vm::control;
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

/// Arguments of `hyperxl kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Kills each VM; one that is not running is an error, as with Docker.
pub fn run(state_dir: &Path, args: KillArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    for which in &args.vms {
        let vm = vms.find(which)?;
        if !vm.status.can_stop() {
            bail!("VM {} is not running", vm.name);
        }
        control::kill(&vms, &host, &vm)?;
        println!("{which}");
    }
    Ok(0)
}
