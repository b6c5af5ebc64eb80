//! Starting a VM: image -> disk -> spec -> loop device -> domain (paused) -> spec in
//! xenstore, then handing it to a watcher: this process when attached, a detached
//! `hyperxl monitor` with `-d`. Every failure on the way leaves no domain, no loop
//! device and (with `--rm`) no state behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use hyperxl_contract::{keys, Spec};
use hyperxl_image::pull::{self, PullOptions};
use hyperxl_image::{Reference, Store};
use libxl::{Context, Disk, DomId, DomainConfig, DomainOps, Nic};
use xenstore_wire::{Access, Perm, Transport, Xenstore};

use super::disk::LoopDisk;
use super::machine::{Guest, Kind, Machine, ROOT_VDEV};
use super::monitor::{self, ConsoleOut};
use super::pool;
use super::spec::{self, RunFlags};
use super::state::{self, VmState, VmStore};

/// What `run` decided about the VM itself.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The image as the user wrote it.
    pub image: String,
    /// `--name`.
    pub name: Option<String>,
    /// `--rm`.
    pub auto_remove: bool,
    /// Memory, vCPUs and domain type.
    pub machine: Machine,
    /// The kernel and initramfs it boots.
    pub guest: Guest,
    /// Pass the init's `hyperstart: ` lines and kernel messages to stdout too.
    pub show_init_lines: bool,
    /// How much console log to keep.
    pub log: super::console::LogLimits,
    /// Labels recorded with the VM.
    pub labels: BTreeMap<String, String>,
    /// Its network (`--network`, `-p`, `--ip`, `--dns`, `--add-host`).
    pub net: crate::net::NetRequest,
    /// Its storage (`-v`, `--tmpfs`, `--read-only`, `--storage-opt`).
    pub storage: crate::volume::request::StorageRequest,
    /// Told about a pull of a missing image (none: a silent pull).
    pub pull_observer: Option<std::sync::Arc<dyn hyperxl_image::pull::PullObserver>>,
}

/// Memory of dom0's helper VMs (`volume export`/`import`): a tar stream through a
/// 64 MiB guest needs no more.
const HELPER_MEMORY_MIB: u64 = 64;

/// The kernel command line of every hyperxl guest.
///
/// `xen_blkfront.feature_persistent=0`: with persistent grants blkfront keeps a bounce
/// page for every grant of every request slot, about 4 MiB of guest memory per disk; a
/// 32 MiB guest with a rootfs and a scratch disk had 2.6 MiB free and its app was
/// OOM-killed writing to disk (10.7 MiB free without them). Boot-to-started with and
/// without them, 5 interleaved runs in one test-host boot, differed by less than the
/// run-to-run noise (medians 7.0 s off, 7.5 s on; emulated).
pub const GUEST_CMDLINE: &str = "console=hvc0 quiet loglevel=1 xen_blkfront.feature_persistent=0";

/// A hotplug step of ours: next to this executable (a build tree, a hand install), or
/// in `../libexec/hyperxl/` beside its bin dir (the package: `/usr/bin/hyperxl`,
/// `/usr/libexec/hyperxl/hyperxl-block`), if it is there.
fn helper(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let bin = exe.parent()?;
    [
        bin.join(name),
        bin.parent()?.join("libexec/hyperxl").join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The hotplug step for our loop devices: `hyperxl-block` (see [`helper`]), or
/// Xen's stock `block` script if it is missing (slower, same result).
pub fn block_script() -> Option<PathBuf> {
    helper("hyperxl-block")
}

/// The hotplug step for vifs: `hyperxl-vif` (see [`helper`]), or Xen's stock
/// `vif-bridge` (bash, iptables; slower) if it is missing.
pub fn vif_script() -> Option<PathBuf> {
    helper("hyperxl-vif")
}

/// Everything `run` works out before a domain exists.
pub struct Prepared {
    /// The VM's record (not yet written).
    pub vm: VmState,
    /// The container spec.
    pub spec: Spec,
    /// The rootfs image file (none: a helper VM, whose init runs a job and needs no image).
    pub disk_file: Option<PathBuf>,
    opts: LaunchOptions,
    /// Start an exited VM again under its own record, instead of recording a new one.
    restart_of: Option<VmState>,
    /// The network it joins (`None`: `--network none`).
    net: Option<crate::net::store::NetworkDef>,
    /// Its volumes, snapshots, scratch disk and tmpfs.
    pub storage: crate::volume::StoragePlan,
}

impl Prepared {
    /// A helper VM of dom0's own (`volume export`/`import`): no image, no network, the
    /// init runs `job` on `disks`; removed when it ends.
    pub fn helper(
        kind: &str,
        job: hyperxl_contract::job::Job,
        disks: Vec<crate::volume::AttachedDisk>,
        guest: Guest,
    ) -> anyhow::Result<Prepared> {
        let id = state::new_id();
        let name = format!("{kind}-{}", &id[..8]);
        let mut spec = Spec::new(vec![format!("hyperxl-{kind}")]);
        spec.job = Some(job);
        spec.validate().context("building the helper's spec")?;
        let mut vm = VmState::new(id, name, format!("(hyperxl {kind})"));
        vm.command = spec.args.clone();
        vm.auto_remove = true;
        vm.disks = disks.clone();
        vm.labels.insert("hyperxl.helper".into(), kind.to_string());
        let opts = LaunchOptions {
            image: vm.image.clone(),
            name: Some(vm.name.clone()),
            auto_remove: true,
            machine: Machine::new(HELPER_MEMORY_MIB, 1, Kind::Pvh)?,
            guest,
            show_init_lines: false,
            log: Default::default(),
            labels: vm.labels.clone(),
            net: Default::default(),
            pull_observer: None,
            storage: Default::default(),
        };
        opts.guest.check()?;
        Ok(Prepared {
            vm,
            spec,
            disk_file: None,
            opts,
            restart_of: None,
            net: None,
            storage: crate::volume::StoragePlan {
                disks,
                ..Default::default()
            },
        })
    }

    /// What a pooled VM must be to serve this VM.
    pub fn shape(&self) -> pool::Shape {
        pool::Shape {
            machine: self.opts.machine,
            guest: self.opts.guest.clone(),
        }
    }

    /// Makes this a restart of `old` (a restart policy at work): same id, name and
    /// console log, one more in its restart count.
    pub fn restart_of(mut self, old: &VmState) -> Self {
        self.vm.id = old.id.clone();
        self.vm.name = old.name.clone();
        self.vm.created_at = old.created_at;
        self.vm.restart_count = old.restart_count + 1;
        crate::volume::keep_anonymous(&mut self.vm.disks, old);
        self.restart_of = Some(old.clone());
        self
    }
}

/// Steps 1-3: image (pulled if absent), rootfs disk, spec; nothing is created yet.
pub fn prepare(
    state_dir: &Path,
    opts: &LaunchOptions,
    flags: &RunFlags,
) -> anyhow::Result<Prepared> {
    let reference: Reference = opts
        .image
        .parse()
        .with_context(|| format!("image {:?}", opts.image))?;
    let store = Store::open(state_dir).context("opening the image store")?;
    let mut pull_opts = PullOptions::new(state_dir);
    pull_opts.observer = opts.pull_observer.clone();
    pull::pull_if_missing(&store, &reference, &pull_opts)
        .with_context(|| format!("pulling {}", opts.image))?;
    let disk_file = store
        .ensure_disk(&reference)
        .context("building the rootfs disk")?;
    let config = store
        .image_config(&reference)
        .context("reading the image config")?;
    super::timing::mark("image");
    let id = state::new_id();
    let name = vm_name(opts, &id)?;
    let mut flags = flags.clone();
    if flags.hostname.is_empty() {
        flags.hostname = name.clone();
    }
    let spec = spec::build(&config, &flags).context("building the container spec")?;
    let image = config.config().as_ref();
    let exposed: Vec<String> = image
        .and_then(|c| c.exposed_ports().clone())
        .unwrap_or_default();
    let image_volumes: Vec<String> = image.and_then(|c| c.volumes().clone()).unwrap_or_default();
    prepare_vm(
        state_dir,
        opts,
        (id, name),
        disk_file,
        spec,
        &exposed,
        &image_volumes,
    )
}

/// Steps 2-3 for a rootfs disk made elsewhere (a containerd snapshot turned into
/// squashfs) and a spec the caller built: nothing is pulled, `opts.image` only labels
/// the VM, and the spec's hostname defaults to the VM's name.
pub fn prepare_from_disk(
    state_dir: &Path,
    opts: &LaunchOptions,
    disk_file: PathBuf,
    mut spec: Spec,
) -> anyhow::Result<Prepared> {
    let id = state::new_id();
    let name = vm_name(opts, &id)?;
    if spec.hostname.is_empty() {
        spec.hostname = name.clone();
    }
    prepare_vm(state_dir, opts, (id, name), disk_file, spec, &[], &[])
}

/// `--name`, checked, else `vm-` and the id's first 8 characters.
fn vm_name(opts: &LaunchOptions, id: &str) -> anyhow::Result<String> {
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", &id[..8]));
    state::validate_name(&name)?;
    Ok(name)
}

/// What every VM with a rootfs disk needs once its image and spec are known: its
/// network, its storage, and its record (not yet written).
fn prepare_vm(
    state_dir: &Path,
    opts: &LaunchOptions,
    (id, name): (String, String),
    disk_file: PathBuf,
    spec: Spec,
    exposed: &[String],
    image_volumes: &[String],
) -> anyhow::Result<Prepared> {
    let mut net_req = opts.net.clone();
    if net_req.publish_all {
        net_req
            .publish
            .extend(crate::net::publish::exposed(exposed));
    }
    let net = crate::net::resolve(state_dir, &net_req)?;
    let mut storage = crate::volume::plan(
        &super::state::VmStore::open(state_dir)?,
        &opts.storage,
        image_volumes,
    )?;
    if let Some(dep) = opts.labels.get(crate::deploy::apply::LABEL_DEPLOYMENT) {
        storage
            .volume_labels
            .insert(crate::deploy::apply::LABEL_DEPLOYMENT.into(), dep.clone());
    }
    let mut spec = spec;
    crate::volume::apply_to_spec(&storage, &mut spec);
    spec.validate().context("building the container spec")?;
    opts.guest.check()?;
    super::timing::mark("spec");
    let mut vm = VmState::new(id, name, opts.image.clone());
    vm.command = spec.args.clone();
    vm.kind = opts.machine.kind().to_string();
    vm.auto_remove = opts.auto_remove;
    vm.labels = opts.labels.clone();
    vm.log = opts.log;
    vm.disks = storage.disks.clone();
    let mut opts = opts.clone();
    opts.net = net_req;
    Ok(Prepared {
        vm,
        spec,
        disk_file: Some(disk_file),
        opts,
        restart_of: None,
        net,
        storage,
    })
}

/// The libxl domain config of a prepared VM whose rootfs is `disk`, on network `net`.
pub fn domain_config(
    p: &Prepared,
    rootfs: Option<&Path>,
    extra: &[crate::volume::AttachedDisk],
    net: Option<&crate::net::VmNet>,
) -> anyhow::Result<DomainConfig> {
    let mut builder = DomainConfig::builder(p.vm.domain_name());
    if let Some(disk) = rootfs {
        let mut rootfs = Disk::new(disk, ROOT_VDEV).readonly();
        if let Some(script) = block_script() {
            rootfs = rootfs.script(script);
        }
        builder = builder.disk(rootfs);
    }
    for d in extra {
        let dev = d
            .loop_device
            .as_ref()
            .with_context(|| format!("disk {} has no loop device", d.vdev))?;
        let mut disk = Disk::new(dev, d.vdev.clone());
        if d.readonly {
            disk = disk.readonly();
        }
        if let Some(script) = block_script() {
            disk = disk.script(script);
        }
        builder = builder.disk(disk);
    }
    if let Some(net) = net {
        let mut nic = Nic::new(crate::net::subnet::mac_for(net.ip));
        nic.bridge = Some(net.bridge.clone());
        nic.ifname = Some(net.vif.clone());
        nic.ip = Some(net.ip.to_string());
        nic.script = vif_script();
        builder = builder.nic(nic);
    }
    builder
        .domain_type(p.opts.machine.kind().domain_type())
        .kernel(&p.opts.guest.kernel)
        .ramdisk(&p.opts.guest.initrd)
        .cmdline(GUEST_CMDLINE)
        .memory_mib(p.opts.machine.memory_mib())
        .vcpus(p.opts.machine.vcpus())
        .build()
        .context("building the domain config")
}

/// A VM recorded, its loop device attached and its domain built (or taken from the
/// pool), paused, with the spec in xenstore.
struct Booted {
    id: String,
    domid: DomId,
    disks: Vec<LoopDisk>,
}

/// Makes the files behind the VM's extra disks and binds each to a loop device of its
/// own (pushed onto `loops`), recording both as it goes so a failure cleans up.
fn attach_extra(
    vms: &VmStore,
    id: &str,
    p: &Prepared,
    loops: &mut Vec<LoopDisk>,
) -> anyhow::Result<Vec<crate::volume::AttachedDisk>> {
    let mut disks = vms.load(id)?.disks;
    if disks.is_empty() {
        return Ok(disks);
    }
    let dir = vms.dir(id);
    let made =
        crate::volume::materialize(vms.state_dir(), &dir, &mut disks, &p.storage.volume_labels);
    // Recorded even on failure: what was made is then removed with the VM.
    vms.update(id, |vm| vm.disks = disks.clone())?;
    made?;
    for i in 0..disks.len() {
        let file = disks[i].file.clone().context("a disk without its file")?;
        let l = LoopDisk::attach_mode(&file, id, disks[i].readonly)?;
        disks[i].loop_device = Some(l.path().to_path_buf());
        loops.push(l);
        vms.update(id, |vm| vm.disks = disks.clone())?;
    }
    Ok(disks)
}

/// Steps 4-6. On failure, whatever was created is gone again and the error is recorded.
fn create<T: Transport>(
    ctx: &dyn DomainOps,
    xs: &mut Xenstore<T>,
    vms: &VmStore,
    p: &Prepared,
) -> anyhow::Result<Booted> {
    let claim = |all: &[VmState]| -> anyhow::Result<()> {
        crate::volume::check_claims(all, &p.vm.id, &p.vm.disks)?;
        Ok(())
    };
    if p.restart_of.is_some() {
        let fresh = p.vm.clone();
        let mut applied = false;
        let _lock = vms.lock()?;
        claim(&vms.list()?)?;
        vms.update(&fresh.id, |vm| {
            // Only an exited VM starts again, and not one the user stopped meanwhile.
            if !vm.status.can_stop() && !vm.stopped_by_user {
                *vm = fresh.clone();
                applied = true;
            }
        })?;
        if !applied {
            bail!("VM {} is already running again", fresh.name);
        }
    } else {
        let _lock = vms.lock()?;
        claim(&vms.list()?)?;
        vms.create(&p.vm)?;
    }
    let id = p.vm.id.clone();
    let mut built: Option<DomId> = None;
    let booted = (|| {
        let mut spec = p.spec.clone();
        spec.timings = super::timing::guest_enabled();
        let mut net = None;
        let mut pending_rules = None;
        if let Some(def) = &p.net {
            let prefer = p
                .restart_of
                .as_ref()
                .and_then(|old| old.network.as_ref())
                .filter(|n| n.network == def.name)
                .map(|n| n.ip);
            let (vm_net, guest, rules) = crate::net::attach(vms, &id, def, &p.opts.net, prefer)?;
            spec.network = Some(guest);
            net = Some(vm_net);
            pending_rules = Some(rules);
        }
        super::timing::mark("network");
        vms.write_file(&id, "spec.json", spec.to_json()?.as_bytes())
            .context("recording the spec")?;
        if monitor::stop_requested() {
            bail!("interrupted before the domain was created");
        }
        super::timing::mark("record");
        let mut loops = Vec::new();
        if let Some(file) = &p.disk_file {
            let disk = LoopDisk::attach(file, &id)?;
            vms.update_runtime(&id, |vm| {
                vm.loop_device = Some(disk.path().to_path_buf());
                vm.disk_file = Some(file.clone());
            })?;
            loops.push(disk);
        }
        let rootfs = loops.first().map(|l| l.path().to_path_buf());
        let extra = attach_extra(vms, &id, p, &mut loops)?;
        super::timing::mark("disk-attach");
        let config = domain_config(p, rootfs.as_deref(), &extra, net.as_ref())?;
        let shape = p.shape();
        // The pool only ever speeds a run up: whatever is wrong with it, the run boots
        // cold (and says why).
        let no_pool = |e: &anyhow::Error| eprintln!("hyperxl: warning: not using the pool: {e:#}");
        let settings = pool::Settings::load(vms.state_dir())
            .inspect_err(no_pool)
            .unwrap_or_default();
        let pooled = match settings.shapes.contains_key(&shape.key()) && p.restart_of.is_none() {
            true => pool::take(ctx, vms, &p.vm, &shape)
                .inspect_err(no_pool)
                .ok()
                .flatten(),
            false => None,
        };
        let domid = match pooled {
            Some(domid) => {
                built = Some(domid);
                super::timing::mark("pool-take");
                domid
            }
            None => {
                let domid = ctx.create_paused(&config).context("creating the domain")?;
                built = Some(domid);
                super::timing::mark("domain-build");
                domid
            }
        };
        if pooled.is_none() && settings.shapes.contains_key(&shape.key()) {
            // No ready VM of a shape that is kept: the refill catches up. (After a run
            // on a pooled VM, its watcher starts the refill: see pool::refill_once.)
            if let Err(e) = pool::spawn_refill(vms.state_dir()) {
                eprintln!("hyperxl: refilling the pool: {e:#}");
            }
        }
        let recorded = vms.update_runtime(&id, |vm| vm.domid = Some(domid.0))?;
        if recorded.killed {
            bail!("killed while its domain was being built");
        }
        // Before the spec: once unpaused, the init of a pooled VM runs on with it.
        if let Some(rules) = pending_rules.take() {
            rules.wait()?;
            super::timing::mark("network-rules");
        }
        write_spec_to(xs, domid, &spec)?;
        super::timing::mark("xenstore");
        if pooled.is_some() {
            // Paused still: the watcher unpauses it, and the init reads its spec and
            // finds its disks and vif (as in any boot).
            pool::plug(ctx, domid, &config)?;
            super::timing::mark("hot-add");
        }
        Ok(Booted {
            id: id.clone(),
            domid,
            disks: loops,
        })
    })();
    if let Err(e) = &booted {
        let _ = monitor::finish(Some(ctx), vms, &id, built, Err(anyhow::anyhow!("{e:#}")));
    }
    booted
}

/// Writes the spec where the guest reads it: readable, never writable, by the guest.
pub fn write_spec(domid: DomId, spec: &Spec) -> anyhow::Result<()> {
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    write_spec_to(&mut xs, domid, spec)
}

/// [`write_spec`] through `xs`.
fn write_spec_to<T: Transport>(
    xs: &mut Xenstore<T>,
    domid: DomId,
    spec: &Spec,
) -> anyhow::Result<()> {
    let dir = keys::abs(domid.0, keys::SPEC_DIR);
    let spec_path = keys::spec_path(domid.0);
    let perms = [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid: domid.0,
            access: Access::Read,
        },
    ];
    xs.mkdir(&dir).context("writing the spec")?;
    xs.set_perms(&dir, &perms)
        .context("setting the spec's permissions")?;
    let json = spec.to_json().context("serialising the spec")?;
    xs.write(&spec_path, json.as_bytes())
        .context("writing the spec")?;
    xs.set_perms(&spec_path, &perms)
        .context("setting the spec's permissions")?;
    Ok(())
}

/// What an attached `run` connects to the app besides the console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// `-i`: our stdin goes to the app's.
    pub stdin: bool,
    /// `-t`: the app runs on a terminal in the guest; its output comes over the attach
    /// session as it is written (the console log still records it).
    pub tty: bool,
}

/// Runs the VM attached: console on stdout, Ctrl-C stops it; returns the app's exit code.
/// With `attach.stdin` or `attach.tty`, a thread connects to the app over an attach
/// session once it runs (`run -i`, `run -t`).
pub fn run_attached(vms: &VmStore, p: Prepared, attach: Attach) -> anyhow::Result<i32> {
    let out = if attach.tty {
        // The terminal's bytes come over the session, prompts without a newline too.
        ConsoleOut::LogOnly
    } else {
        ConsoleOut::Attached {
            show_init_lines: p.opts.show_init_lines,
        }
    };
    run_watched(vms, p, out, attach)
}

/// A helper VM (see [`Prepared::helper`]), watched by this process, its console only in
/// its log; returns its exit code.
pub fn run_helper(vms: &VmStore, p: Prepared) -> anyhow::Result<i32> {
    run_watched(vms, p, ConsoleOut::LogOnly, Attach::default())
}

fn run_watched(vms: &VmStore, p: Prepared, out: ConsoleOut, attach: Attach) -> anyhow::Result<i32> {
    let ctx = Context::new()?;
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let booted = create(&ctx, &mut xs, vms, &p)?;
    // Put back on the way out, should the session's thread not be done with it by then.
    let terminal = (attach.tty && attach.stdin)
        .then(super::exec::TerminalSettings::save)
        .flatten();
    let session = (attach.stdin || attach.tty).then(|| {
        let (state_dir, id) = (vms.state_dir().to_path_buf(), booted.id.clone());
        let (done, ended) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || {
                // -it: keys go to the guest's terminal as typed (^C too). The session
                // owns the raw mode: it is restored as soon as the session ends, even
                // if that is a failure while the VM runs on.
                let raw = (attach.tty && attach.stdin && std::io::stdin().is_terminal())
                    .then(super::exec::RawTerminal::enter)
                    .transpose();
                let r = super::exec::attach_app(&state_dir, &id, attach.tty, attach.stdin, false);
                drop(raw);
                // Failing because the app already ended is no failure to report.
                let still_running = || {
                    VmStore::open(&state_dir)
                        .and_then(|v| v.load(&id))
                        .is_ok_and(|vm| vm.status.can_stop())
                };
                // A failure while the app runs on is said at once (the terminal is back
                // to normal already; ^C stops the VM as without -i).
                if let Err(e) = &r {
                    if still_running() {
                        let what = if attach.tty { "terminal" } else { "stdin" };
                        eprintln!("hyperxl: the app's {what}: {e:#}");
                    }
                }
                let _ = done.send(());
            });
        if let Err(e) = spawned {
            eprintln!("hyperxl: attaching to the app: {e}");
        }
        ended
    });
    let result = monitor::supervise(
        &ctx,
        vms,
        &booted.id,
        booted.domid,
        out,
        booted.disks,
        || {},
    );
    // A tty app's last output is on its way over the session (the init waits for it
    // before the VM powers off).
    if let Some(ended) = session {
        let _ = ended.recv_timeout(std::time::Duration::from_secs(3));
    }
    drop(terminal);
    monitor::finish(Some(&ctx), vms, &booted.id, Some(booted.domid), result)
}

/// Runs the VM detached: a `hyperxl monitor` process takes it over; returns its id once
/// the VM runs.
pub fn run_detached(state_dir: &Path, vms: &VmStore, p: Prepared) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding the hyperxl executable")?;
    run_detached_with(&exe, state_dir, vms, p)
}

/// [`run_detached`] with `hyperxl` at `hyperxl_exe` as the monitor (another front end,
/// such as the containerd shim, is not that binary itself).
pub fn run_detached_with(
    hyperxl_exe: &Path,
    state_dir: &Path,
    vms: &VmStore,
    p: Prepared,
) -> anyhow::Result<String> {
    let ctx = Context::new()?;
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let booted = create(&ctx, &mut xs, vms, &p)?;
    let id = booted.id.clone();
    let handed_over = (|| {
        let log = monitor::open_monitor_log(vms, &id).context("creating the monitor log")?;
        // Its own process group: Ctrl-C on this `run -d` must not reach the monitor.
        let mut child = Command::new(hyperxl_exe)
            .process_group(0)
            .arg("--state-dir")
            .arg(state_dir)
            .args(["monitor", &id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the VM's monitor")?;
        // The monitor holds the loop device and unpauses; it says `ready` when it runs.
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() == "ready" {
            return Ok(());
        }
        let _ = child.wait();
        let why = vms
            .load(&id)
            .ok()
            .and_then(|vm| vm.error)
            .unwrap_or_else(|| "the monitor exited before the VM ran".into());
        bail!("{why}")
    })();
    drop(booted.disks);
    if let Err(e) = handed_over {
        // The monitor may have recorded the end already; finishing twice is harmless.
        let _ = monitor::finish(
            Some(&ctx),
            vms,
            &id,
            Some(booted.domid),
            Err(anyhow::anyhow!("{e:#}")),
        );
        return Err(e);
    }
    Ok(id)
}

/// The detached monitor's body (`hyperxl monitor ID`): takes over a paused VM created by
/// `run -d`, unpauses it, says `ready` on stdout, and watches it to the end.
pub fn monitor_main(vms: &VmStore, id: &str) -> anyhow::Result<i32> {
    // `run -d` put us in our own process group; SIGHUP is ignored by the stop handlers.
    let vm = vms.update_runtime(id, |vm| vm.monitor_pid = Some(std::process::id()))?;
    let ctx = Context::new()?;
    let result = (|| {
        let domid = vm.domid.context("the VM has no domain")?;
        let disks = vm
            .loops()
            .iter()
            .map(|(dev, file)| {
                LoopDisk::hold(dev, id, file.as_deref())
                    .with_context(|| format!("holding {}", dev.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        monitor::supervise(
            &ctx,
            vms,
            id,
            DomId(domid),
            ConsoleOut::LogOnly,
            disks,
            || {
                // A `run -d` that went away (Ctrl-C) must not take the monitor with it.
                let _ = writeln!(std::io::stdout(), "ready");
                // Close the pipe so `run -d` returns; later output has nowhere to go.
                if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                    use std::os::fd::AsRawFd;
                    let _ = nix::unistd::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
                }
            },
        )
    })();
    monitor::finish(Some(&ctx), vms, id, vm.domid.map(DomId), result)
}

#[cfg(test)]
mod tests {
    use hyperxl_contract::job::Job;
    use libxl::fake::{FakeDomainOps, FakeOp};
    use libxl::{ErrorCode, LibxlError};
    use xenstore_wire::fake::FakeXenstored;

    use super::*;
    use crate::vm::state::Status;

    struct Setup {
        _dir: tempfile::TempDir,
        vms: VmStore,
        xen: FakeDomainOps,
        xs: Xenstore<FakeXenstored>,
        p: Prepared,
    }

    /// A helper VM (no image, no network, no disks) about to be created on a fake Xen.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let guest = Guest::in_dir(dir.path());
        std::fs::write(&guest.kernel, b"k").unwrap();
        std::fs::write(&guest.initrd, b"i").unwrap();
        let vms = VmStore::open(&dir.path().join("state")).unwrap();
        let job = Job::Export {
            volume: "/dev/xvdb".into(),
            stream: "/dev/xvdc".into(),
        };
        let p = Prepared::helper("export", job, Vec::new(), guest).unwrap();
        Setup {
            _dir: dir,
            vms,
            xen: FakeDomainOps::new(),
            xs: Xenstore::new(FakeXenstored::new(0)),
            p,
        }
    }

    /// Built paused from the machine and guest asked for, recorded with its domid, and
    /// its spec readable but not writable by the guest.
    #[test]
    fn the_domain_is_built_paused_recorded_and_given_a_read_only_spec() {
        let mut s = setup();
        let booted = create(&s.xen, &mut s.xs, &s.vms, &s.p).unwrap();
        let info = s.xen.domain_info(booted.domid).unwrap().unwrap();
        assert!(info.paused, "the watcher unpauses it");
        assert_eq!(info.name, Some(s.p.vm.domain_name()));
        assert_eq!(info.memory_kib, HELPER_MEMORY_MIB * 1024);
        let vm = s.vms.load(&booted.id).unwrap();
        assert_eq!(vm.domid, Some(booted.domid.0));
        assert_eq!(vm.kind, "pvh");

        let store = s.xs.transport_mut();
        let (json, perms) = store.nodes[&keys::spec_path(booted.domid.0)].clone();
        let spec: Spec = serde_json::from_slice(&json).unwrap();
        assert_eq!(spec.args, ["hyperxl-export"]);
        let guest = booted.domid.0;
        assert_eq!(
            perms[0],
            Perm::new(Access::None, 0),
            "owner dom0, no one else"
        );
        assert_eq!(perms[1..], [Perm::new(Access::Read, guest)]);
        store.domid = guest;
        assert!(
            s.xs.read(&keys::spec_path(guest)).is_ok(),
            "the guest reads it"
        );
        let written = s.xs.write(&keys::spec_path(guest), b"{}");
        assert!(written.is_err(), "and cannot change it");
    }

    /// A failed build leaves no domain; the helper's (`--rm`) record goes too.
    #[test]
    fn a_failed_build_leaves_nothing() {
        let mut s = setup();
        let err = LibxlError::Call {
            call: "libxl_domain_create_new",
            code: ErrorCode::FAIL,
            errno: None,
        };
        s.xen.fail_next(FakeOp::CreatePaused, err);
        let e = create(&s.xen, &mut s.xs, &s.vms, &s.p).err().unwrap();
        assert!(format!("{e:#}").contains("creating the domain"), "{e:#}");
        assert!(s.xen.domids().is_empty());
        assert!(s.vms.list().unwrap().is_empty());
    }

    /// `kill` (or `rm -f`) while the domain was being built: the domain goes, and a
    /// record that is kept says killed.
    #[test]
    fn a_vm_killed_during_the_build_loses_its_domain() {
        let mut s = setup();
        s.p.vm.auto_remove = false;
        let id = s.p.vm.id.clone();
        // What `kill` of a VM whose domain is not built yet records.
        s.vms.create(&s.p.vm).unwrap();
        s.vms.update(&id, VmState::mark_killed).unwrap();
        let kept = s.vms.load(&id).unwrap();
        s.vms.remove(&id).unwrap();
        // `create` writes the record itself; replay the kill from inside the build.
        s.p.vm = kept;
        let e = create(&s.xen, &mut s.xs, &s.vms, &s.p).err().unwrap();
        assert!(e.to_string().contains("killed while its domain"), "{e:#}");
        assert!(s.xen.domids().is_empty());
        let vm = s.vms.load(&id).unwrap();
        assert_eq!(
            (vm.status, vm.exit_code),
            (Status::Exited, Some(state::EXIT_KILLED))
        );
    }
}
