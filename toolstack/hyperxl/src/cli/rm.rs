//! `hyperxl rm [-f] VM...`: remove exited VMs (with `-f`, destroy running ones first).

use std::path::Path;

use anyhow::bail;
use clap::Args;
use libxl::DomainOps;

use crate::cli::ps::domain_checker;
use crate::vm::reconcile::reconcile;
use crate::vm::state::VmStore;

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
    reconcile(&vms, domain_checker())?;
    for which in &args.vms {
        let vm = vms.find(which)?;
        if !vm.status.can_remove() {
            if !args.force {
                bail!("VM {} is running: stop it first or use rm -f", vm.name);
            }
            if let Some(domid) = vm.domid {
                let ctx = libxl::Context::new()?;
                if let Err(e) = ctx.destroy(libxl::DomId(domid)) {
                    if !e.is_domain_not_found() {
                        return Err(e.into());
                    }
                }
            }
        }
        vms.remove(&vm.id)?;
        println!("{}", vm.name);
    }
    Ok(0)
}
