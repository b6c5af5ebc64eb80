//! What hyperxl keeps on dom0's disk, counted as `docker system df` counts it: images
//! (their blobs), the read-only disks built from them, VMs (their records and console
//! logs) and volumes (the blocks their sparse files hold). "Active" means some VM record
//! refers to it; "reclaimable" is what `system prune -a --volumes` could free.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use hyperxl_image::digest::Digest;
use hyperxl_image::{Reference, Store};

use crate::vm::state::{VmState, VmStore};
use crate::volume::store::VolumeStore;

/// One row of `system df`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// How many there are.
    pub total: u64,
    /// How many a VM record refers to (VMs: how many run).
    pub active: u64,
    /// Bytes on dom0's disk.
    pub size: u64,
    /// Bytes that removing the inactive ones would free.
    pub reclaimable: u64,
}

/// The four rows of `system df`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Image records, by image id; sizes are their blob files.
    pub images: Row,
    /// Read-only rootfs disks built from images.
    pub disks: Row,
    /// VM records with their console logs.
    pub vms: Row,
    /// Volumes, by the blocks their files hold.
    pub volumes: Row,
}

/// Counts everything under `vm_store`'s state dir, against the VM records in `vms`.
pub fn measure(vm_store: &VmStore, vms: &[VmState]) -> anyhow::Result<Usage> {
    let state_dir = vm_store.state_dir();
    let store = Store::open(state_dir)?;
    let records = store.records()?;
    let active_ids = images_in_use(&store, vms);
    let ids: HashSet<&Digest> = records.iter().map(|r| &r.id).collect();
    let kept_blobs: HashSet<String> = records
        .iter()
        .filter(|r| active_ids.contains(&r.id))
        .flat_map(|r| {
            std::iter::once(r.id.hex().to_string())
                .chain(r.manifest.iter().map(|d| d.hex().to_string()))
                .chain(r.layers.iter().map(|l| l.digest.hex().to_string()))
        })
        .collect();
    let mut u = Usage::default();
    u.images.total = ids.len() as u64;
    u.images.active = ids.iter().filter(|d| active_ids.contains(*d)).count() as u64;
    for (name, len) in files(&store.root().join("blobs/sha256")) {
        u.images.size += len;
        if !kept_blobs.contains(&name) {
            u.images.reclaimable += len;
        }
    }
    let active_hex: HashSet<&str> = active_ids.iter().map(|d| d.hex()).collect();
    for (name, len) in files(&store.root().join("disks")) {
        if name.ends_with(".lock") {
            continue;
        }
        u.disks.total += 1;
        u.disks.size += len;
        if active_hex.contains(name.split('.').next().unwrap_or_default()) {
            u.disks.active += 1;
        } else {
            u.disks.reclaimable += len;
        }
    }
    for v in vms {
        let len = tree_size(&vm_store.dir(&v.id));
        u.vms.total += 1;
        u.vms.size += len;
        if v.status.can_stop() {
            u.vms.active += 1;
        } else {
            u.vms.reclaimable += len;
        }
    }
    let volumes = VolumeStore::open(state_dir)?;
    for vol in volumes.list()? {
        let len = volumes.allocated(&vol.name);
        u.volumes.total += 1;
        u.volumes.size += len;
        if crate::volume::users(vms, &vol.name).is_empty() {
            u.volumes.reclaimable += len;
        } else {
            u.volumes.active += 1;
        }
    }
    Ok(u)
}

/// The ids of the stored images that VM records name (what `system prune -a` keeps).
pub fn images_in_use(store: &Store, vms: &[VmState]) -> HashSet<Digest> {
    vms.iter()
        .filter_map(|v| v.image.parse::<Reference>().ok())
        .filter_map(|r| store.record(&r).ok())
        .map(|rec| rec.id)
        .collect()
}

/// The regular files directly in `dir`: name and length (none if it does not exist).
fn files(dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), m.len()))
        })
        .collect()
}

/// Bytes of the regular files under `dir`, symlinks not followed.
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let m = fs::symlink_metadata(e.path()).ok()?;
            Some(if m.is_dir() {
                tree_size(&e.path())
            } else if m.is_file() {
                m.len()
            } else {
                0
            })
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::state::Status;
    use crate::volume::{AttachedDisk, DiskKind};

    fn vm(id: &str, status: Status, volume: Option<&str>) -> VmState {
        let mut v = VmState::new(id.into(), format!("n{id}"), "busybox".into());
        v.status = status;
        v.monitor_pid = None;
        if let Some(name) = volume {
            v.disks.push(AttachedDisk {
                kind: DiskKind::Volume,
                name: name.into(),
                target: Some("/data".into()),
                readonly: false,
                vdev: "xvdb".into(),
                file: None,
                loop_device: None,
                size: None,
            });
        }
        v
    }

    /// Running VMs are active, exited ones reclaimable with their logs; a volume a
    /// record names is active whatever the VM's state, an unused one reclaimable.
    #[test]
    fn vms_and_volumes_are_counted_active_or_reclaimable() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let all = vec![
            vm("aa01", Status::Running, Some("used")),
            vm("bb02", Status::Exited, None),
        ];
        for v in &all {
            vms.create(v).unwrap();
        }
        vms.write_file("bb02", "console.log", &[b'x'; 5000])
            .unwrap();
        let volumes = VolumeStore::open(dir.path()).unwrap();
        for name in ["used", "idle"] {
            volumes
                .ensure(name, 64 << 20, false, Default::default())
                .unwrap();
        }
        let u = measure(&vms, &all).unwrap();
        assert_eq!((u.vms.total, u.vms.active), (2, 1));
        assert!(
            u.vms.reclaimable >= 5000 && u.vms.reclaimable < u.vms.size,
            "{u:?}"
        );
        assert_eq!((u.volumes.total, u.volumes.active), (2, 1));
        assert_eq!(u.volumes.reclaimable, volumes.allocated("idle"));
        assert!(u.volumes.size > u.volumes.reclaimable, "{u:?}");
        assert_eq!(u.images, Row::default());
        assert_eq!(u.disks, Row::default());
    }
}
