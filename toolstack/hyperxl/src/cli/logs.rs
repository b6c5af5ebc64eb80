//! `hyperxl logs [-f] VM`: the VM's console as recorded by its watcher.

use std::path::Path;

use clap::Args;

use hyperxl_core::vm::logs::print_log;
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the log until the VM exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Include the guest kernel's and the init's own lines.
    #[arg(long)]
    pub debug: bool,
    /// VM name or id.
    pub vm: String,
}

/// Prints the log (and follows it with `-f`).
pub fn run(state_dir: &Path, args: LogsArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let vm = vms.find(&args.vm)?;
    print_log(&vms, &vm.id, args.debug, args.follow, false)?;
    Ok(0)
}
