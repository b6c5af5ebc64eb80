//! Makes recorded state agree with what Xen really runs. A VM whose watching process
//! (the attached `run` or its monitor) is gone is judged by its domain alone: gone or
//! ended means exited — with the exit code the guest reported, if it did — and an ended
//! domain nobody is left to tear down is destroyed here. So is a domain whose watcher
//! died before unpausing it: it would otherwise sit paused, holding its memory, until
//! someone ran `rm -f`.

use super::disk;
use super::state::{self, Status, VmState, VmStore};

/// What Xen says about a VM's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainFact {
    /// No such domain.
    Gone,
    /// Shut down or dying; the exit code the guest reported, if any.
    Ended {
        /// From the guest's `exit-code` key.
        exit_code: Option<i32>,
    },
    /// Running or paused.
    Alive,
    /// Paused (or running a pooled VM's init that waits for its spec), and the guest
    /// never wrote `started`: a domain only its watcher would have started.
    NeverStarted,
}

/// Whether a hyperxl process with this pid exists. The name check matters after a
/// reboot or a long time: pids are reused, and an unrelated process must not pass for a
/// VM's watcher.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.starts_with("hyperxl"))
}

/// Whether nobody watches this VM any more.
pub fn unwatched(vm: &VmState) -> bool {
    vm.monitor_pid.is_none_or(|p| !alive(p))
}

/// Records the end of every unwatched VM whose domain is gone or ended; `probe` asks
/// Xen about a domid, `find` looks a domain up by name (a watcher killed while libxl
/// was still building the domain never learnt its domid), `destroy` tears down an
/// ended domain and says whether it is gone (if not, the VM is left as it is, for the
/// next reconcile to try again). Returns every VM, updated.
pub fn reconcile(
    vms: &VmStore,
    probe: impl Fn(u32, &str) -> DomainFact,
    find: impl Fn(&str) -> Option<u32>,
    destroy: impl Fn(u32, &str) -> bool,
) -> Result<Vec<VmState>, state::StateError> {
    let mut out = Vec::new();
    for vm in vms.list()? {
        if !vm.status.can_stop() || !unwatched(&vm) {
            out.push(vm);
            continue;
        }
        let name = vm.domain_name();
        let domid = vm.domid.or_else(|| find(&name));
        let mut fact = domid.map_or(DomainFact::Gone, |d| probe(d, &name));
        if fact == DomainFact::NeverStarted {
            if vm.status == Status::Created {
                if domid.is_some_and(|d| !destroy(d, &name)) {
                    out.push(vm);
                    continue;
                }
            } else {
                // Unpaused once and paused since (`xl pause`): the operator's business.
                fact = DomainFact::Alive;
            }
        }
        if fact == DomainFact::Alive {
            if vm.domid.is_none() {
                // Record the domain, so `stop`, `kill` and `rm -f` reach it.
                match vms.update(&vm.id, |vm| vm.domid = domid) {
                    Ok(vm) => out.push(vm),
                    Err(state::StateError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            } else {
                out.push(vm);
            }
            continue;
        }
        if let (Some(domid), DomainFact::Ended { .. }) = (domid, fact) {
            if !destroy(domid, &name) {
                // Still there: recording an end now would leak its memory for good.
                out.push(vm);
                continue;
            }
        }
        let updated = vms.update(&vm.id, |vm| {
            // Someone else may have recorded the end meanwhile.
            if !vm.status.can_stop() {
                return;
            }
            // The domain is gone: autoclear frees the loop device once blkback lets go.
            // Only one left bound by an attach cut short (old kernels) is ours to free,
            // and the record must not point at a device that may be reused.
            let mut still_bound = Vec::new();
            for (dev, file) in vm.loops() {
                let _ = disk::detach(&dev, &vm.id, file.as_deref());
                if disk::still_ours(&dev, &vm.id, file.as_deref()) {
                    still_bound.push(dev);
                }
            }
            let outcome = match fact {
                DomainFact::Ended { exit_code: Some(c) } => Ok(c),
                DomainFact::NeverStarted => Err(
                    "its watcher died before the VM started; the paused domain was destroyed"
                        .into(),
                ),
                _ => Err(vm
                    .error
                    .clone()
                    .unwrap_or_else(|| "the VM ended without reporting an exit code".into())),
            };
            vm.record_end(outcome, &still_bound);
        });
        if let Ok(vm) = &updated {
            // The domain is gone: so must its rules, its address and its private disks.
            crate::net::detach(vms.state_dir(), vm);
            crate::volume::remove_private_files(vm);
        }
        match updated {
            // Nobody is left to honour `--rm`: do it here, leaving the exit code.
            Ok(vm) if vm.auto_remove && !vm.status.can_stop() => {
                let _ = vms.bury(&vm);
                vms.remove(&vm.id)?;
                crate::volume::remove_anonymous(vms.state_dir(), vms, &vm);
            }
            Ok(vm) => out.push(vm),
            // Removed meanwhile (`rm`, `--rm`): nothing to show.
            Err(state::StateError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::state::VmState;

    fn running(id: &str, name: &str, monitor: u32) -> VmState {
        let mut vm = VmState::new(id.into(), name.into(), "busybox".into());
        vm.command = vec!["sleep".into(), "9".into()];
        vm.status = Status::Running;
        vm.domid = Some(7);
        vm.monitor_pid = Some(monitor);
        vm.created_at = 1;
        vm
    }

    #[test]
    fn a_vm_whose_monitor_and_domain_are_gone_has_exited() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        // u32::MAX is no valid pid: that monitor is gone.
        vms.create(&running("aa01", "dead", u32::MAX)).unwrap();
        vms.create(&running("bb02", "watched", std::process::id()))
            .unwrap();
        let list = reconcile(&vms, |_, _| DomainFact::Gone, |_| None, |_, _| true).unwrap();
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
        reconcile(
            &vms,
            |domid, _| {
                if domid == 7 {
                    DomainFact::Alive
                } else {
                    DomainFact::Gone
                }
            },
            |_| None,
            |_, _| panic!("nothing to destroy"),
        )
        .unwrap();
        assert_eq!(vms.load("aa01").unwrap().status, Status::Running);
    }

    #[test]
    fn an_ended_domain_is_destroyed_and_its_exit_code_kept() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        vms.create(&running("aa01", "ended", u32::MAX)).unwrap();
        let destroyed = std::cell::Cell::new(None);
        reconcile(
            &vms,
            |_, _| DomainFact::Ended { exit_code: Some(3) },
            |_| None,
            |d, _| {
                destroyed.set(Some(d));
                true
            },
        )
        .unwrap();
        let vm = vms.load("aa01").unwrap();
        assert_eq!(
            (vm.status, vm.exit_code, vm.error),
            (Status::Exited, Some(3), None)
        );
        assert_eq!(destroyed.get(), Some(7));
    }

    #[test]
    fn a_killed_vm_that_is_gone_exited_137() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut vm = running("aa01", "killed", u32::MAX);
        vm.killed = true;
        vms.create(&vm).unwrap();
        reconcile(&vms, |_, _| DomainFact::Gone, |_| None, |_, _| true).unwrap();
        let vm = vms.load("aa01").unwrap();
        assert_eq!((vm.exit_code, vm.error), (Some(137), None));
    }

    #[test]
    fn a_domain_still_being_built_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut vm = running("aa01", "early", u32::MAX);
        vm.status = Status::Created;
        vm.domid = None;
        vms.create(&vm).unwrap();
        let list = reconcile(
            &vms,
            |d, _| {
                if d == 9 {
                    DomainFact::Alive
                } else {
                    DomainFact::Gone
                }
            },
            |name| (name == "hyperxl-early").then_some(9),
            |_, _| panic!("nothing to destroy"),
        )
        .unwrap();
        assert_eq!((list[0].status, list[0].domid), (Status::Created, Some(9)));
        assert_eq!(vms.load("aa01").unwrap().domid, Some(9), "saved");
    }

    #[test]
    fn an_unwatched_rm_vm_is_removed_once_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut vm = running("aa01", "temp", u32::MAX);
        vm.auto_remove = true;
        vms.create(&vm).unwrap();
        let list = reconcile(
            &vms,
            |_, _| DomainFact::Ended { exit_code: Some(4) },
            |_| None,
            |_, _| true,
        )
        .unwrap();
        assert!(list.is_empty(), "{list:?}");
        assert!(vms.list().unwrap().is_empty());
        assert_eq!(vms.exit_of_removed("aa01"), Some(Ok(4)));
    }

    #[test]
    fn defect6_reconcile_clears_the_recorded_loop_device() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut vm = running("aa01", "dead", u32::MAX);
        // A device that may be another VM's by now: no later command may act on it.
        vm.loop_device = Some("/dev/no-such-loop7".into());
        vm.disk_file = Some(dir.path().join("disk.img"));
        vms.create(&vm).unwrap();
        reconcile(&vms, |_, _| DomainFact::Gone, |_| None, |_, _| true).unwrap();
        let vm = vms.load("aa01").unwrap();
        assert_eq!((vm.status, vm.loop_device), (Status::Exited, None));
    }

    #[test]
    fn defect7_a_paused_domain_whose_watcher_died_before_start_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut vm = running("aa01", "stuck", u32::MAX);
        vm.status = Status::Created;
        vms.create(&vm).unwrap();
        // Started once, paused since by the operator: left alone.
        let mut paused = running("bb02", "paused", u32::MAX);
        paused.domid = Some(8);
        vms.create(&paused).unwrap();
        let destroyed = std::cell::RefCell::new(Vec::new());
        reconcile(
            &vms,
            |_, _| DomainFact::NeverStarted,
            |_| None,
            |d, name| {
                destroyed.borrow_mut().push((d, name.to_owned()));
                true
            },
        )
        .unwrap();
        assert_eq!(*destroyed.borrow(), [(7, "hyperxl-stuck".to_owned())]);
        let vm = vms.load("aa01").unwrap();
        assert_eq!(
            (vm.status, vm.domid, vm.exit_code),
            (Status::Exited, None, None)
        );
        assert!(
            vm.error
                .as_deref()
                .unwrap()
                .contains("watcher died before the VM started"),
            "{:?}",
            vm.error
        );
        assert_eq!(vms.load("bb02").unwrap().status, Status::Running);
    }

    /// From a review: a failed destroy was recorded as an end, and the domain (with its
    /// memory) was never looked at again.
    #[test]
    fn a_domain_that_could_not_be_destroyed_is_tried_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut vm = running("aa01", "stuck", u32::MAX);
        vm.status = Status::Created;
        vms.create(&vm).unwrap();
        vms.create(&running("bb02", "ended", u32::MAX)).unwrap();
        let probe = |d: u32, _: &str| {
            if d == 7 {
                DomainFact::NeverStarted
            } else {
                DomainFact::Ended { exit_code: Some(3) }
            }
        };
        vms.update("bb02", |v| v.domid = Some(9)).unwrap();
        reconcile(&vms, probe, |_| None, |_, _| false).unwrap();
        assert_eq!(vms.load("aa01").unwrap().status, Status::Created);
        assert_eq!(vms.load("bb02").unwrap().status, Status::Running);
        reconcile(&vms, probe, |_| None, |_, _| true).unwrap();
        assert_eq!(vms.load("aa01").unwrap().status, Status::Exited);
        assert_eq!(vms.load("bb02").unwrap().exit_code, Some(3));
    }
}
