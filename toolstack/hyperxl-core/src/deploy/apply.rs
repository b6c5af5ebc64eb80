//! Carrying a deployment out: `up` (start what is missing, replace what changed, in
//! dependency order), `down` (stop and remove in reverse order), and the supervisor that
//! applies restart policies. Each VM is an ordinary hyperxl VM with a detached monitor,
//! named `DEPLOYMENT-VM` and labelled, so `ps`, `logs`, `stop` and `rm` work on it too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyperxl_contract::net::HostEntry;
use hyperxl_image::pull::{self, PullOptions};
use hyperxl_image::{Reference, Store};
use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

use super::file::{Deployment, VmDef};
use super::plan::{self, Action, Existing};
use crate::net::store::{NetStore, NetworkDef};
use crate::net::NetRequest;
use crate::vm::control;
use crate::vm::files;
use crate::vm::host::{reconcile_all, Host};
use crate::vm::launch::{self, LaunchOptions};
use crate::vm::machine::Guest;
use crate::vm::monitor;
use crate::vm::state::{Status, VmState, VmStore};

/// Label naming the deployment a VM belongs to.
pub const LABEL_DEPLOYMENT: &str = "hyperxl.deployment";
/// Label naming the VM within its deployment.
pub const LABEL_VM: &str = "hyperxl.vm";
/// Label holding the definition's fingerprint (see [`VmDef::fingerprint`]).
pub const LABEL_FINGERPRINT: &str = "hyperxl.fingerprint";

/// How long `stop` waits for a VM of a deployment being replaced or taken down.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `up` waits for a VM's app to start before starting the VMs after it.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The VM name hyperxl uses for `def` in `dep`.
pub fn vm_name(dep: &Deployment, def: &VmDef) -> String {
    format!("{}-{}", dep.name, def.name)
}

/// The deployment's VMs as they exist now (reconciled), by name within the deployment.
pub fn members(vms: &VmStore, host: &Host, dep: &str) -> anyhow::Result<BTreeMap<String, VmState>> {
    Ok(reconcile_all(vms, host)?
        .into_iter()
        .filter(|v| v.labels.get(LABEL_DEPLOYMENT).is_some_and(|d| d == dep))
        .filter_map(|v| Some((v.labels.get(LABEL_VM)?.clone(), v)))
        .collect())
}

fn launch_options(
    dep: &Deployment,
    def: &VmDef,
    guest: &Guest,
    net: crate::net::NetRequest,
) -> anyhow::Result<LaunchOptions> {
    let mut labels = def.labels.clone();
    labels.insert(LABEL_DEPLOYMENT.into(), dep.name.clone());
    labels.insert(LABEL_VM.into(), def.name.clone());
    labels.insert(LABEL_FINGERPRINT.into(), def.fingerprint());
    Ok(LaunchOptions {
        image: def.image.clone(),
        name: Some(vm_name(dep, def)),
        auto_remove: false,
        machine: def.machine,
        guest: guest.clone(),
        show_init_lines: false,
        log: def.log,
        labels,
        net,
        pull_observer: None,
        storage: def.storage(&dep.name)?,
    })
}

/// `down --volumes`: removes the volumes made for deployment `dep` (labelled with it),
/// once no VM uses them.
pub fn remove_volumes(state_dir: &Path, dep: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let store = crate::volume::store::VolumeStore::open(state_dir)?;
    let vms = VmStore::open(state_dir)?;
    let mut kept = Vec::new();
    for v in store.list()? {
        if v.labels.get(LABEL_DEPLOYMENT).is_some_and(|d| d == dep) {
            match crate::volume::remove_unused(&store, &vms, &v.name) {
                Ok(()) => writeln!(out, "volume {}: removed", v.name)?,
                Err(e) => kept.push(format!("{e:#}")),
            }
        }
    }
    if !kept.is_empty() {
        bail!("some volumes were kept: {}", kept.join("; "));
    }
    Ok(())
}

/// The network a deployment's VMs share: named after the deployment when that makes a
/// valid network name, else `d` and a hash of it.
pub fn network_name(dep: &str) -> String {
    if crate::net::store::validate_name(dep).is_ok() {
        dep.to_string()
    } else {
        format!("d{}", &hex::encode(Sha256::digest(dep.as_bytes()))[..11])
    }
}

/// Every VM's address in the deployment's network: a hash of its name picks a slot in
/// the upper half of the subnet (ad-hoc `run --network` VMs take the lower half), so a
/// VM keeps its address across restarts and replacements and each peer's `/etc/hosts`
/// can name VMs that have not started yet. Collisions move on, in name order.
fn addresses(def: &NetworkDef, names: &[&str]) -> BTreeMap<String, Ipv4Addr> {
    let all: Vec<Ipv4Addr> = def.subnet.guest_addresses().collect();
    let upper = &all[all.len() / 2..];
    let mut taken = BTreeMap::new();
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    for name in sorted {
        let h = Sha256::digest(name.as_bytes());
        let start = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) as usize % upper.len();
        let ip = (0..upper.len())
            .map(|i| upper[(start + i) % upper.len()])
            .find(|ip| !taken.values().any(|t| t == ip));
        if let Some(ip) = ip {
            taken.insert(name.to_string(), ip);
        }
    }
    taken
}

/// What a deployment VM asks of the network: its fixed address in the deployment's
/// network (defined on first use), its peers by name, its published ports.
fn net_request(state_dir: &Path, dep: &Deployment, def: &VmDef) -> anyhow::Result<NetRequest> {
    let off_by_default = crate::net::default_network_setting().as_deref() == Some("none");
    if def.no_network || (off_by_default && def.ports.is_empty()) {
        return Ok(NetRequest {
            disabled: true,
            ..Default::default()
        });
    }
    let store = NetStore::open(state_dir)?;
    let net_name = network_name(&dep.name);
    let network = {
        let _lock = store.lock()?;
        match store.load(&net_name) {
            Ok(n) => n,
            Err(crate::net::store::NetStoreError::Unknown(_)) => store.create(&net_name, None)?,
            Err(e) => return Err(e.into()),
        }
    };
    let names: Vec<&str> = dep
        .vms
        .iter()
        .filter(|d| !d.no_network)
        .map(|d| d.name.as_str())
        .collect();
    let ips = addresses(&network, &names);
    let hosts = dep
        .vms
        .iter()
        .filter(|d| d.name != def.name)
        .filter_map(|d| {
            Some(HostEntry {
                ip: *ips.get(&d.name)?,
                names: vec![d.name.clone(), vm_name(dep, d)],
            })
        })
        .collect();
    let publish = def
        .ports
        .iter()
        .map(|p| crate::net::publish::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetRequest {
        network: Some(net_name),
        ip: ips.get(&def.name).copied(),
        publish,
        hosts,
        ..Default::default()
    })
}

/// Starts `def` detached (or, given `old`, starts that exited VM again), and waits until
/// its app runs, so VMs that depend on it start after it.
fn start(
    state_dir: &Path,
    vms: &VmStore,
    dep: &Deployment,
    def: &VmDef,
    guest: &Guest,
    old: Option<&VmState>,
    replaced: Option<&VmState>,
) -> anyhow::Result<String> {
    let opts = launch_options(dep, def, guest, net_request(state_dir, dep, def)?)?;
    let mut prepared = launch::prepare(state_dir, &opts, &def.run_flags())?;
    if let Some(old) = old {
        prepared = prepared.restart_of(old);
    }
    if let Some(gone) = replaced {
        // As compose keeps them on a recreate: the image's VOLUME data carries over.
        crate::volume::keep_anonymous(&mut prepared.vm.disks, gone);
    }
    let id = launch::run_detached(state_dir, vms, prepared)?;
    let begun = Instant::now();
    loop {
        match vms.load(&id) {
            Ok(vm) if vm.started_at.is_some() || !vm.status.can_stop() => break,
            Ok(_) if monitor::stop_requested() => bail!("interrupted"),
            Ok(_) if begun.elapsed() > START_TIMEOUT => {
                bail!(
                    "{}: the app did not start within {}s",
                    vm_name(dep, def),
                    START_TIMEOUT.as_secs()
                )
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(id)
}

/// Stops (if running) and removes a VM.
fn remove(vms: &VmStore, host: &Host, vm: &VmState) -> anyhow::Result<()> {
    if vm.status.can_stop() {
        control::stop(vms, host, vm, STOP_TIMEOUT)?;
    }
    vms.remove(&vm.id)?;
    Ok(())
}

/// Pulls every image the deployment names that is not here yet, and builds its disk,
/// before anything starts: a missing image fails `up` with nothing started.
fn fetch_images(state_dir: &Path, dep: &Deployment) -> anyhow::Result<()> {
    let store = Store::open(state_dir).context("opening the image store")?;
    let images: BTreeSet<&str> = dep.vms.iter().map(|v| v.image.as_str()).collect();
    for image in images {
        let r: Reference = image.parse().with_context(|| format!("image {image:?}"))?;
        pull::pull_if_missing(&store, &r, &PullOptions::new(state_dir))
            .with_context(|| format!("pulling {image}"))?;
        store
            .ensure_disk(&r)
            .with_context(|| format!("building the rootfs disk of {image}"))?;
    }
    Ok(())
}

/// `up`: brings the running VMs in line with the file. Prints one line per VM. The
/// caller holds the deployment's lock (see [`lock_deployment`]).
pub fn up(
    state_dir: &Path,
    dep: &Deployment,
    guest: &Guest,
    out: &mut impl Write,
    held: &DeploymentLock,
) -> anyhow::Result<()> {
    let vms = VmStore::open(state_dir)?;
    check_names(dep, &vms.list()?)?;
    fetch_images(state_dir, dep)?;
    stop_supervisor(state_dir, held)?;
    let host = Host::connect();
    let current = members(&vms, &host, &dep.name)?;
    let existing: Vec<Existing> = current
        .iter()
        .map(|(name, vm)| Existing {
            name: name.clone(),
            fingerprint: vm.labels.get(LABEL_FINGERPRINT).cloned(),
            running: vm.status.can_stop(),
        })
        .collect();
    let def_of = |name: &str| dep.vms.iter().find(|d| d.name == name);
    for action in plan::plan_up(dep, &existing) {
        match action {
            Action::Remove(name) => {
                if let Some(vm) = current.get(&name) {
                    remove(&vms, &host, vm)?;
                    writeln!(out, "{}: removed (no longer in the file)", vm.name)?;
                }
            }
            Action::Keep(name) => {
                if let Some(vm) = current.get(&name) {
                    writeln!(out, "{}: unchanged, running", vm.name)?;
                }
            }
            Action::Start(ref name) | Action::Replace(ref name) => {
                let Some(def) = def_of(name) else { continue };
                let gone = current.get(name);
                if let Some(vm) = gone {
                    remove(&vms, &host, vm)?;
                }
                let existed = gone.is_some();
                start(state_dir, &vms, dep, def, guest, None, gone)?;
                writeln!(out, "{}: {}", vm_name(dep, def), outcome(&action, existed))?;
            }
        }
    }
    Ok(())
}

/// What `up` reports for a VM it started: `started` (new), `restarted` (unchanged but
/// not running, as compose says), `replaced` (its definition changed).
fn outcome(action: &Action, existed: bool) -> &'static str {
    match action {
        Action::Replace(_) => "replaced",
        _ if existed => "restarted",
        _ => "started",
    }
}

/// Refuses, before anything starts, a deployment whose VM names are taken by VMs that
/// are not these: `DEPLOYMENT-VM` can be spelled by two deployments (`a-b` + `c` and
/// `a` + `b-c`), or be a plain `run --name`. The recorded labels tell them apart.
pub fn check_names(dep: &Deployment, existing: &[VmState]) -> anyhow::Result<()> {
    for def in &dep.vms {
        let name = vm_name(dep, def);
        let Some(vm) = existing.iter().find(|v| v.name == name) else {
            continue;
        };
        let label = |k: &str| vm.labels.get(k).map(String::as_str);
        if label(LABEL_DEPLOYMENT) == Some(dep.name.as_str())
            && label(LABEL_VM) == Some(def.name.as_str())
        {
            continue;
        }
        let owner = match (label(LABEL_DEPLOYMENT), label(LABEL_VM)) {
            (Some(d), Some(v)) => format!("VM {v:?} of deployment {d:?}"),
            _ => "a VM of no deployment".to_owned(),
        };
        bail!(
            "{}: VM {:?} of deployment {:?} would be called {name:?}, which is taken by {owner} (id {}); rename one of them",
            dep.name,
            def.name,
            dep.name,
            vm.id
        );
    }
    Ok(())
}

/// `down`: stops the supervisor, then stops and removes the deployment's VMs in reverse
/// start order (and any VM labelled with it that the file no longer names). The caller
/// holds the deployment's lock.
pub fn down(
    state_dir: &Path,
    dep: &Deployment,
    out: &mut impl Write,
    held: &DeploymentLock,
) -> anyhow::Result<()> {
    stop_supervisor(state_dir, held)?;
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    let mut current = members(&vms, &host, &dep.name)?;
    let mut order = plan::plan_down(dep);
    order.extend(
        current
            .keys()
            .filter(|k| !order.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    for name in order {
        if let Some(vm) = current.remove(&name) {
            remove(&vms, &host, &vm)?;
            writeln!(out, "{}: removed", vm.name)?;
        }
    }
    // Nothing left behind. Under the deployment's lock no supervisor runs or starts; a
    // process waiting on a lock file removed here takes the next one (`files::lock`).
    let dir = deployment_dir(state_dir, &dep.name);
    for f in [
        "supervisor.log",
        "supervisor.pid",
        "supervisor.lock",
        ".lock",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir(&dir);
    // And its network, as compose removes its default network.
    if dep.vms.iter().any(|d| !d.no_network) {
        let _ = crate::net::remove_network(state_dir, &network_name(&dep.name));
    }
    Ok(())
}

/// `STATE_DIR/deployments/NAME`: the locks, the supervisor's pid file and log.
pub fn deployment_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("deployments").join(name)
}

/// Creates (0700) and returns the deployment's directory.
fn private_deployment_dir(state_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    files::secure_dir(state_dir)?;
    files::private_subdir(&state_dir.join("deployments"))?;
    let dir = deployment_dir(state_dir, name);
    files::private_subdir(&dir)?;
    Ok(dir)
}

/// `deployments/NAME/.lock`, held by `up` and `down` for their whole run and by a
/// supervisor while it starts: one of them acts on a deployment at a time.
pub struct DeploymentLock {
    _lock: Flock<File>,
    name: String,
}

/// Waits for and takes deployment `name`'s lock.
pub fn lock_deployment(state_dir: &Path, name: &str) -> anyhow::Result<DeploymentLock> {
    let mut tries = 0;
    let lock = loop {
        let path = private_deployment_dir(state_dir, name)?.join(".lock");
        match files::lock(&path, true) {
            Ok(lock) => break lock.context("a blocking lock is always taken")?,
            // `down` removed the directory between our mkdir and open: make it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
            Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    };
    Ok(DeploymentLock {
        _lock: lock,
        name: name.to_owned(),
    })
}

/// `deployments/NAME/supervisor.lock`, held by the running supervisor for its whole
/// life: taking it proves that no supervisor runs. Dropping it removes the pid file.
pub struct SupervisorLock {
    _lock: Flock<File>,
    pid_file: PathBuf,
}

impl Drop for SupervisorLock {
    fn drop(&mut self) {
        // Before the lock goes (the field drops after this body).
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// What `supervisor.pid` holds: the pid, and its start time (clock ticks after boot,
/// field 22 of `/proc/PID/stat`), so a reused pid is not taken for the supervisor.
fn pid_record(pid: u32) -> Option<String> {
    Some(format!("{pid} {}\n", process_start(pid)?))
}

/// When process `pid` started, in clock ticks after boot.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The supervisor process `supervisor.pid` names, if that very process still runs.
fn recorded_supervisor(pid_file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start: u64 = words.next()?.parse().ok()?;
    (pid > 0 && process_start(pid) == Some(start)).then_some(pid)
}

/// Makes this process the deployment's supervisor: takes `supervisor.lock` (failing if
/// another supervisor holds it) and records this process in `supervisor.pid`.
pub fn claim_supervisor(state_dir: &Path, held: &DeploymentLock) -> anyhow::Result<SupervisorLock> {
    let dir = private_deployment_dir(state_dir, &held.name)?;
    let path = dir.join("supervisor.lock");
    let pid_file = dir.join("supervisor.pid");
    let Some(lock) =
        files::lock(&path, false).with_context(|| format!("locking {}", path.display()))?
    else {
        let who =
            recorded_supervisor(&pid_file).map_or_else(String::new, |pid| format!(" (pid {pid})"));
        bail!("{} is already supervised{who}", held.name);
    };
    let me = std::process::id();
    let record = pid_record(me).context("reading this process's start time")?;
    files::write_atomic(&pid_file, record.as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(SupervisorLock {
        _lock: lock,
        pid_file,
    })
}

/// Ends a running supervisor of the deployment (the VMs keep running). Only a process
/// that is provably the supervisor is signalled: `supervisor.lock` is held (else none
/// runs, whatever `supervisor.pid` says) and the pid file names a process with the
/// recorded start time. Waits until the lock is free.
pub fn stop_supervisor(state_dir: &Path, held: &DeploymentLock) -> anyhow::Result<()> {
    let name = &held.name;
    let dir = deployment_dir(state_dir, name);
    let (path, pid_file) = (dir.join("supervisor.lock"), dir.join("supervisor.pid"));
    let begun = Instant::now();
    let mut signalled = None;
    loop {
        let free = files::lock(&path, false)
            .with_context(|| format!("locking {}", path.display()))?
            .is_some();
        if free {
            // None runs: a pid file left by a crash names nobody of ours.
            let _ = std::fs::remove_file(&pid_file);
            return Ok(());
        }
        match (signalled, recorded_supervisor(&pid_file)) {
            (None, Some(pid)) => {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                signalled = Some(pid);
            }
            (None, None) if begun.elapsed() > Duration::from_secs(2) => bail!(
                "the supervisor of {name} holds {} but {} does not name it; not signalling",
                path.display(),
                pid_file.display()
            ),
            (Some(pid), _) if begun.elapsed() > Duration::from_secs(10) => {
                bail!("the supervisor of {name} (pid {pid}) does not exit")
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `hyperxl supervise -f FILE` in the background, logging to the deployment's dir.
/// It claims the supervisor lock once the caller lets go of the deployment lock.
pub fn spawn_supervisor(state_dir: &Path, dep: &Deployment, file: &Path) -> anyhow::Result<u32> {
    let dir = private_deployment_dir(state_dir, &dep.name)?;
    let log = files::open_private_append(&dir.join("supervisor.log"))
        .context("creating the supervisor log")?;
    let exe = std::env::current_exe().context("finding the hyperxl executable")?;
    let file = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let child = Command::new(exe)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("supervise")
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the supervisor")?;
    Ok(child.id())
}

/// Consecutive failed starts of one VM after which the supervisor stops trying.
const MAX_START_FAILURES: u32 = 5;

/// How long to wait before the `n`th restart: 0.5 s doubling up to 30 s, so a
/// crash-looping app does not keep dom0 busy building domains (Docker backs off too).
fn restart_delay(n: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << n.min(6))).min(Duration::from_secs(30))
}

/// Applies the restart policies until no VM of the deployment runs or will run again
/// (or a stop signal arrives). `attached`: Ctrl-C also stops the VMs, as `compose up`.
/// `_claimed` (see [`claim_supervisor`]) is held to the end.
pub fn supervise(
    state_dir: &Path,
    dep: &Deployment,
    guest: &Guest,
    attached: bool,
    out: &mut impl Write,
    _claimed: SupervisorLock,
) -> anyhow::Result<()> {
    monitor::install_stop_handlers();
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    let mut reported: BTreeSet<(String, u32)> = BTreeSet::new();
    // Per VM run (id, restart count): when the next start may happen, and how many
    // starts failed (a missing kernel or image fails every time: give up, do not spin).
    let mut due: BTreeMap<(String, u32), (Instant, u32)> = BTreeMap::new();
    let mut given_up: BTreeSet<String> = BTreeSet::new();
    let mut waker = DomainEnds::new();
    loop {
        if monitor::stop_requested() {
            // Ctrl-C on an attached `up` stops the deployment, as `compose up` does;
            // SIGTERM (another `up` or `down` taking over) only ends this supervisor.
            if attached && monitor::interrupted() {
                let _ = writeln!(out, "stopping {}", dep.name);
                let current = members(&vms, &host, &dep.name)?;
                for name in plan::plan_down(dep) {
                    if let Some(vm) = current.get(&name).filter(|v| v.status.can_stop()) {
                        control::stop(&vms, &host, vm, STOP_TIMEOUT)?;
                        let _ = writeln!(out, "{}: stopped", vm.name);
                    }
                }
            }
            break;
        }
        let current = members(&vms, &host, &dep.name)?;
        let mut pending = false;
        for def in &dep.vms {
            let Some(vm) = current.get(&def.name) else {
                continue;
            };
            if vm.status != Status::Exited {
                pending = true;
                continue;
            }
            let code = vm.exit_code.unwrap_or(crate::vm::host::EXIT_CRASHED);
            let restart = !vm.stopped_by_user
                && !given_up.contains(&vm.id)
                && def.restart.should_restart(code, vm.restart_count);
            if reported.insert((vm.id.clone(), vm.restart_count)) {
                let why = if vm.stopped_by_user {
                    ", stopped by the user"
                } else {
                    ""
                };
                let next = if restart { "; restarting" } else { "" };
                let _ = writeln!(out, "{}: exited ({code}){why}{next}", vm.name);
                let _ = out.flush();
            }
            if restart {
                pending = true;
                let key = (vm.id.clone(), vm.restart_count);
                let (when, failed) = *due
                    .entry(key.clone())
                    .or_insert_with(|| (Instant::now() + restart_delay(vm.restart_count), 0));
                if Instant::now() < when {
                    continue;
                }
                match start(state_dir, &vms, dep, def, guest, Some(vm), None) {
                    Ok(_) => {
                        let _ = writeln!(out, "{}: restarted ({})", vm.name, vm.restart_count + 1);
                    }
                    Err(e) if failed + 1 >= MAX_START_FAILURES => {
                        let _ = writeln!(out, "{}: restart failed: {e:#}; giving up", vm.name);
                        given_up.insert(vm.id.clone());
                    }
                    Err(e) => {
                        let _ = writeln!(out, "{}: restart failed: {e:#}", vm.name);
                        let retry = Instant::now() + restart_delay(vm.restart_count + failed + 1);
                        due.insert(key, (retry, failed + 1));
                    }
                }
                let _ = out.flush();
            }
        }
        if !pending {
            let _ = writeln!(out, "{}: nothing left running", dep.name);
            break;
        }
        let next_due = due.values().map(|(when, _)| *when).min();
        waker.wait(next_due);
    }
    Ok(())
}

/// What wakes a supervisor: any domain's end (`@releaseDomain`), a restart falling due,
/// or a stop signal. Idle, it sleeps; for a few seconds after a domain ended it looks
/// again every 300 ms, since the VM's watcher records the end just after the domain is
/// gone. Without xenstore it polls every 300 ms, as before.
struct DomainEnds {
    xs: Option<xenstore_wire::Xenstore<xenstore_wire::AnyTransport>>,
    busy_until: Instant,
}

/// How long a supervisor looks again every 300 ms after a domain ended.
const AFTER_AN_END: Duration = Duration::from_secs(5);
/// The longest an idle supervisor sleeps (it bounds the cost of a missed event).
const SUPERVISOR_IDLE: Duration = Duration::from_secs(10);

impl DomainEnds {
    fn new() -> Self {
        let xs = xenstore_wire::Xenstore::open_default()
            .ok()
            .and_then(|mut xs| xs.watch("@releaseDomain", "ends").ok().map(|()| xs));
        Self {
            xs,
            busy_until: Instant::now() + AFTER_AN_END,
        }
    }

    fn wait(&mut self, next_due: Option<Instant>) {
        let now = Instant::now();
        let short = Duration::from_millis(300);
        let Some(xs) = self.xs.as_mut() else {
            std::thread::sleep(short);
            return;
        };
        let mut timeout = if now < self.busy_until {
            short
        } else {
            SUPERVISOR_IDLE
        };
        if let Some(due) = next_due {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        match xs.next_watch_event(Some(timeout)) {
            Ok(Some(_)) => {
                // Take whatever else is queued, then look closely for a while.
                while let Ok(Some(_)) = xs.next_watch_event(Some(Duration::ZERO)) {}
                self.busy_until = Instant::now() + AFTER_AN_END;
            }
            Ok(None) => {}
            Err(_) => {
                self.xs = None;
                std::thread::sleep(short);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Child;

    use super::*;

    /// A process whose name starts with "hyperxl", as the old pid check wanted.
    fn hyperxl_named_sleeper(dir: &Path, wrapper: &[&str]) -> Child {
        let exe = dir.join("hyperxl-sleep");
        if !exe.exists() {
            std::fs::copy("/bin/sleep", &exe).unwrap();
        }
        let mut cmd = match wrapper {
            [] => Command::new(&exe),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
        };
        cmd.arg("30");
        // A test thread forking meanwhile can hold the copy open for writing for a moment
        // (until its child execs): exec then fails with ETXTBSY. Try again.
        for _ in 0..50 {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
        cmd.spawn().unwrap()
    }

    fn still_running(child: &mut Child) -> bool {
        child.try_wait().unwrap().is_none()
    }

    #[test]
    fn defect5_stale_supervisor_pid_of_another_process_is_not_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = hyperxl_named_sleeper(dir.path(), &[]);
        let state_dir = dir.path().join("state");
        let lock = lock_deployment(&state_dir, "shop").unwrap();
        // A supervisor crashed; its pid now belongs to another VM's monitor.
        let pid_file = deployment_dir(&state_dir, "shop").join("supervisor.pid");
        std::fs::write(&pid_file, other.id().to_string()).unwrap();
        stop_supervisor(&state_dir, &lock).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let survived = still_running(&mut other);
        let _ = other.kill();
        let _ = other.wait();
        assert!(survived, "an unrelated process was signalled");
        assert!(!pid_file.exists(), "the stale pid file is gone");
    }

    #[test]
    fn defect5_a_held_lock_with_a_pid_file_naming_another_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = hyperxl_named_sleeper(dir.path(), &[]);
        let state_dir = dir.path().join("state");
        let lock = lock_deployment(&state_dir, "shop").unwrap();
        let ddir = deployment_dir(&state_dir, "shop");
        // Someone holds the supervisor lock, but the pid file's start time is not the
        // one of the process it names.
        let _held = files::lock(&ddir.join("supervisor.lock"), false)
            .unwrap()
            .unwrap();
        std::fs::write(ddir.join("supervisor.pid"), format!("{} 1\n", other.id())).unwrap();
        let err = stop_supervisor(&state_dir, &lock).unwrap_err();
        let survived = still_running(&mut other);
        let _ = other.kill();
        let _ = other.wait();
        assert!(err.to_string().contains("not signalling"), "{err}");
        assert!(survived);
    }

    #[test]
    fn defect5_the_supervisor_holding_the_lock_is_stopped_and_a_second_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let lock = lock_deployment(&state_dir, "shop").unwrap();
        let ddir = deployment_dir(&state_dir, "shop");
        // The supervisor: a process holding supervisor.lock for its life.
        let lock_path = ddir.join("supervisor.lock");
        let mut sup = hyperxl_named_sleeper(
            dir.path(),
            &["flock", "--no-fork", lock_path.to_str().unwrap()],
        );
        let begun = Instant::now();
        while files::lock(&lock_path, false).unwrap().is_some() {
            assert!(
                begun.elapsed() < Duration::from_secs(5),
                "flock took the lock"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = claim_supervisor(&state_dir, &lock).err().unwrap();
        assert!(err.to_string().contains("already supervised"), "{err}");
        std::fs::write(ddir.join("supervisor.pid"), pid_record(sup.id()).unwrap()).unwrap();
        stop_supervisor(&state_dir, &lock).unwrap();
        let status = sup.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        // Now this process may supervise; the pid file names it until it lets go.
        let claimed = claim_supervisor(&state_dir, &lock).unwrap();
        let pid_file = ddir.join("supervisor.pid");
        assert_eq!(recorded_supervisor(&pid_file), Some(std::process::id()));
        drop(claimed);
        assert!(!pid_file.exists());
    }

    fn labelled(id: &str, name: &str, dep: &str, vm: &str) -> VmState {
        let mut v = VmState::new(id.into(), name.into(), "demo".into());
        v.labels.insert(LABEL_DEPLOYMENT.into(), dep.into());
        v.labels.insert(LABEL_VM.into(), vm.into());
        v
    }

    #[test]
    fn defect12_names_colliding_across_deployments_are_refused_at_up() {
        let a = Deployment::parse("name='a'\n[vm.b-c]\nimage='x'\n", Path::new("a.toml")).unwrap();
        // Deployment a-b's VM c is called a-b-c too.
        let theirs = labelled("aa01", "a-b-c", "a-b", "c");
        let err = check_names(&a, std::slice::from_ref(&theirs)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("taken by VM \"c\" of deployment \"a-b\" (id aa01)"),
            "{text}"
        );
        // A plain `run --name a-b-c`.
        let mut plain = theirs.clone();
        plain.labels.clear();
        assert!(check_names(&a, &[plain]).is_err());
        // Its own VM from an earlier `up` is no collision.
        check_names(&a, &[labelled("bb02", "a-b-c", "a", "b-c")]).unwrap();
        check_names(&a, &[]).unwrap();
    }

    #[test]
    fn defect12_an_unchanged_vm_that_had_exited_is_restarted_not_replaced() {
        assert_eq!(outcome(&Action::Start("db".into()), true), "restarted");
        assert_eq!(outcome(&Action::Start("db".into()), false), "started");
        assert_eq!(outcome(&Action::Replace("db".into()), true), "replaced");
    }

    #[test]
    fn deployment_addresses_are_stable_and_distinct() {
        let def = NetworkDef {
            name: "shop".into(),
            bridge: "hx-shop".into(),
            subnet: "10.89.0.0/24".parse().unwrap(),
            created_at: 0,
        };
        let a = addresses(&def, &["web", "db", "cache"]);
        assert_eq!(
            a,
            addresses(&def, &["cache", "web", "db"]),
            "order does not matter"
        );
        let all: BTreeSet<_> = a.values().collect();
        assert_eq!(all.len(), 3, "distinct: {a:?}");
        // Upper half only: ad-hoc `run --network shop` VMs take the lower half.
        assert!(a.values().all(|ip| ip.octets()[3] >= 128), "{a:?}");
        // A new VM does not move the others (barring a hash collision, not the case here).
        let b = addresses(&def, &["web", "db", "cache", "worker"]);
        for (name, ip) in &a {
            assert_eq!(b[name], *ip, "{name}");
        }
        // A full upper half still gives every VM an address while there are slots.
        let many: Vec<String> = (0..126).map(|i| format!("vm{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(addresses(&def, &names).len(), 126);
        assert_eq!(network_name("shop"), "shop");
        let long = network_name("a-deployment-name-too-long");
        assert!(long.starts_with('d') && long.len() == 12, "{long}");
    }
}
