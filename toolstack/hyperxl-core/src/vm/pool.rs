//! Pre-booted VMs (`hyperxl pool`): domains booted ahead of time with HyperKernel and
//! hyperstart-pv, whose init waits for a spec (`state=pooled`). `run` takes one of its
//! shape (type, memory, vCPUs, kernel and initramfs): it renames the domain to the
//! VM's, hot-adds the rootfs (and volumes, scratch disk and vif) and writes the spec;
//! the waiting init mounts and execs. A pooled VM serves one run and is destroyed with
//! it: never reused, never shared between tenants.
//!
//! Daemonless, as the rest of hyperxl: a pooled VM is an ordinary VM record (labelled
//! [`LABEL_POOL`], removed when it ends) that nobody watches while it waits, so
//! reconcile treats it as every other VM; the watcher of a run on a pooled VM starts a
//! refill process (`pool fill --background`) once the run ended or ran a while
//! ([`refill_once`]). The refill boots one VM at a time,
//! under one lock (`pool/refill.lock`), and only while Xen has the memory for it plus
//! [`MEMORY_RESERVE_MIB`].
//!
//! What the guest printed before its spec (its own boot) is not the app's: a watcher
//! shows the console of a VM taken from the pool only from the init's
//! [`hyperxl_contract::console::SPEC_RECEIVED`] line on.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyperxl_contract::{keys, State};
use libxl::{Context, DomId, DomainConfig, DomainOps};
use serde::{Deserialize, Serialize};
use xenstore_wire::Xenstore;

use super::files;
use super::host::init_waits_for_spec;
use super::machine::{Guest, Machine};
use super::monitor;
use super::state::{self, Status, VmState, VmStore};

/// Label of a pooled VM: its shape's key ([`Shape::key`]).
pub const LABEL_POOL: &str = "hyperxl.pool";
/// Label of a pooled VM: the kernel and initramfs it booted ([`Shape::boot_id`]).
pub const LABEL_BOOT: &str = "hyperxl.pool.boot";
/// Label of a VM that `run` started on a pooled VM: that VM's name.
pub const LABEL_FROM_POOL: &str = "hyperxl.pool.from";
/// The most VMs a pool of one shape may hold.
pub const MAX_SIZE: u32 = 64;
/// Memory Xen must have left after a refill boots a pooled VM.
pub const MEMORY_RESERVE_MIB: u64 = 64;
/// How long a pooled VM may take to boot to its waiting init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a pooled VM must match to serve a run: its machine and the guest it booted.
/// Stored flat (`pv`, `memory_mib`, `vcpus`, `kernel`, `initrd`) in the pool settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Memory, vCPUs and domain type.
    #[serde(flatten)]
    pub machine: Machine,
    /// The kernel and initramfs.
    #[serde(flatten)]
    pub guest: Guest,
}

impl Shape {
    /// `pvh-128m-1cpu`: type, memory and vCPUs (the kernel is matched by
    /// [`Shape::boot_id`]).
    pub fn key(&self) -> String {
        let m = &self.machine;
        format!("{}-{}m-{}cpu", m.kind(), m.memory_mib(), m.vcpus())
    }

    /// The kernel and initramfs as they are now (path, inode, size, modification and
    /// change times): a VM booted before either was rebuilt or replaced does not serve
    /// a run.
    pub fn boot_id(&self) -> anyhow::Result<String> {
        let one = |p: &Path| -> anyhow::Result<String> {
            let m = std::fs::metadata(p)
                .with_context(|| format!("guest kernel or initramfs {}", p.display()))?;
            Ok(format!(
                "{}:{}:{}:{}.{}:{}.{}",
                p.display(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ))
        };
        Ok(format!(
            "{}|{}",
            one(&self.guest.kernel)?,
            one(&self.guest.initrd)?
        ))
    }
}

/// One shape's setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The shape.
    pub shape: Shape,
    /// How many VMs of it to keep ready.
    pub size: u32,
}

/// The pool sizes, per shape key (`pool/settings.json`; none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Shape key -> setting.
    pub shapes: BTreeMap<String, Entry>,
}

fn pool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pool")
}

impl Settings {
    /// The settings, or none if never set.
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = pool_dir(state_dir).join("settings.json");
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the settings atomically.
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let dir = pool_dir(state_dir);
        files::private_subdir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("settings.json");
        let json = serde_json::to_vec_pretty(self).context("serialising the pool settings")?;
        files::write_atomic(&path, &json).with_context(|| format!("writing {}", path.display()))
    }

    /// Sets the size of `shape` (0 removes it).
    pub fn set(&mut self, shape: Shape, size: u32) -> anyhow::Result<()> {
        if size > MAX_SIZE {
            bail!("invalid pool size {size}: at most {MAX_SIZE} per shape");
        }
        let key = shape.key();
        if size == 0 {
            self.shapes.remove(&key);
        } else {
            self.shapes.insert(key, Entry { shape, size });
        }
        Ok(())
    }
}

/// Whether `vm` is a pooled VM (not yet any user's).
pub fn is_pooled(vm: &VmState) -> bool {
    vm.labels.contains_key(LABEL_POOL)
}

/// A pooled VM that is ready: booted to its waiting init, recorded so, and not being
/// destroyed.
fn is_ready(vm: &VmState) -> bool {
    is_pooled(vm) && vm.status == Status::Running && vm.domid.is_some() && !vm.killed
}

/// The refill lock; held by whoever boots or destroys pooled VMs.
fn refill_lock(state_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = pool_dir(state_dir);
    files::private_subdir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("refill.lock");
    files::lock(&path, true)
        .with_context(|| format!("locking {}", path.display()))?
        .context("the refill lock")
}

/// Gives VM `vm` (recorded, not yet built) the domain of a ready pooled VM of
/// `shape`, if there is one: the domain is renamed to the VM's and paused, the pooled
/// VM's record goes, and the VM's record holds the domain. `None`: no pooled VM is
/// ready (the caller boots one cold).
///
/// Under the store lock, so two runs never take the same one. The rename comes first:
/// killed after it, the VM's record finds its domain by name and reconcile destroys it
/// (a `Created` VM whose init still waits for a spec never started). Paused, the
/// domain is like a cold run's before its watcher unpauses it: the init reads its spec
/// only once someone watches the run, so a run killed before its watcher started
/// leaves no app running unwatched.
pub fn take(
    ctx: &dyn DomainOps,
    vms: &VmStore,
    vm: &VmState,
    shape: &Shape,
) -> anyhow::Result<Option<DomId>> {
    let (key, boot) = (shape.key(), shape.boot_id()?);
    let _lock = vms.lock()?;
    let mut ready: Vec<VmState> = vms
        .list()?
        .into_iter()
        .filter(|v| {
            is_ready(v)
                && !v.stopped_by_user
                && v.labels.get(LABEL_POOL) == Some(&key)
                && v.labels.get(LABEL_BOOT) == Some(&boot)
        })
        .collect();
    ready.sort_by_key(|v| v.created_at);
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let new = vm.domain_name();
    for pooled in ready {
        let Some(domid) = pooled.domid.map(DomId) else {
            continue;
        };
        let old = pooled.domain_name();
        let alive = matches!(ctx.domain_info(domid),
            Ok(Some(info)) if info.name.as_deref() == Some(old.as_str()) && !info.shutdown && !info.dying);
        if !alive || !init_waits_for_spec(&mut xs, domid.0) {
            // Not ready after all; reconcile records its end, or a refill replaces it.
            continue;
        }
        if ctx.rename(domid, &old, &new).is_err() {
            // The rename is one transaction, yet its answer may be lost: a domain that
            // has the new name is nobody's and goes.
            if ctx.name_of(domid).as_deref() == Some(new.as_str()) {
                let _ = ctx.destroy(domid);
            }
            continue;
        }
        let recorded = ctx
            .pause(domid)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                // Nothing asked of the pooled VM reaches its tenant.
                let _ = xs.rm(&keys::abs(domid.0, keys::SHUTDOWN));
                Ok(vms.update(&vm.id, |v| {
                    v.domid = Some(domid.0);
                    v.labels.insert(LABEL_FROM_POOL.into(), pooled.name.clone());
                })?)
            });
        if let Err(e) = recorded {
            // Renamed but nobody's: gone again rather than left behind.
            let _ = ctx.destroy(domid);
            return Err(e);
        }
        // Should this fail, the pooled record names a domain that is not called so any
        // more: reconcile drops it (the domain is the VM's), and [`destroy`] leaves
        // the domain alone.
        let _ = vms.remove(&pooled.id);
        return Ok(Some(domid));
    }
    Ok(None)
}

/// Hot-adds the devices of `config` (built for a cold boot of the same VM) to a
/// pooled VM's domain: its disks, then its vif.
pub fn plug(ctx: &dyn DomainOps, domid: DomId, config: &DomainConfig) -> anyhow::Result<()> {
    for disk in config.disks() {
        ctx.add_disk(domid, disk)
            .with_context(|| format!("adding disk {}", disk.vdev))?;
    }
    // A pooled VM has no vif yet: the config's are numbered from 0, as in a cold boot.
    for (devid, nic) in (0..).zip(config.nics()) {
        ctx.add_nic(domid, nic, devid)
            .context("adding the network interface")?;
    }
    Ok(())
}

/// What [`fill`] did.
#[derive(Debug, Default)]
pub struct Filled {
    /// Names of the VMs booted.
    pub booted: Vec<String>,
    /// Names of the VMs destroyed (beyond their shape's size, of an old kernel, or of
    /// a shape no longer set).
    pub removed: Vec<String>,
}

/// Brings every shape to its size, one VM at a time, and destroys pooled VMs no shape
/// wants. `on_boot` hears of each VM booted. Fails when Xen has not the memory for
/// another VM (what was booted so far stays).
pub fn fill(state_dir: &Path, vms: &VmStore, on_boot: impl FnMut(&str)) -> anyhow::Result<Filled> {
    let _refill = refill_lock(state_dir)?;
    fill_locked(state_dir, vms, on_boot)
}

/// [`fill`], by the holder of the refill lock.
fn fill_locked(
    state_dir: &Path,
    vms: &VmStore,
    mut on_boot: impl FnMut(&str),
) -> anyhow::Result<Filled> {
    let ctx = Context::new()?;
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let mut done = Filled::default();
    loop {
        let all = super::host::reconcile_all(vms, &super::host::Host::connect())?;
        // Settings are read again each round: `pool drain` may have cleared them.
        let settings = Settings::load(state_dir)?;
        let mut counts: BTreeMap<String, Vec<VmState>> = BTreeMap::new();
        for vm in all
            .into_iter()
            .filter(|v| is_pooled(v) && v.status.can_stop())
        {
            let wanted = vm
                .labels
                .get(LABEL_POOL)
                .and_then(|k| settings.shapes.get(k));
            let current = wanted.and_then(|e| e.shape.boot_id().ok());
            // Killed but never finished (its destroyer died), or ready yet no longer
            // waiting for a spec: no run takes it, so it must not hold a place.
            let stuck = vm.killed
                || (vm.status == Status::Running
                    && vm.domid.is_some_and(|d| !init_waits_for_spec(&mut xs, d)));
            if stuck || wanted.is_none() || current.as_ref() != vm.labels.get(LABEL_BOOT) {
                destroy(&ctx, vms, &vm);
                done.removed.push(vm.name.clone());
                continue;
            }
            counts
                .entry(vm.labels[LABEL_POOL].clone())
                .or_default()
                .push(vm);
        }
        let mut next = None;
        for (key, entry) in &settings.shapes {
            let have = counts.remove(key).unwrap_or_default();
            let size = entry.size as usize;
            if have.len() > size {
                let mut extra = have;
                extra.sort_by_key(|v| std::cmp::Reverse(v.created_at));
                for vm in extra.iter().take(extra.len() - size) {
                    destroy(&ctx, vms, vm);
                    done.removed.push(vm.name.clone());
                }
            } else if have.len() < size && next.is_none() {
                next = Some(entry.clone());
            }
        }
        let Some(entry) = next else {
            return Ok(done);
        };
        let free_mib = ctx.host_info()?.free_memory_kib / 1024;
        if free_mib < entry.shape.machine.memory_mib() + MEMORY_RESERVE_MIB {
            bail!(
                "not enough free memory for another pooled VM of {}: Xen has {free_mib} MiB free, {} MiB needed ({} MiB kept back)",
                entry.shape.key(),
                entry.shape.machine.memory_mib() + MEMORY_RESERVE_MIB,
                MEMORY_RESERVE_MIB
            );
        }
        let name = boot_one(&ctx, vms, &entry.shape)?;
        on_boot(&name);
        done.booted.push(name);
    }
}

/// Destroys a pooled VM and removes its record (best effort: reconcile finishes what
/// fails here). Under the store lock it is first marked killed, which no `take` picks,
/// unless a run took it meanwhile: then it is that run's and left alone. Only a domain
/// that still has the pooled VM's name is destroyed: a run that took it renamed it, and
/// after a reboot its domid may be another VM's.
fn destroy(ctx: &dyn DomainOps, vms: &VmStore, vm: &VmState) {
    let name = vm.domain_name();
    let marked = {
        let Ok(_lock) = vms.lock() else {
            return;
        };
        match vms.load(&vm.id) {
            Ok(current) if is_pooled(&current) => {
                // A refill killed while libxl built the domain never recorded its domid.
                let domid = current
                    .domid
                    .filter(|d| ctx.name_of(DomId(*d)).as_deref() == Some(name.as_str()))
                    .or_else(|| ctx.domid_for_name(&name).ok().flatten().map(|d| d.0));
                vms.update(&vm.id, |v| {
                    v.mark_killed();
                    v.domid = domid;
                })
            }
            _ => return,
        }
    };
    let Ok(vm) = marked else {
        return;
    };
    let domid = vm.domid.map(DomId);
    let _ = monitor::finish(Some(ctx), vms, &vm.id, domid, Ok(monitor::EXIT_KILLED));
}

/// Boots one pooled VM of `shape` to its waiting init; returns its name. On failure
/// nothing of it is left.
fn boot_one(ctx: &dyn DomainOps, vms: &VmStore, shape: &Shape) -> anyhow::Result<String> {
    let id = state::new_id();
    let mut vm = VmState::new(id.clone(), format!("pool-{}", &id[..8]), "(pool)".into());
    vm.kind = shape.machine.kind().to_string();
    vm.auto_remove = true;
    vm.labels.insert(LABEL_POOL.into(), shape.key());
    vm.labels.insert(LABEL_BOOT.into(), shape.boot_id()?);
    {
        let _lock = vms.lock()?;
        vms.create(&vm)?;
    }
    let mut built = None;
    let booted = (|| {
        let config = DomainConfig::builder(vm.domain_name())
            .domain_type(shape.machine.kind().domain_type())
            .kernel(&shape.guest.kernel)
            .ramdisk(&shape.guest.initrd)
            .cmdline(super::launch::GUEST_CMDLINE)
            .memory_mib(shape.machine.memory_mib())
            .vcpus(shape.machine.vcpus())
            .build()
            .context("building the domain config")?;
        let domid = ctx.create_paused(&config).context("creating the domain")?;
        built = Some(domid);
        vms.update_runtime(&id, |v| v.domid = Some(domid.0))?;
        ctx.unpause(domid).context("unpausing the domain")?;
        wait_pooled(ctx, domid)?;
        vms.update_runtime(&id, |v| {
            v.mark_running();
            // Nobody watches it while it waits: reconcile judges it by its domain.
            v.monitor_pid = None;
        })?;
        Ok(vm.name.clone())
    })();
    if let Err(e) = &booted {
        let _ = monitor::finish(Some(ctx), vms, &id, built, Err(anyhow::anyhow!("{e:#}")));
    }
    booted
}

/// Waits until the init of `domid` says `pooled` (woken by a watch on its state).
fn wait_pooled(ctx: &dyn DomainOps, domid: DomId) -> anyhow::Result<()> {
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let key = keys::abs(domid.0, keys::status::STATE);
    xs.watch(&key, "state")
        .context("watching the guest's state")?;
    let start = Instant::now();
    loop {
        let state = xs.read_string(&key).unwrap_or_default();
        if state == State::Pooled.as_str() {
            return Ok(());
        }
        if !state.is_empty() && state != State::Booting.as_str() {
            let why = super::host::read_guest_key(&mut xs, domid.0, keys::status::ERROR)
                .unwrap_or_else(|| {
                    format!("its init reported {:?}", super::host::terminal_safe(&state))
                });
            bail!("the pooled VM did not wait for a spec: {why}");
        }
        match ctx.domain_info(domid) {
            Ok(Some(info)) if !info.shutdown && !info.dying => {}
            _ => bail!("the pooled VM's domain ended while it booted"),
        }
        if start.elapsed() > BOOT_TIMEOUT {
            bail!(
                "the pooled VM did not boot within {} s",
                BOOT_TIMEOUT.as_secs()
            );
        }
        let _ = xs.next_watch_event(Some(Duration::from_secs(1)));
    }
}

/// `pool drain`: no shape is kept any more, and every pooled VM is destroyed (after a
/// refill that is booting one has finished it). Returns their names.
pub fn drain(state_dir: &Path, vms: &VmStore) -> anyhow::Result<Vec<String>> {
    Settings::default().save(state_dir)?;
    let _refill = refill_lock(state_dir)?;
    let ctx = Context::new()?;
    let mut gone = Vec::new();
    // Records of domains that ended are finished first, so only live ones are named.
    let all = super::host::reconcile_all(vms, &super::host::Host::connect())?;
    for vm in all.into_iter().filter(is_pooled) {
        destroy(&ctx, vms, &vm);
        gone.push(vm.name);
    }
    Ok(gone)
}

/// Starts `hyperxl pool fill --background` detached (its own process group), to
/// refill the pool (see [`refill_once`] and [`fill_background`]).
pub fn spawn_refill(state_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the hyperxl executable")?;
    Command::new(exe)
        .process_group(0)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["pool", "fill", "--background"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the pool refill")?;
    Ok(())
}

/// `pool fill --background`, the refill [`spawn_refill`] starts. At most one runs: a
/// refill asked for while another holds the refill lock only leaves a mark
/// (`pool/refill.pending`) and exits; the holder looks for that mark after it let go
/// of the lock, and refills again if it is there. So refills never pile up, and none
/// asked for is lost (the mark is made before the lock is tried, and looked for after
/// it is released). The holder's output goes to `pool/refill.log`, rewritten by each
/// holder: bounded by what one refill says.
pub fn fill_background(state_dir: &Path, vms: &VmStore) -> anyhow::Result<()> {
    let dir = pool_dir(state_dir);
    files::private_subdir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pending = dir.join("refill.pending");
    files::write_atomic(&pending, b"").context("marking a refill as pending")?;
    loop {
        let lock_path = dir.join("refill.lock");
        let Some(lock) = files::lock(&lock_path, false)
            .with_context(|| format!("locking {}", lock_path.display()))?
        else {
            // The holder refills again for this mark.
            return Ok(());
        };
        let _ = std::fs::remove_file(&pending);
        log_to(&dir.join("refill.log"))?;
        let result = fill_locked(state_dir, vms, |name| println!("booted {name}"));
        drop(lock);
        match &result {
            Ok(done) => done.removed.iter().for_each(|n| println!("destroyed {n}")),
            Err(e) => eprintln!("hyperxl: refilling the pool: {e:#}"),
        }
        if !pending.exists() {
            return result.map(drop);
        }
    }
}

/// Sends this process's stdout and stderr to `path` (created afresh, never through a
/// symlink).
fn log_to(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        nix::unistd::dup2(log.as_raw_fd(), fd)
            .with_context(|| format!("writing to {}", path.display()))?;
    }
    Ok(())
}

/// Set once this process started the refill for the VM it watches.
static REFILL_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts the refill that follows a run on a pooled VM, once per process: its watcher
/// calls this when the run ended, or [`REFILL_AFTER_START`] after its app started,
/// whichever comes first, so the refill's boot never shares dom0's CPU with the start
/// of the run it follows.
pub fn refill_once(state_dir: &Path) {
    if REFILL_STARTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if let Err(e) = spawn_refill(state_dir) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "hyperxl: refilling the pool: {e:#}");
    }
}

/// How long after a run's app started its refill waits for the run to end first: a
/// short run (`run --rm IMG true`) then ends without a refill booting beside it on
/// dom0's CPU (measured: it doubled the app and teardown phases of a pooled run in the
/// test host), while a service's pool is refilled soon after it started.
pub const REFILL_AFTER_START: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(dir: &Path) -> Shape {
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio"));
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&initrd, b"initrd").unwrap();
        Shape {
            machine: Machine::default(),
            guest: Guest { kernel, initrd },
        }
    }

    #[test]
    fn shapes_are_keyed_by_type_memory_and_cpus() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = shape(dir.path());
        assert_eq!(s.key(), "pvh-128m-1cpu");
        s.machine = Machine::parse("32m", 2, "pv").unwrap();
        assert_eq!(s.key(), "pv-32m-2cpu");
    }

    #[test]
    fn a_rebuilt_kernel_changes_the_boot_id_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = shape(dir.path());
        let before = s.boot_id().unwrap();
        assert_eq!(before, s.boot_id().unwrap());
        std::fs::write(&s.guest.kernel, b"a longer kernel").unwrap();
        assert_ne!(before, s.boot_id().unwrap());
        std::fs::remove_file(&s.guest.initrd).unwrap();
        let err = s.boot_id().unwrap_err().to_string();
        assert!(err.contains("initramfs.cpio"), "{err}");
    }

    #[test]
    fn settings_round_trip_and_bound_the_size() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), Settings::default());
        let mut settings = Settings::default();
        settings.set(shape(dir.path()), 2).unwrap();
        assert!(settings.set(shape(dir.path()), MAX_SIZE + 1).is_err());
        settings.save(dir.path()).unwrap();
        let loaded = Settings::load(dir.path()).unwrap();
        assert_eq!(loaded.shapes["pvh-128m-1cpu"].size, 2);
        let mut cleared = loaded;
        cleared.set(shape(dir.path()), 0).unwrap();
        assert!(cleared.shapes.is_empty());
    }

    #[test]
    fn only_a_running_pooled_vm_with_a_domain_is_ready() {
        let mut vm = VmState::new("ab".repeat(8), "pool-abababab".into(), "(pool)".into());
        assert!(!is_pooled(&vm));
        vm.labels.insert(LABEL_POOL.into(), "pvh-128m-1cpu".into());
        assert!(is_pooled(&vm) && !is_ready(&vm));
        vm.status = Status::Running;
        assert!(!is_ready(&vm), "no domain yet");
        vm.domid = Some(7);
        assert!(is_ready(&vm));
        vm.killed = true;
        assert!(!is_ready(&vm), "being destroyed");
    }
}
