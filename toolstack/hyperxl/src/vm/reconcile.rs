//! Makes recorded state agree with what is really there: a VM recorded as running
//! whose watching process is gone and whose domain no longer exists has exited.

use super::state::{self, Status, VmState, VmStore};

/// Whether a process with this pid exists.
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Marks VMs whose monitor died as exited; `domain_exists` asks Xen about a domid.
pub fn reconcile(
    vms: &VmStore,
    domain_exists: impl Fn(u32) -> bool,
) -> Result<Vec<VmState>, state::StateError> {
    let mut out = Vec::new();
    for mut vm in vms.list()? {
        let monitor_gone = vm.monitor_pid.is_none_or(|p| !alive(p));
        let domain_gone = vm.domid.is_none_or(|d| !domain_exists(d));
        if vm.status.can_stop() && monitor_gone && domain_gone {
            let _lock = vms.lock_vm(&vm.id)?;
            vm.status = Status::Exited;
            vm.domid = None;
            vm.finished_at = Some(state::now());
            if vm.exit_code.is_none() {
                vm.error
                    .get_or_insert_with(|| "the VM ended without reporting an exit code".into());
            }
            vms.save(&vm)?;
        }
        out.push(vm);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::state::VmState;

    fn running(id: &str, name: &str, monitor: u32) -> VmState {
        VmState {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            command: vec!["sleep".into(), "9".into()],
            kind: "pvh".into(),
            status: Status::Running,
            domid: Some(7),
            exit_code: None,
            error: None,
            loop_device: None,
            monitor_pid: Some(monitor),
            auto_remove: false,
            created_at: 1,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_vm_whose_monitor_and_domain_are_gone_has_exited() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        // u32::MAX is no valid pid: that monitor is gone.
        vms.create(&running("aa01", "dead", u32::MAX)).unwrap();
        vms.create(&running("bb02", "watched", std::process::id()))
            .unwrap();
        let list = reconcile(&vms, |_| false).unwrap();
        let dead = list.iter().find(|v| v.name == "dead").unwrap();
        assert_eq!(dead.status, Status::Exited);
        assert!(dead.error.as_deref().unwrap().contains("without reporting"));
        assert_eq!(vms.load("aa01").unwrap().status, Status::Exited, "saved");
        // A VM whose monitor lives is left alone.
        assert_eq!(vms.load("bb02").unwrap().status, Status::Running);
    }

    #[test]
    fn a_vm_whose_domain_still_exists_keeps_running() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        vms.create(&running("aa01", "orphan", u32::MAX)).unwrap();
        reconcile(&vms, |domid| domid == 7).unwrap();
        assert_eq!(vms.load("aa01").unwrap().status, Status::Running);
    }
}
