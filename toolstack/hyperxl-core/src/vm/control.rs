//! Acting on a VM some other process watches: stop, kill, wait, remove. Each records
//! what it asked for under the VM's lock, acts through Xen, and then waits for the
//! watcher (or, when the watcher is gone, reconciliation) to record the end.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::disk;
use super::host::{reconcile_all, Host};
use super::reconcile::unwatched;
use super::state::{StateError, VmState, VmStore};

/// How long a watcher gets to record an end after the domain is gone.
const RECORD_GRACE: Duration = Duration::from_secs(10);

/// Polls until VM `id` has exited (`Some`) or was removed (`None`), up to `limit`.
pub fn wait_exited(
    vms: &VmStore,
    host: &Host,
    id: &str,
    limit: Option<Duration>,
) -> anyhow::Result<Option<VmState>> {
    let start = Instant::now();
    loop {
        reconcile_all(vms, host)?;
        match vms.load(id) {
            Ok(vm) if !vm.status.can_stop() => return Ok(Some(vm)),
            Ok(_) => {}
            Err(StateError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if limit.is_some_and(|l| start.elapsed() > l) {
            bail!("VM {id} did not exit in time");
        }
        // Not faster: on a small dom0 every round takes CPU from the guests.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Marks the VM killed (an end without an exit code is then 137, and no restart policy
/// applies) and destroys its domain, if it has one yet; returns the updated record.
pub fn destroy(vms: &VmStore, host: &Host, vm: &VmState) -> anyhow::Result<VmState> {
    let vm = match vms.update(&vm.id, VmState::mark_killed) {
        Ok(vm) => vm,
        // A full state disk must not keep a domain alive: destroy it, record later.
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "hyperxl: warning: could not record the kill ({e}); destroying anyway"
            );
            vm.clone()
        }
    };
    if let Some(domid) = vm.domid {
        host.destroy(domid, &vm.domain_name())?;
    }
    Ok(vm)
}

/// Destroys the VM's domain now and waits for its end to be recorded (exit code 137).
pub fn kill(vms: &VmStore, host: &Host, vm: &VmState) -> anyhow::Result<()> {
    let vm = destroy(vms, host, vm)?;
    wait_exited(vms, host, &vm.id, Some(RECORD_GRACE))?;
    Ok(())
}

/// Asks the app to stop (SIGTERM in the guest), and destroys the domain if it has not
/// ended after `timeout`.
pub fn stop(vms: &VmStore, host: &Host, vm: &VmState, timeout: Duration) -> anyhow::Result<()> {
    if super::pool::is_pooled(vm) {
        // A pooled VM runs no app to stop, and a request left in its xenstore must
        // never reach the run that would take it.
        return kill(vms, host, vm);
    }
    // A stop must work on a full state disk too: the record is then only a wish.
    let vm = match vms.update(&vm.id, VmState::mark_stopped_by_user) {
        Ok(vm) => vm,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "hyperxl: warning: could not record the stop ({e}); stopping anyway"
            );
            vm.clone()
        }
    };
    let Some(domid) = vm.domid else {
        // Still being built: nothing to ask yet, so it cannot be graceful.
        return kill(vms, host, &vm);
    };
    if !host.request_stop(domid, &vm.domain_name()) {
        return kill(vms, host, &vm);
    }
    // A paused app could not act on the request (`hyperxl pause`): it runs again. Not
    // one still being built (created), whose domain is paused until its launch is done.
    let paused = host
        .info(domid, &vm.domain_name())
        .is_some_and(|i| i.paused);
    if paused && vm.status == super::state::Status::Running {
        let _ = host.set_paused(domid, &vm.domain_name(), false);
    }
    match wait_exited(vms, host, &vm.id, Some(timeout)) {
        Ok(_) => Ok(()),
        Err(_) => kill(vms, host, &vm),
    }
}

/// How [`remove`] treats a VM that still runs, and its anonymous volumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Removal {
    /// Destroy a running VM's domain first (`rm -f`); without it a running VM is an
    /// error.
    pub force: bool,
    /// Remove its anonymous volumes too (`rm -v`; named volumes stay).
    pub volumes: bool,
}

/// `rm`: removes the VM's record, after destroying its domain if `how.force` says so
/// and tearing down what a killed watcher could not (the loop devices, the network).
pub fn remove(vms: &VmStore, host: &Host, vm: &VmState, how: Removal) -> anyhow::Result<()> {
    if vm.status.can_stop() {
        if !how.force {
            bail!("VM {} is running: stop it first or use rm -f", vm.name);
        }
        let vm = destroy(vms, host, vm)?;
        if !unwatched(&vm) {
            // Let the watcher finish its record, so it does not write after us.
            let _ = wait_exited(vms, host, &vm.id, Some(Duration::from_secs(10)));
        }
    }
    // What a killed watcher could not tear down: the loop device, the network.
    if let Ok(vm) = vms.load(&vm.id) {
        crate::net::detach(vms.state_dir(), &vm);
        for (dev, file) in vm.loops() {
            if !disk::wait_freed(&dev, Duration::from_secs(3)) {
                disk::detach(&dev, &vm.id, file.as_deref())?;
            }
        }
    }
    if !vms.remove_if(&vm.id, |now| how.force || !now.status.can_stop())? {
        bail!(
            "VM {} is running again: stop it first or use rm -f",
            vm.name
        );
    }
    if how.volumes {
        crate::volume::remove_anonymous(vms.state_dir(), vms, vm);
    }
    Ok(())
}

/// `rm -f` of a VM whose record does not parse, named by its id or an id prefix: its
/// directory goes (what it held cannot be known; its domain, if any, is left to
/// `xl destroy`). Returns whether `which` named one.
pub fn remove_corrupt(vms: &VmStore, which: &str) -> anyhow::Result<bool> {
    match vms.corrupt_ids(which)?.as_slice() {
        [] => Ok(false),
        [id] => {
            let _lock = vms.lock_vm(id)?;
            // Rewritten meanwhile (a live watcher's update)? Then it is not ours to drop.
            if !matches!(vms.load(id), Err(StateError::Corrupt { .. })) {
                bail!("the record of VM {id} changed meanwhile; run rm again");
            }
            vms.remove(id)?;
            Ok(true)
        }
        _ => Err(StateError::Ambiguous(which.to_owned()).into()),
    }
}

/// Pauses the domain of running VM `vm` (`paused`), or lets it run again: its vCPUs
/// stop being scheduled; its memory, devices and watcher stay.
pub fn set_paused(host: &Host, vm: &VmState, paused: bool) -> anyhow::Result<()> {
    let running = vm.domid.filter(|_| vm.status.can_stop());
    match running {
        Some(domid) if host.set_paused(domid, &vm.domain_name(), paused)? => Ok(()),
        _ => bail!("VM {} is not running", vm.name),
    }
}
