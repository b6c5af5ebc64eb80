//! `hyperxl stop [-t SECS] VM...`: stop the app gracefully (SIGTERM inside the guest),
//! destroying the domain if it has not ended after the timeout.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use hyperxl_core::vm::control;
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the app to end before destroying the domain.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Stops each VM in turn; an exited VM is already stopped.
pub fn run(state_dir: &Path, args: StopArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    for which in &args.vms {
        let vm = vms.find(which)?;
        if vm.status.can_stop() {
            control::stop(&vms, &host, &vm, Duration::from_secs(args.time))?;
        }
        println!("{which}");
    }
    Ok(0)
}
