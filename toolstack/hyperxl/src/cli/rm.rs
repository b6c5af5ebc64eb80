//! `hyperxl rm [-f] VM...`: remove exited VMs (with `-f`, destroy running ones first).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::vm::host::{reconcile_all, Host};
use crate::vm::reconcile::unwatched;
use crate::vm::state::VmStore;
use crate::vm::{control, disk};

/// Arguments of `hyperxl rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Destroy a running VM's domain first.
    #[arg(short, long)]
    pub force: bool,
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Removes the VMs; fails on the first that cannot be removed.
pub fn run(state_dir: &Path, args: RmArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    for which in &args.vms {
        let vm = vms.find(which)?;
        if vm.status.can_stop() {
            if !args.force {
                bail!("VM {} is running: stop it first or use rm -f", vm.name);
            }
            let vm = control::destroy(&vms, &host, &vm)?;
            if !unwatched(&vm) {
                // Let the watcher finish its record, so it does not write after us.
                let _ = control::wait_exited(&vms, &host, &vm.id, Some(Duration::from_secs(10)));
            }
        }
        // What a killed watcher could not tear down: the loop device.
        if let Ok(vm) = vms.load(&vm.id) {
            if let Some(dev) = &vm.loop_device {
                if !disk::wait_freed(dev, Duration::from_secs(3)) {
                    disk::detach(dev)?;
                }
            }
        }
        if !vms.remove_if(&vm.id, |now| args.force || !now.status.can_stop())? {
            bail!(
                "VM {} is running again: stop it first or use rm -f",
                vm.name
            );
        }
        println!("{which}");
    }
    Ok(0)
}
