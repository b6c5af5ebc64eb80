//! `system prune`: freeing what no VM needs, as `docker system prune` does: exited VMs,
//! networks without a VM (never the default one), with `volumes` anonymous volumes no
//! VM uses, with `images` images no VM was made from, and always the blobs and disks
//! no image refers to.

use std::path::Path;

use hyperxl_image::Store;

use crate::net::store::{NetStore, DEFAULT_NETWORK};
use crate::usage;
use crate::vm::control::{self, Removal};
use crate::vm::host::{reconcile_all, Host};
use crate::vm::state::{Status, VmStore};
use crate::volume::store::VolumeStore;

/// What to prune besides exited VMs, unused networks and unreferenced blobs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Images no VM was made from (`-a`).
    pub images: bool,
    /// Anonymous volumes no VM uses (`--volumes`).
    pub volumes: bool,
}

/// What a prune removed.
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    /// Ids of the exited VMs removed.
    pub vms: Vec<String>,
    /// Networks removed.
    pub networks: Vec<String>,
    /// Volumes removed.
    pub volumes: Vec<String>,
    /// Images untagged (as users name them).
    pub images: Vec<String>,
    /// Bytes freed on dom0's disk.
    pub freed: u64,
}

/// Prunes the state dir through `host`'s view of Xen (each VM through
/// [`control::remove`], so its loop devices, leases and record all go).
pub fn prune(state_dir: &Path, host: &Host, opts: PruneOptions) -> anyhow::Result<Pruned> {
    let vm_store = VmStore::open(state_dir)?;
    let vms = reconcile_all(&vm_store, host)?;
    let mut pruned = Pruned::default();
    for vm in vms.iter().filter(|v| v.status == Status::Exited) {
        let size = usage::tree_size(&vm_store.dir(&vm.id));
        control::remove(&vm_store, host, vm, Removal::default())?;
        pruned.freed += size;
        pruned.vms.push(vm.id.clone());
    }
    let vms = reconcile_all(&vm_store, host)?;

    // Networks without a VM (leases of ended VMs are swept first), never the default.
    crate::net::sweep(&vm_store, &vms);
    let nets = NetStore::open(state_dir)?;
    for net in nets.list()? {
        let unused = nets.leases(&net.name).is_ok_and(|l| l.is_empty());
        if net.name != DEFAULT_NETWORK && unused {
            crate::net::remove_network(state_dir, &net.name)?;
            pruned.networks.push(net.name);
        }
    }

    if opts.volumes {
        let store = VolumeStore::open(state_dir)?;
        for (name, bytes) in crate::volume::prune(&store, &vm_store, &vms, false)? {
            pruned.volumes.push(name);
            pruned.freed += bytes;
        }
    }

    let store = Store::open(state_dir)?;
    if opts.images {
        let used = usage::images_in_use(&store, &vms);
        for rec in store.records()? {
            if !used.contains(&rec.id) {
                store.remove(&rec.reference)?;
                pruned.images.push(rec.reference.familiar());
            }
        }
    }
    pruned.freed += store.prune()?.bytes;
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::state::VmState;

    #[test]
    fn exited_vms_go_and_running_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let mut ended = VmState::new("aa01".into(), "ended".into(), "busybox".into());
        ended.status = Status::Exited;
        ended.monitor_pid = None;
        vms.create(&ended).unwrap();
        std::fs::write(vms.dir(&ended.id).join("console.log"), vec![b'x'; 4096]).unwrap();
        let mut running = VmState::new("bb02".into(), "running".into(), "busybox".into());
        running.status = Status::Running;
        // Its watcher is this test: alive, so reconcile leaves the VM running.
        running.monitor_pid = Some(std::process::id());
        vms.create(&running).unwrap();

        // No Xen here: the view says every domain is gone, which no running VM with a
        // live watcher is reconciled by.
        let pruned = prune(dir.path(), &Host::connect(), PruneOptions::default()).unwrap();
        assert_eq!(pruned.vms, ["aa01"]);
        assert!(pruned.freed >= 4096, "{pruned:?}");
        let left: Vec<String> = vms.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(left, ["running"]);
        // Nothing left to prune the second time.
        let again = prune(dir.path(), &Host::connect(), PruneOptions::default()).unwrap();
        assert!(
            again.vms.is_empty() && again.networks.is_empty(),
            "{again:?}"
        );
    }
}
