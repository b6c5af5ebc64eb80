//! A VM's storage beyond its image: named and anonymous volumes (ext4 files dom0 made),
//! read-only snapshots of dom0 directories (squashfs), a scratch disk for the writable
//! layer, and tmpfs.
//!
//! Each disk is an extra `xvd` device on the same fast path as the rootfs (a loop device
//! hyperxl binds itself, `hyperxl-block` as the hotplug step). The rules (see
//! docs/volumes.md):
//! - dom0 never mounts a filesystem a guest has written; it makes empty ones (mkfs) and
//!   read-only images of data it trusts (`mksquashfs` of a directory, which stores
//!   symlinks as symlinks and never follows them).
//! - A volume is attached read-write to at most one VM that exists (created or running),
//!   and never read-only beside a read-write user: the claim is the VM's record, checked
//!   and written under the VM store's lock, and released when the VM's end is recorded.

pub mod request;
pub mod store;
pub mod transfer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use hyperxl_contract::mounts::{Mount, Source};
use hyperxl_contract::{Disk as SpecDisk, Spec};
use serde::{Deserialize, Serialize};

use crate::vm::state::{VmState, VmStore};
use request::{StorageRequest, VolumeArg};
use store::{VolumeError, VolumeStore};

/// What an extra disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// A named volume.
    Volume,
    /// A volume made for the image's `VOLUME` entry or a `-v /path`.
    Anonymous,
    /// A read-only snapshot of a dom0 directory, private to the VM.
    Snapshot,
    /// The writable layer's disk (`--storage-opt size=`), private to the VM.
    Scratch,
    /// A raw tar stream disk of `volume export`/`import`; its owner removes it.
    Stream,
}

/// One extra disk of a VM, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedDisk {
    /// What it is.
    pub kind: DiskKind,
    /// The volume's name; the host directory of a snapshot; `scratch`.
    pub name: String,
    /// Where the guest mounts it (none for the scratch disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Attached read-only.
    pub readonly: bool,
    /// Its device in the guest, e.g. `xvdb`.
    pub vdev: String,
    /// The file behind it, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The loop device while the domain may hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_device: Option<PathBuf>,
    /// Size in bytes of a scratch disk (or of a volume made for this VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl AttachedDisk {
    /// Whether it is a volume (named or anonymous) called `name`.
    pub fn is_volume(&self, name: &str) -> bool {
        matches!(self.kind, DiskKind::Volume | DiskKind::Anonymous) && self.name == name
    }
}

/// What `run` decided about storage: the disks to attach and the guest's own mounts.
#[derive(Debug, Clone, Default)]
pub struct StoragePlan {
    /// The extra disks, in device order (`xvdb` first).
    pub disks: Vec<AttachedDisk>,
    /// tmpfs mounts.
    pub tmpfs: Vec<Mount>,
    /// `--read-only`.
    pub read_only: bool,
    /// Labels for volumes made by this run (a deployment's name).
    pub volume_labels: BTreeMap<String, String>,
}

/// The extra disks' device names: `xvdb` .. `xvdz`.
fn vdev(i: usize) -> Option<String> {
    let c = b'b'.checked_add(u8::try_from(i).ok()?)?;
    (c <= b'z').then(|| format!("xvd{}", c as char))
}

/// A fresh anonymous volume name (32 hex digits).
fn anonymous_name() -> String {
    format!(
        "{}{}",
        crate::vm::state::new_id(),
        crate::vm::state::new_id()
    )
}

/// Works out the disks and mounts of `req` plus the image's `VOLUME` entries (each gets
/// an anonymous volume unless the user mounted something there), checking everything
/// that can be checked before anything exists: names, targets, host directories, and
/// that no running VM holds a requested volume in a conflicting way.
pub fn plan(
    vms: &VmStore,
    req: &StorageRequest,
    image_volumes: &[String],
) -> anyhow::Result<StoragePlan> {
    let mut disks = Vec::new();
    let mut targets = std::collections::BTreeSet::new();
    let add_target = |targets: &mut std::collections::BTreeSet<String>, t: &str| {
        if !targets.insert(t.to_string()) {
            bail!("two mounts on {t}");
        }
        Ok(())
    };
    let mut push = |kind, name: String, target: Option<String>, readonly| -> anyhow::Result<()> {
        let vdev = vdev(disks.len()).context("too many disks (at most 25 volumes)")?;
        disks.push(AttachedDisk {
            kind,
            name,
            target,
            readonly,
            vdev,
            file: None,
            loop_device: None,
            size: None,
        });
        Ok(())
    };
    for v in &req.volumes {
        add_target(&mut targets, v.target())?;
        match v {
            VolumeArg::Named {
                name,
                target,
                readonly,
            } => {
                store::validate_name(name)?;
                push(
                    DiskKind::Volume,
                    name.clone(),
                    Some(target.clone()),
                    *readonly,
                )?;
            }
            VolumeArg::Anonymous { target } => {
                push(
                    DiskKind::Anonymous,
                    anonymous_name(),
                    Some(target.clone()),
                    false,
                )?;
            }
            VolumeArg::HostDir { host, target } => {
                let dir = std::fs::canonicalize(host)
                    .ok()
                    .filter(|d| d.is_dir())
                    .with_context(|| format!("host directory {} does not exist", host.display()))?;
                // Kernel filesystems would be read file by file (and /proc/kmsg blocks);
                // hyperxl's state holds other VMs' volumes and specs.
                let system = ["/proc", "/sys", "/dev", "/run"];
                let state = std::fs::canonicalize(vms.state_dir())
                    .unwrap_or_else(|_| vms.state_dir().to_path_buf());
                if dir == Path::new("/")
                    || system.iter().any(|s| dir.starts_with(s))
                    || dir.starts_with(&state)
                    || state.starts_with(&dir)
                {
                    bail!(
                        "host directory {} cannot be snapshotted: it is /, under /proc, /sys, /dev or /run, or holds hyperxl's state",
                        dir.display()
                    );
                }
                push(
                    DiskKind::Snapshot,
                    dir.to_string_lossy().into_owned(),
                    Some(target.clone()),
                    true,
                )?;
            }
        }
    }
    let mut tmpfs = Vec::new();
    for t in &req.tmpfs {
        add_target(&mut targets, &t.target)?;
        tmpfs.push(Mount {
            target: t.target.clone(),
            source: Source::Tmpfs {
                size: t.size,
                mode: t.mode,
            },
            readonly: false,
        });
    }
    for v in image_volumes {
        let Ok(arg) = request::parse_volume(v) else {
            continue; // An image's odd VOLUME entry is skipped, as Docker skips it.
        };
        if !targets.contains(arg.target()) {
            add_target(&mut targets, arg.target())?;
            push(
                DiskKind::Anonymous,
                anonymous_name(),
                Some(arg.target().to_string()),
                false,
            )?;
        }
    }
    if let Some(size) = req.scratch {
        push(DiskKind::Scratch, "scratch".into(), None, false)?;
        if let Some(d) = disks.last_mut() {
            d.size = Some(size);
        }
    }
    // One volume, one block device: two attachments of one ext4 file would be two
    // independent filesystems on the same blocks in the guest.
    let mut names = std::collections::BTreeSet::new();
    for d in disks
        .iter()
        .filter(|d| matches!(d.kind, DiskKind::Volume | DiskKind::Anonymous))
    {
        if !names.insert(d.name.as_str()) {
            bail!("volume {} is mounted twice: mount it once", d.name);
        }
    }
    // A mount point inside a read-only mount could not be made.
    for inner in &targets {
        if let Some(outer) = disks.iter().find(|d| {
            d.readonly
                && d.target
                    .as_deref()
                    .is_some_and(|t| Path::new(inner).starts_with(t) && t != inner)
        }) {
            bail!(
                "{inner} is inside the read-only mount {}: its mount point cannot be made",
                outer.target.as_deref().unwrap_or_default()
            );
        }
    }
    hyperxl_contract::mounts::validate(&mounts_of(&disks, &tmpfs))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    check_claims(&vms.list()?, "", &disks)?;
    Ok(StoragePlan {
        disks,
        tmpfs,
        read_only: req.read_only,
        volume_labels: BTreeMap::new(),
    })
}

/// Fails if a VM other than `me` that exists (created or running) holds a volume of
/// `disks` read-write, or read-only where `disks` want it read-write.
pub fn check_claims(vms: &[VmState], me: &str, disks: &[AttachedDisk]) -> Result<(), VolumeError> {
    for want in disks
        .iter()
        .filter(|d| matches!(d.kind, DiskKind::Volume | DiskKind::Anonymous))
    {
        for vm in vms.iter().filter(|v| v.id != me) {
            // A VM holds its volumes while it exists, and a writer's volume also while
            // its loop device is still bound (blkback had not let go when it ended).
            let holds =
                |d: &AttachedDisk| vm.status.can_stop() || (!d.readonly && d.loop_device.is_some());
            let clash = vm
                .disks
                .iter()
                .any(|d| d.is_volume(&want.name) && holds(d) && !(d.readonly && want.readonly));
            if clash {
                return Err(VolumeError::InUse {
                    name: want.name.clone(),
                    vm: vm.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The guest's mounts for `disks` (devices in order) and `tmpfs`.
fn mounts_of(disks: &[AttachedDisk], tmpfs: &[Mount]) -> Vec<Mount> {
    let mut out: Vec<Mount> = disks
        .iter()
        .filter_map(|d| {
            let target = d.target.clone()?;
            Some(Mount {
                target,
                source: Source::Disk {
                    device: format!("/dev/{}", d.vdev),
                    fstype: if d.kind == DiskKind::Snapshot {
                        "squashfs"
                    } else {
                        "ext4"
                    }
                    .into(),
                },
                readonly: d.readonly,
            })
        })
        .collect();
    out.extend(tmpfs.iter().cloned());
    out
}

/// Puts the plan's mounts, scratch disk and read-only root into `spec`.
pub fn apply_to_spec(plan: &StoragePlan, spec: &mut Spec) {
    spec.mounts = mounts_of(&plan.disks, &plan.tmpfs);
    spec.read_only = plan.read_only;
    spec.scratch = plan
        .disks
        .iter()
        .find(|d| d.kind == DiskKind::Scratch)
        .map(|d| SpecDisk {
            device: format!("/dev/{}", d.vdev),
            fstype: "ext4".into(),
        });
}

/// A restart keeps the anonymous volumes it had, by target.
pub fn keep_anonymous(disks: &mut [AttachedDisk], old: &VmState) {
    for d in disks.iter_mut().filter(|d| d.kind == DiskKind::Anonymous) {
        if let Some(prev) = old
            .disks
            .iter()
            .find(|o| o.kind == DiskKind::Anonymous && o.target == d.target)
        {
            d.name = prev.name.clone();
        }
    }
}

/// Makes the files behind VM `id`'s planned disks: volumes created if missing, snapshots
/// built, a fresh scratch filesystem. Fills in each disk's `file`.
pub fn materialize(
    state_dir: &Path,
    vm_dir: &Path,
    disks: &mut [AttachedDisk],
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if disks.is_empty() {
        return Ok(());
    }
    let volumes = VolumeStore::open(state_dir)?;
    // Private files are named before they are made, so a failure half-way is cleaned
    // up with the VM (`remove_private_files`).
    for (i, d) in disks.iter_mut().enumerate() {
        match d.kind {
            DiskKind::Snapshot => d.file = Some(vm_dir.join(format!("snapshot-{i}.sqsh"))),
            DiskKind::Scratch => d.file = Some(vm_dir.join("scratch.ext4")),
            _ => {}
        }
    }
    for (i, d) in disks.iter_mut().enumerate() {
        let file = match d.kind {
            DiskKind::Volume | DiskKind::Anonymous => {
                let anonymous = d.kind == DiskKind::Anonymous;
                volumes.ensure(&d.name, store::DEFAULT_SIZE, anonymous, labels.clone())?;
                volumes.data_file(&d.name)
            }
            DiskKind::Snapshot => {
                let out = vm_dir.join(format!("snapshot-{i}.sqsh"));
                snapshot_dir(Path::new(&d.name), &out)?;
                out
            }
            // Made by `volume export`/`import` before the VM.
            DiskKind::Stream => match &d.file {
                Some(f) => f.clone(),
                None => bail!("a stream disk without its file"),
            },
            DiskKind::Scratch => {
                let out = vm_dir.join("scratch.ext4");
                let _ = std::fs::remove_file(&out);
                store::make_ext4(&out, d.size.unwrap_or(store::DEFAULT_SIZE), "scratch")?;
                out
            }
        };
        d.file = Some(file);
    }
    Ok(())
}

/// Builds a read-only squashfs image of dom0 directory `dir` at `out` (replaced).
/// mksquashfs walks with lstat: a symlink is stored as a symlink, pointing wherever it
/// points in the guest, and dom0 never reads through it.
pub fn snapshot_dir(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(dir)
        .arg(out)
        // Mount points below the directory (a chroot's /proc) stay empty directories.
        .args([
            "-noappend",
            "-no-xattrs",
            "-one-file-system",
            "-quiet",
            "-no-progress",
        ])
        .args(["-comp", "lz4"]);
    hyperxl_image::run::output(&mut cmd)
        .with_context(|| format!("making a snapshot of {}", dir.display()))?;
    Ok(())
}

/// After a VM's end: its private disk files go (snapshots, scratch). Volumes stay.
pub fn remove_private_files(vm: &VmState) {
    for d in &vm.disks {
        if matches!(d.kind, DiskKind::Snapshot | DiskKind::Scratch) {
            if let Some(f) = &d.file {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// Removes the anonymous volumes of a VM being removed (`--rm`, `rm -v`), unless another
/// VM uses them too.
pub fn remove_anonymous(state_dir: &Path, vms: &VmStore, vm: &VmState) {
    let anon: Vec<&AttachedDisk> = vm
        .disks
        .iter()
        .filter(|d| d.kind == DiskKind::Anonymous)
        .collect();
    if anon.is_empty() {
        return;
    }
    let (Ok(store), Ok(all)) = (VolumeStore::open(state_dir), vms.list()) else {
        return;
    };
    for d in anon {
        let used = all
            .iter()
            .any(|o| o.id != vm.id && o.disks.iter().any(|x| x.is_volume(&d.name)));
        if !used {
            let _ = store.remove(&d.name);
        }
    }
}

/// Removes volume `name` unless a VM's record uses it; the check and the removal are
/// made under the VM store's lock, so a `run` cannot claim it in between.
pub fn remove_unused(store: &VolumeStore, vms: &VmStore, name: &str) -> anyhow::Result<()> {
    store.load(name)?;
    let _lock = vms.lock()?;
    if let Some(vm) = users(&vms.list()?, name).first() {
        return Err(VolumeError::InUse {
            name: name.to_string(),
            vm: vm.clone(),
        }
        .into());
    }
    store.remove(name)?;
    Ok(())
}

/// The VMs (by name) whose records use volume `name`.
/// `volume prune`: removes the anonymous volumes (`all`: every volume) that no VM in
/// `vms` uses; returns each removed name with the bytes its file held.
pub fn prune(
    store: &VolumeStore,
    vm_store: &VmStore,
    vms: &[VmState],
    all: bool,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut removed = Vec::new();
    for v in store.list()? {
        if (all || v.anonymous) && users(vms, &v.name).is_empty() {
            let bytes = store.allocated(&v.name);
            // Checked again under the lock: a `run` may have claimed it since.
            if remove_unused(store, vm_store, &v.name).is_ok() {
                removed.push((v.name, bytes));
            }
        }
    }
    Ok(removed)
}

/// The names of the VMs among `all` that have volume `name` among their disks.
pub fn users(all: &[VmState], name: &str) -> Vec<String> {
    all.iter()
        .filter(|v| v.disks.iter().any(|d| d.is_volume(name)))
        .map(|v| v.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::state::Status;

    fn vol(name: &str, readonly: bool) -> AttachedDisk {
        AttachedDisk {
            kind: DiskKind::Volume,
            name: name.into(),
            target: Some("/data".into()),
            readonly,
            vdev: "xvdb".into(),
            file: None,
            loop_device: None,
            size: None,
        }
    }

    fn vm(id: &str, status: Status, disks: Vec<AttachedDisk>) -> VmState {
        let mut v = VmState::new(id.into(), format!("vm{id}"), "img".into());
        v.status = status;
        v.disks = disks;
        v
    }

    #[test]
    fn claims() {
        let running_rw = vm("1", Status::Running, vec![vol("data", false)]);
        let running_ro = vm("2", Status::Running, vec![vol("data", true)]);
        let exited_rw = vm("3", Status::Exited, vec![vol("data", false)]);
        // A read-write user excludes everyone else.
        assert!(check_claims(
            std::slice::from_ref(&running_rw),
            "9",
            &[vol("data", false)]
        )
        .is_err());
        assert!(
            check_claims(std::slice::from_ref(&running_rw), "9", &[vol("data", true)]).is_err()
        );
        // Readers share; a writer is refused beside them.
        assert!(check_claims(std::slice::from_ref(&running_ro), "9", &[vol("data", true)]).is_ok());
        assert!(check_claims(&[running_ro], "9", &[vol("data", false)]).is_err());
        // An exited VM holds nothing; a VM does not clash with itself; other names are free.
        assert!(check_claims(&[exited_rw], "9", &[vol("data", false)]).is_ok());
        assert!(check_claims(
            std::slice::from_ref(&running_rw),
            "1",
            &[vol("data", false)]
        )
        .is_ok());
        assert!(check_claims(&[running_rw], "9", &[vol("other", false)]).is_ok());
    }

    #[test]
    fn devices() {
        assert_eq!(vdev(0).as_deref(), Some("xvdb"));
        assert_eq!(vdev(24).as_deref(), Some("xvdz"));
        assert_eq!(vdev(25), None);
    }

    #[test]
    fn spec_mounts() {
        let mut snap = vol("/srv/conf", true);
        snap.kind = DiskKind::Snapshot;
        snap.vdev = "xvdc".into();
        snap.target = Some("/conf".into());
        let mut scratch = vol("scratch", false);
        scratch.kind = DiskKind::Scratch;
        scratch.vdev = "xvdd".into();
        scratch.target = None;
        let plan = StoragePlan {
            disks: vec![vol("data", false), snap, scratch],
            tmpfs: vec![],
            read_only: true,
            volume_labels: BTreeMap::new(),
        };
        let mut spec = Spec::new(vec!["true".into()]);
        apply_to_spec(&plan, &mut spec);
        assert!(spec.read_only);
        assert_eq!(spec.scratch.as_ref().unwrap().device, "/dev/xvdd");
        let devs: Vec<_> = spec
            .mounts
            .iter()
            .map(|m| match &m.source {
                Source::Disk { device, fstype } => format!("{} {device} {fstype}", m.target),
                Source::Tmpfs { .. } => m.target.clone(),
            })
            .collect();
        assert_eq!(devs, ["/data /dev/xvdb ext4", "/conf /dev/xvdc squashfs"]);
        spec.validate().unwrap();
    }
}
