//! `hyperxl rm [-f] VM...`: remove exited VMs (with `-f`, destroy running ones first).

use std::path::Path;

use anyhow::bail;
use clap::Args;

use hyperxl_core::vm::control;
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::{StateError, VmStore};

// Arguments of `hyperxl rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Destroy a running VM's domain first.
    #[arg(short, long)]
    pub force: bool,
    /// Remove the VM's anonymous volumes too (named volumes are kept).
    #[arg(short = 'v', long = "volumes")]
    pub volumes: bool,
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Removes the VMs (see [`control::remove`]); fails on the first that cannot be removed.
pub fn run(state_dir: &Path, args: RmArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    for which in &args.vms {
        let vm = match vms.find(which) {
            Ok(vm) => vm,
            Err(StateError::NotFound(_)) if args.force && control::remove_corrupt(&vms, which)? => {
                println!("{which}");
                continue;
            }
            Err(StateError::NotFound(_)) if !vms.corrupt_ids(which)?.is_empty() => {
                bail!("the record of VM {which} is corrupt: remove it with hyperxl rm -f {which}")
            }
            Err(e) => return Err(e.into()),
        };
        control::remove(
            &vms,
            &host,
            &vm,
            control::Removal {
                force: args.force,
                volumes: args.volumes,
            },
        )?;
        println!("{which}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperxl_core::vm::state::{Status, VmState};

    #[test]
    fn defect11_corrupt_state_json_is_skipped_and_rm_f_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut good = VmState::new("aa01".into(), "good".into(), "busybox".into());
        good.status = Status::Exited;
        good.monitor_pid = None;
        vms.create(&good).unwrap();
        let mut bad = good.clone();
        bad.id = "bb02ffffffffffff".into();
        bad.name = "bad".into();
        vms.create(&bad).unwrap();
        std::fs::write(vms.dir(&bad.id).join("state.json"), b"\0\0garbage").unwrap();
        let rm = |which: &str, force| {
            run(
                dir.path(),
                RmArgs {
                    force,
                    volumes: false,
                    vms: vec![which.into()],
                },
            )
        };
        // Other VMs still work around it.
        assert_eq!(rm("good", false).unwrap(), 0);
        assert!(!vms.dir("aa01").exists());
        // Without -f it is not found; with -f its id prefix removes it.
        assert!(rm("bb02", false).is_err());
        assert!(vms.dir(&bad.id).exists());
        assert_eq!(rm("bb02", true).unwrap(), 0);
        assert!(!vms.dir(&bad.id).exists());
    }
}
