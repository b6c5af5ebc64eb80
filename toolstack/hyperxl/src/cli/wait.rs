//! `hyperxl wait VM...`: block until each VM exits, then print its exit code.

use std::path::Path;

use anyhow::bail;
use clap::Args;

use hyperxl_core::vm::control;
use hyperxl_core::vm::host::Host;
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Prints one exit code per VM, in order.
pub fn run(state_dir: &Path, args: WaitArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    for which in &args.vms {
        let vm = vms.find(which)?;
        match control::wait_exited(&vms, &host, &vm.id, None)? {
            Some(vm) => match (vm.exit_code, vm.error) {
                (Some(code), _) => println!("{code}"),
                (None, Some(e)) => bail!("VM {} ended without an exit code: {e}", vm.name),
                (None, None) => bail!("VM {} ended without an exit code", vm.name),
            },
            // Removed as it exited (`--rm`): it left its exit code behind.
            None => match vms.exit_of_removed(&vm.id) {
                Some(Ok(code)) => println!("{code}"),
                Some(Err(e)) => bail!("VM {} ended without an exit code: {e}", vm.name),
                None => bail!("VM {} was removed before it exited", vm.name),
            },
        }
    }
    Ok(0)
}
