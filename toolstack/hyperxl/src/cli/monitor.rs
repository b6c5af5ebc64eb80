//! `hyperxl monitor ID` (hidden): the detached watcher `run -d` starts for a VM.

use std::path::Path;

use clap::Args;

use hyperxl_core::vm::launch;
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The VM's id.
    pub id: String,
}

/// Watches the VM to its end; the outcome is in the VM's state, not in this exit code.
pub fn run(state_dir: &Path, args: MonitorArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    launch::monitor_main(&vms, &args.id)?;
    Ok(0)
}
