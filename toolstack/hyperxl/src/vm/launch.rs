//! One attached `run`: image -> disk -> spec -> domain -> console -> exit code, with the
//! domain, its disk and (with `--rm`) its state cleaned up on every way out.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyperxl_contract::{keys, State};
use hyperxl_image::pull::{self, PullOptions};
use hyperxl_image::{Reference, Store};
use libxl::{Context, Disk, DomId, DomainConfig, DomainOps, DomainType};
use xenstore_wire::{Access, Perm, Xenstore};

use super::spec::{self, RunFlags};
use super::state::{self, Status, VmState, VmStore};

/// What `run` decided about the VM itself.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The image as the user wrote it.
    pub image: String,
    /// `--name`.
    pub name: Option<String>,
    /// `--rm`.
    pub auto_remove: bool,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// PV instead of PVH.
    pub pv: bool,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Pass the init's `hyperstart: ` lines and kernel messages to stdout too.
    pub show_init_lines: bool,
}

/// Exit status when the VM died without reporting one, or the init failed.
const EXIT_CRASHED: i32 = 125;

/// Set by SIGINT/SIGTERM: ask the guest to stop.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Runs the image attached; returns the app's exit code.
pub fn run_attached(
    state_dir: &Path,
    opts: &LaunchOptions,
    flags: &RunFlags,
) -> anyhow::Result<i32> {
    // 1-3: image, disk, spec: all before any domain exists.
    let reference: Reference = opts
        .image
        .parse()
        .with_context(|| format!("image {:?}", opts.image))?;
    let store = Store::open(state_dir).context("opening the image store")?;
    pull::pull_if_missing(&store, &reference, &PullOptions::new(state_dir))
        .with_context(|| format!("pulling {}", opts.image))?;
    let disk = store
        .ensure_disk(&reference)
        .context("building the rootfs disk")?;
    let config = store
        .image_config(&reference)
        .context("reading the image config")?;
    let vms = VmStore::open(state_dir)?;
    let id = state::new_id();
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", &id[..8]));
    state::validate_name(&name)?;
    let mut flags = flags.clone();
    if flags.hostname.is_empty() {
        flags.hostname = name.clone();
    }
    let spec = spec::build(&config, &flags).context("building the container spec")?;
    for (what, path) in [("kernel", &opts.kernel), ("initramfs", &opts.initrd)] {
        if !path.is_file() {
            bail!("guest {what} {} not found (build it with scripts/build-guest, or pass --kernel/--initrd)", path.display());
        }
    }
    let domain_config = DomainConfig::builder(format!("hyperxl-{name}"))
        .domain_type(if opts.pv {
            DomainType::Pv
        } else {
            DomainType::Pvh
        })
        .kernel(&opts.kernel)
        .ramdisk(&opts.initrd)
        .cmdline("console=hvc0 quiet loglevel=1")
        .memory_mib(opts.memory_mib)
        .vcpus(opts.vcpus)
        .disk(Disk::new(&disk, "xvda").readonly())
        .build()
        .context("building the domain config")?;
    let ctx = Context::new()?;

    // 4: record the VM (the store lock makes the name check and the write one step).
    let mut vm = VmState {
        id: id.clone(),
        name: name.clone(),
        image: opts.image.clone(),
        command: spec.args.clone(),
        kind: if opts.pv { "pv" } else { "pvh" }.into(),
        status: Status::Created,
        domid: None,
        exit_code: None,
        error: None,
        loop_device: None,
        monitor_pid: Some(std::process::id()),
        auto_remove: opts.auto_remove,
        created_at: state::now(),
        started_at: None,
        finished_at: None,
    };
    {
        let _lock = vms.lock()?;
        vms.create(&vm)?;
    }
    let result = boot_and_attach(&ctx, &vms, &mut vm, &domain_config, &spec, opts);
    // Whatever happened: no domain left behind.
    if let Some(domid) = vm.domid {
        let _ = ctx.destroy(DomId(domid));
    }
    vm.status = Status::Exited;
    vm.domid = None;
    vm.finished_at = Some(state::now());
    match &result {
        Ok(code) => vm.exit_code = Some(*code),
        Err(err) => vm.error = Some(format!("{err:#}")),
    }
    let recorded = if opts.auto_remove {
        vms.remove(&vm.id)
    } else {
        vms.save(&vm)
    };
    // The run's own error matters more than a failure to record it.
    let code = result?;
    recorded?;
    Ok(code)
}

fn boot_and_attach(
    ctx: &Context,
    vms: &VmStore,
    vm: &mut VmState,
    config: &DomainConfig,
    spec: &hyperxl_contract::Spec,
    opts: &LaunchOptions,
) -> anyhow::Result<i32> {
    // 5: the domain, paused.
    let domid = ctx.create_paused(config).context("creating the domain")?;
    vm.domid = Some(domid.0);
    vms.save(vm)?;

    // 6: the spec, readable but not writable by the guest.
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let dir = keys::abs(domid.0, "hyperxl");
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

    // 7: console to stdout and the VM's log, then unpause.
    let tty = ctx.console_tty(domid).context("finding the console")?;
    let log_path = vms.dir(&vm.id).join("console.log");
    let done = Arc::new(AtomicBool::new(false));
    let console = spawn_console(&tty, &log_path, opts.show_init_lines, done.clone())?;
    install_stop_handlers();
    ctx.unpause(domid).context("unpausing the domain")?;
    vm.status = Status::Running;
    vms.save(vm)?;

    // 8: wait for the guest's report or the domain's end.
    let code = wait_for_exit(ctx, &mut xs, domid, spec.stop_grace_secs, vm)?;
    let _ = ctx.destroy(domid);
    vm.domid = None;
    // Let the console drain what the guest wrote before it powered off.
    thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let _ = console.join();
    Ok(code)
}

fn install_stop_handlers() {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_stop_signal),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
    }
}

/// Polls the guest's status keys and the domain until the app's exit code is known.
fn wait_for_exit<T: xenstore_wire::Transport>(
    ctx: &Context,
    xs: &mut Xenstore<T>,
    domid: DomId,
    grace: u32,
    vm: &mut VmState,
) -> anyhow::Result<i32> {
    // Everything under data/ is written by the guest: untrusted. Control characters are
    // replaced so a guest cannot drive the operator's terminal through hyperxl's stderr.
    let read = |xs: &mut Xenstore<T>, key: &str| {
        xs.read_string(&keys::abs(domid.0, key))
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim()
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect::<String>()
            })
    };
    let mut stop_sent: Option<Instant> = None;
    let mut gone_at: Option<Instant> = None;
    loop {
        if let Some(code) = read(xs, keys::status::EXIT_CODE) {
            let code = code.trim().parse::<i32>().unwrap_or(EXIT_CRASHED);
            vm.error = read(xs, keys::status::ERROR);
            if let Some(e) = &vm.error {
                eprintln!("hyperxl: {e}");
            }
            return Ok(code);
        }
        if read(xs, keys::status::STATE).as_deref() == Some(State::Failed.as_str()) {
            let err = read(xs, keys::status::ERROR).unwrap_or_else(|| "unknown error".into());
            bail!("the guest init failed: {err}");
        }
        if vm.started_at.is_none() && read(xs, keys::status::STARTED).is_some() {
            vm.started_at = Some(state::now());
        }
        if STOP_REQUESTED.load(Ordering::SeqCst) && stop_sent.is_none() {
            let _ = xs.write(&keys::abs(domid.0, keys::SHUTDOWN), b"stop");
            stop_sent = Some(Instant::now());
        }
        if let Some(t) = stop_sent {
            if t.elapsed() > Duration::from_secs(u64::from(grace) + 5) {
                let _ = ctx.destroy(domid);
                bail!("the VM did not stop within {grace}s; destroyed it");
            }
        }
        let info = ctx.domain_info(domid).context("querying the domain")?;
        let ended = info.as_ref().is_none_or(|i| i.shutdown || i.dying);
        if ended {
            // The guest writes its exit code before powering off; allow a last read.
            let t = *gone_at.get_or_insert_with(Instant::now);
            if t.elapsed() > Duration::from_millis(500) {
                bail!("the VM's domain died without reporting an exit code (crashed?)");
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Copies the guest console to stdout (hiding the init's own lines unless asked) and
/// to the VM's console log, until `done`.
fn spawn_console(
    tty: &Path,
    log_path: &Path,
    show_init_lines: bool,
    done: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // Non-blocking, so the console thread can notice the end; never our ctty.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(tty)
        .with_context(|| format!("opening the console {}", tty.display()))?;
    if let Ok(mut t) = nix::sys::termios::tcgetattr(&file) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ = nix::sys::termios::tcsetattr(&file, nix::sys::termios::SetArg::TCSANOW, &t);
    }
    let mut log =
        File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    Ok(thread::spawn(move || {
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let stdout = std::io::stdout();
        let mut emit = |line: &[u8]| {
            let _ = log.write_all(line);
            let text = String::from_utf8_lossy(line);
            let trimmed = text.trim_end_matches(['\r', '\n']);
            let is_init = trimmed.starts_with("hyperstart: ")
                || trimmed.starts_with('[')
                || trimmed.starts_with("reboot: ");
            if show_init_lines || !is_init {
                let mut out = stdout.lock();
                let _ = out.write_all(trimmed.as_bytes());
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
        };
        loop {
            // A non-blocking read may stop mid-line: keep the part until its newline.
            match reader.read_until(b'\n', &mut line) {
                Ok(_) if line.ends_with(b"\n") => {
                    emit(&line);
                    line.clear();
                    continue;
                }
                _ => {}
            }
            if done.load(Ordering::SeqCst) {
                if !line.is_empty() {
                    emit(&line);
                }
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }))
}
