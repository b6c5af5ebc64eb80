//! Acting on a VM some other process watches: stop, kill, wait. Each records what it
//! asked for under the VM's lock, acts through Xen, and then waits for the watcher (or,
//! when the watcher is gone, reconciliation) to record the end.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::host::{reconcile_all, Host};
use super::state::{StateError, VmState, VmStore};

/// How long a watcher gets to record an end after the domain is gone.
const RECORD_GRACE: Duration = Duration::from_secs(10);

/// How often a waiter reads the record (the watcher writes the end there) ...
const RECORD_POLL: Duration = Duration::from_millis(200);
/// ... and how often it reconciles every VM with Xen (a VM whose watcher is gone): that
/// probes every domain, which on a small dom0 with many VMs takes CPU from the guests.
const RECONCILE_POLL: Duration = Duration::from_secs(2);

/// Polls until VM `id` has exited (`Some`) or was removed (`None`), up to `limit`.
pub fn wait_exited(
    vms: &VmStore,
    host: &Host,
    id: &str,
    limit: Option<Duration>,
) -> anyhow::Result<Option<VmState>> {
    let ended = wait_all_exited(vms, host, &[id.to_string()], limit)?;
    match ended.into_iter().next() {
        Some(Ok(vm)) => Ok(vm),
        _ => bail!("VM {id} did not exit in time"),
    }
}

/// Polls until each of `ids` has exited (`Some`) or was removed (`None`), up to `limit`;
/// one result per id, in order: `Err(())` for a VM still running at the limit.
pub fn wait_all_exited(
    vms: &VmStore,
    host: &Host,
    ids: &[String],
    limit: Option<Duration>,
) -> anyhow::Result<Vec<Result<Option<VmState>, ()>>> {
    let start = Instant::now();
    let mut last_reconcile: Option<Instant> = None;
    let mut ended: Vec<Option<Option<VmState>>> = vec![None; ids.len()];
    loop {
        if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_POLL) {
            reconcile_all(vms, host)?;
            last_reconcile = Some(Instant::now());
        }
        for (id, end) in ids.iter().zip(ended.iter_mut()) {
            if end.is_some() {
                continue;
            }
            match vms.load(id) {
                Ok(vm) if !vm.status.can_stop() => *end = Some(Some(vm)),
                Ok(_) => {}
                Err(StateError::NotFound(_)) => *end = Some(None),
                Err(e) => return Err(e.into()),
            }
        }
        let timed_out = limit.is_some_and(|l| start.elapsed() > l);
        if ended.iter().all(Option::is_some) || timed_out {
            return Ok(ended.into_iter().map(|e| e.ok_or(())).collect());
        }
        std::thread::sleep(RECORD_POLL);
    }
}

/// Marks the VM killed (an end without an exit code is then 137, and no restart policy
/// applies) and destroys its domain, if it has one yet; returns the updated record.
pub fn destroy(vms: &VmStore, host: &Host, vm: &VmState) -> anyhow::Result<VmState> {
    let vm = match vms.update(&vm.id, |vm| {
        vm.killed = true;
        vm.stopped_by_user = true;
    }) {
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
    stop_all(vms, host, std::slice::from_ref(vm), timeout)
}

/// [`stop`] for several VMs at once, as `docker stop` does: every stop is asked for
/// first, then all are waited for together (one `timeout` for all, not one each), and
/// those still running then are destroyed.
pub fn stop_all(
    vms: &VmStore,
    host: &Host,
    list: &[VmState],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut waiting = Vec::new();
    for vm in list {
        if let Some(vm) = ask_to_stop(vms, host, vm)? {
            waiting.push(vm);
        }
    }
    let ids: Vec<String> = waiting.iter().map(|v| v.id.clone()).collect();
    let ended = wait_all_exited(vms, host, &ids, Some(timeout))?;
    for (vm, end) in waiting.iter().zip(ended) {
        if end.is_err() {
            kill(vms, host, vm)?;
        }
    }
    Ok(())
}

/// Records the stop and asks the guest; returns the VM to wait for, or None when it
/// could not be asked and was killed instead.
fn ask_to_stop(vms: &VmStore, host: &Host, vm: &VmState) -> anyhow::Result<Option<VmState>> {
    // A stop must work on a full state disk too: the record is then only a wish.
    let vm = match vms.update(&vm.id, |vm| vm.stopped_by_user = true) {
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
        kill(vms, host, &vm)?;
        return Ok(None);
    };
    if !host.request_stop(domid, &vm.domain_name()) {
        kill(vms, host, &vm)?;
        return Ok(None);
    }
    Ok(Some(vm))
}
