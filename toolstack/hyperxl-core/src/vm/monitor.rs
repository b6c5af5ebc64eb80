//! Watching one VM from unpause to teardown: console to its log (and to stdout when
//! attached), the guest's status keys, stop requests, and the record of its end.
//!
//! The same code serves an attached `run` (in the foreground) and `run -d` (in the
//! detached `hyperxl monitor` process), so both end a VM the same way.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyperxl_contract::{keys, State};
use libxl::{DomId, DomainOps};
use xenstore_wire::Xenstore;

use super::console;
use super::disk::{self, LoopDisk};
use super::host::{destroy_if_present, read_exit_code, read_guest_key};
use super::state::{self, VmStore};

/// The exit code of a killed VM (see [`state::EXIT_KILLED`]).
pub use super::state::EXIT_KILLED;

/// Where the console goes besides the VM's log.
#[derive(Debug, Clone, Copy)]
pub enum ConsoleOut {
    /// Also to stdout; the init's and the kernel's lines only if `show_init_lines`.
    Attached {
        /// `--debug`.
        show_init_lines: bool,
    },
    /// Only to the log (`run -d`).
    LogOnly,
}

/// Set by SIGINT/SIGTERM: ask the guest to stop.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Seen by the watcher: a stop was asked for through xenstore (by `hyperxl stop`, or
/// this process on a signal), which is recorded as `stopped_by_user` even when `stop`
/// itself could not write the record (a full state disk): a restart policy must not
/// bring back a VM the user stopped.
static STOP_SEEN: AtomicBool = AtomicBool::new(false);
/// Set by SIGINT alone (Ctrl-C), which an attached supervisor treats differently.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    if sig == libc::SIGINT {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
}

/// Whether the stop request came from Ctrl-C (SIGINT) rather than SIGTERM.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Whether SIGINT or SIGTERM arrived since [`install_stop_handlers`].
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// SIGINT and SIGTERM become a graceful stop of the VM; SIGHUP is ignored (a detached
/// monitor outlives its terminal).
pub fn install_stop_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let stop = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
    // SIG_IGN has no handler at all.
    unsafe {
        let _ = sigaction(Signal::SIGINT, &stop);
        let _ = sigaction(Signal::SIGTERM, &stop);
        let _ = sigaction(Signal::SIGHUP, &ignore);
    }
}

/// Unpauses the domain and watches it until the app's exit code is known (or the
/// domain ended without one, which is an error). `ready` is called once the VM runs.
/// The caller records the end (and destroys the domain) with [`finish`], whatever this
/// returns.
pub fn supervise(
    ctx: &dyn DomainOps,
    vms: &VmStore,
    id: &str,
    domid: DomId,
    out: ConsoleOut,
    disks: Vec<LoopDisk>,
    ready: impl FnOnce(),
) -> anyhow::Result<i32> {
    let grace = vm_stop_grace(vms, id);
    let mut xs = Xenstore::open_default().context("connecting to xenstore")?;
    let tty = ctx.console_tty(domid).context("finding the console")?;
    let stop = Arc::new(console::CopierStop::new().context("making the console's stop pipe")?);
    let console = spawn_console(&tty, vms, id, out, stop.clone())?;
    install_stop_handlers();
    reserve_space(vms, id);
    let result = (|| {
        // `kill`/`rm -f` may have come while the domain was being built.
        let vm = vms.load(id)?;
        if vm.killed {
            return Ok(Ending::Killed);
        }
        // A pooled VM's domain too: `pool::take` paused it until now.
        ctx.unpause(domid).context("unpausing the domain")?;
        super::timing::mark("unpause");
        best_effort(vms.update_runtime(id, state::VmState::mark_running));
        ready();
        wait_for_exit(ctx, &mut xs, domid, grace, vms, id, disks)
    })();
    // The domain is torn down by `finish`, which every caller runs next. First the
    // console drains what the guest wrote: after a reported exit code, up to the init's
    // last line (written before the code, so usually through already); else (a kill,
    // a crash, a failed init) for a moment.
    match result {
        Ok(Ending::Reported(_)) => {
            if !stop.wait_app_exited(APP_EXITED_WAIT) {
                warn("the console did not show the app's end; its output may be cut short");
            }
        }
        _ => thread::sleep(Duration::from_millis(100)),
    }
    stop.stop();
    let _ = console.join();
    result.map(Ending::code)
}

/// How a run that was watched to its end ended.
enum Ending {
    /// The guest reported the app's exit code.
    Reported(i32),
    /// The domain went without a code after a kill (`kill`, `rm -f`, an expired stop).
    Killed,
}

impl Ending {
    fn code(self) -> i32 {
        match self {
            Ending::Reported(code) => code,
            Ending::Killed => EXIT_KILLED,
        }
    }
}

/// The longest the watcher waits for the init's last console line after the exit code:
/// a guest that never prints it only delays its own teardown.
const APP_EXITED_WAIT: Duration = Duration::from_secs(1);

/// What a watcher keeps back in the VM's dir while it runs, so that the final record
/// can still be written when the state disk fills up meanwhile (a state file and its
/// temp copy need a few KiB).
const RESERVE_BYTES: usize = 64 * 1024;
const RESERVE_FILE: &str = "reserve";

/// Keeps [`RESERVE_BYTES`] of disk for the final record (best effort).
fn reserve_space(vms: &VmStore, id: &str) {
    let path = vms.dir(id).join(RESERVE_FILE);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&[0u8; RESERVE_BYTES])?;
            f.sync_all()
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
}

/// A record update the VM does not depend on: on failure (a full state disk) the VM
/// keeps running and the watcher says why on stderr.
fn best_effort<T, E: std::fmt::Display>(r: Result<T, E>) {
    if let Err(e) = r {
        warn(&format!("recording the VM's state: {e}"));
    }
}

/// One line on stderr that cannot fail the watcher (a detached monitor's stderr is a
/// file on the state disk, which may be full; `eprintln!` would panic there).
fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr(), "hyperxl: {msg}");
}

/// The stop grace period the VM's spec asked for.
fn vm_stop_grace(vms: &VmStore, id: &str) -> u32 {
    std::fs::read(vms.dir(id).join("spec.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<hyperxl_contract::Spec>(&b).ok())
        .map_or(hyperxl_contract::DEFAULT_STOP_GRACE_SECS, |s| {
            s.stop_grace_secs
        })
}

/// Records a VM's end, whatever it was: no domain, no loop device left, and with
/// `--rm` no state either. Returns the exit code to report. `ctx`: Xen (a fake in
/// tests), or none when it cannot be reached (the record is written all the same).
pub fn finish(
    ctx: Option<&dyn DomainOps>,
    vms: &VmStore,
    id: &str,
    domid: Option<DomId>,
    result: anyhow::Result<i32>,
) -> anyhow::Result<i32> {
    // The domain this process knows of goes first: even if the record cannot be read.
    if let (Some(ctx), Some(domid)) = (ctx, domid) {
        let _ = destroy_if_present(ctx, domid);
    }
    let vm = vms.load(id)?;
    let recorded = vm.domid.map(DomId);
    if let (Some(ctx), Some(other)) = (ctx, recorded.filter(|d| Some(*d) != domid)) {
        let _ = destroy_if_present(ctx, other);
    }
    super::timing::mark("destroy");
    // With the domain gone: its rules and its address go too, while blkback lets go of
    // the disks.
    let net_gone = {
        let (state_dir, vm) = (vms.state_dir().to_path_buf(), vm.clone());
        std::thread::spawn(move || crate::net::detach(&state_dir, &vm))
    };
    let mut still_bound = Vec::new();
    for (dev, file) in vm.loops() {
        // blkback closes the device shortly after the domain is gone; autoclear then
        // frees it. Wait for that so `--rm` really leaves nothing behind.
        if !disk::wait_freed(&dev, Duration::from_secs(3)) {
            let _ = disk::detach(&dev, id, file.as_deref());
            if disk::still_ours(&dev, id, file.as_deref()) {
                still_bound.push(dev);
            }
        }
    }
    let _ = net_gone.join();
    super::timing::mark("release");
    // The VM's own snapshots and scratch disk go with its run; volumes stay.
    crate::volume::remove_private_files(&vm);
    let record = |vm: &mut state::VmState| {
        if STOP_SEEN.load(Ordering::SeqCst) {
            vm.mark_stopped_by_user();
        }
        // (A VM killed on purpose ends 137 whatever the error: see `record_end`.)
        let outcome = match &result {
            Ok(code) => Ok(*code),
            Err(err) => Err(format!("{err:#}")),
        };
        vm.record_end(outcome, &still_bound);
    };
    // On a full state disk the space kept back at the start takes this record.
    let reserve = vms.dir(id).join(RESERVE_FILE);
    let vm = vms.update_with_reserve(id, &reserve, record)?;
    let _ = std::fs::remove_file(&reserve);
    let recorded = if vm.auto_remove {
        let _ = vms.bury(&vm);
        let removed = vms.remove(id);
        crate::volume::remove_anonymous(vms.state_dir(), vms, &vm);
        removed
    } else {
        Ok(())
    };
    super::timing::mark("teardown");
    if vm.labels.contains_key(super::pool::LABEL_FROM_POOL) {
        // The run is over: its pooled VM is replaced now, if not already.
        super::pool::refill_once(vms.state_dir());
    }
    // The run's own error matters more than a failure to record it.
    let code = result?;
    recorded?;
    Ok(code)
}

/// Polls the guest's status keys and the domain until the app's exit code is known.
fn wait_for_exit<T: xenstore_wire::Transport>(
    ctx: &dyn DomainOps,
    xs: &mut Xenstore<T>,
    domid: DomId,
    grace: u32,
    vms: &VmStore,
    id: &str,
    mut disks: Vec<LoopDisk>,
) -> anyhow::Result<Ending> {
    let mut stop_sent: Option<Instant> = None;
    let mut gone_at: Option<Instant> = None;
    let mut started = false;
    let mut destroyed = false;
    // A VM taken from the pool: its refill starts once the app has run a while (or
    // at its end, in `finish`).
    let pooled = vms
        .load(id)
        .is_ok_and(|vm| vm.labels.contains_key(super::pool::LABEL_FROM_POOL));
    let mut refill_at: Option<Instant> = None;
    // Woken by the guest's status keys and by any domain's death, not by a timer: on a
    // busy dom0 (or one emulated CPU) polling would take time from the guests.
    xs.watch(&keys::abs(domid.0, keys::STATUS_DIR), "status")
        .context("watching the guest's status")?;
    xs.watch("@releaseDomain", "release")
        .context("watching for the domain's end")?;
    loop {
        if let Some(code) = read_exit_code(xs, domid.0) {
            // The key is dom0's own (the guest cannot write below `hyperxl/`).
            let stop_key = xs.read(&keys::abs(domid.0, keys::SHUTDOWN));
            if stop_key.is_ok_and(|v| v == keys::STOP_REQUEST.as_bytes()) {
                STOP_SEEN.store(true, Ordering::SeqCst);
            }
            if !started {
                // Started and ended between two polls.
                super::timing::mark("boot-to-started");
            }
            super::timing::mark("app");
            if let Some(e) = read_guest_key(xs, domid.0, keys::status::ERROR) {
                warn(&e);
                best_effort(vms.update(id, |vm| vm.error = Some(e)));
            }
            return Ok(Ending::Reported(code));
        }
        let guest_state = read_guest_key(xs, domid.0, keys::status::STATE);
        if guest_state.as_deref() == Some(State::Failed.as_str()) {
            let err = read_guest_key(xs, domid.0, keys::status::ERROR)
                .unwrap_or_else(|| "unknown error".into());
            bail!("the guest init failed: {err}");
        }
        if !started && read_guest_key(xs, domid.0, keys::status::STARTED).is_some() {
            started = true;
            super::timing::mark("boot-to-started");
            // The guest mounted its disks: blkback holds the loop devices now.
            for d in disks.drain(..) {
                d.release();
            }
            best_effort(vms.update_runtime(id, |vm| vm.started_at = Some(state::now())));
            if pooled {
                refill_at = Some(Instant::now() + super::pool::REFILL_AFTER_START);
            }
        }
        if refill_at.is_some_and(|t| Instant::now() >= t) {
            refill_at = None;
            super::pool::refill_once(vms.state_dir());
        }
        if STOP_REQUESTED.load(Ordering::SeqCst) && stop_sent.is_none() {
            let _ = xs.write(
                &keys::abs(domid.0, keys::SHUTDOWN),
                keys::STOP_REQUEST.as_bytes(),
            );
            stop_sent = Some(Instant::now());
        }
        let overdue = Duration::from_secs(u64::from(grace) + 5);
        if !destroyed && stop_sent.is_some_and(|t| t.elapsed() > overdue) {
            destroyed = true;
            // Recorded for `finish` (and reconcile); this watcher also knows it itself.
            best_effort(vms.update(id, state::VmState::mark_killed));
            let _ = destroy_if_present(ctx, domid);
        }
        let info = ctx.domain_info(domid).context("querying the domain")?;
        if info.as_ref().is_none_or(|i| i.shutdown || i.dying) {
            // The guest writes its exit code before powering off; allow a last read.
            let t = *gone_at.get_or_insert_with(Instant::now);
            if t.elapsed() > Duration::from_millis(500) || info.is_none() {
                let killed = destroyed || vms.load(id).is_ok_and(|vm| vm.killed);
                if read_exit_code(xs, domid.0).is_none() && killed {
                    return Ok(Ending::Killed);
                }
                if info.is_none() {
                    // Gone between two reads: one more look at the exit code.
                    if let Some(code) = read_exit_code(xs, domid.0) {
                        return Ok(Ending::Reported(code));
                    }
                }
                bail!("the VM's domain died without reporting an exit code (crashed?)");
            }
        }
        // Asleep until a watch fires or a stop signal interrupts the wait; a short
        // timeout only while a deadline runs (a stop's grace, a shut-down domain).
        let deadline_running = stop_sent.is_some() || gone_at.is_some();
        let wait = if deadline_running {
            BUSY_WAIT
        } else {
            IDLE_WAIT
        };
        let until_refill = refill_at.map_or(wait, |t| t.saturating_duration_since(Instant::now()));
        wait_for_event(xs, wait.min(until_refill))?;
    }
}

/// The longest an idle watcher sleeps: every event that matters (the guest's status
/// keys, any domain's end, SIGINT/SIGTERM, which interrupt the wait) wakes it earlier;
/// this only bounds the cost of a missed one.
const IDLE_WAIT: Duration = Duration::from_secs(10);
/// The wait while a deadline runs.
const BUSY_WAIT: Duration = Duration::from_millis(250);

/// Blocks until a watch fires (taking every event already queued), a signal arrives, or
/// `timeout` passed.
fn wait_for_event<T: xenstore_wire::Transport>(
    xs: &mut Xenstore<T>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut timeout = timeout;
    let begun = Instant::now();
    loop {
        match xs.next_watch_event(Some(timeout)) {
            // A guest writing its keys in a loop must not keep us from stop requests.
            Ok(Some(_)) if begun.elapsed() > BUSY_WAIT => return Ok(()),
            Ok(Some(_)) => timeout = Duration::ZERO,
            Ok(None) => return Ok(()),
            // A signal (Ctrl-C): handled by the caller's next round.
            Err(xenstore_wire::XenstoreError::Io(e))
                if e.kind() == std::io::ErrorKind::Interrupted =>
            {
                return Ok(())
            }
            Err(e) => return Err(e).context("waiting for xenstore events"),
        }
    }
}

/// Starts copying the guest console to the VM's log (rotated at the VM's limits) and,
/// when attached, to stdout (hiding the init's own lines unless asked), until `done`.
fn spawn_console(
    tty: &Path,
    vms: &VmStore,
    id: &str,
    out: ConsoleOut,
    stop: Arc<console::CopierStop>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let vm = vms.load(id)?;
    let limits = vm.log;
    // A VM taken from the pool: its boot before the spec is not the app's output.
    let skip_until = vm
        .labels
        .contains_key(super::pool::LABEL_FROM_POOL)
        .then_some(hyperxl_contract::console::SPEC_RECEIVED);
    let log_path = vms.dir(id).join("console.log");
    let log = console::ConsoleLog::open(&log_path, limits)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let timings = super::timing::guest_enabled();
    let sink: Option<console::LineSink> = match out {
        ConsoleOut::LogOnly if !timings => None,
        ConsoleOut::LogOnly => Some(Box::new(super::timing::guest_line)),
        ConsoleOut::Attached { show_init_lines } => Some(Box::new(move |line: &[u8]| {
            if timings {
                super::timing::guest_line(line);
            }
            let _ = super::logs::print_line(line, show_init_lines);
        })),
    };
    console::spawn_copier(tty, log, sink, skip_until, stop)
}

/// The guest kernel's and the init's own console lines (hidden unless `--debug`).
pub fn is_init_line(line: &str) -> bool {
    hyperxl_contract::console::is_init_line(line)
        || line.starts_with("reboot: ")
        || is_kernel_line(line)
}

/// A kernel message as printk prints it: `[  12.345678] ...`. Other lines that start
/// with `[` are the app's (log formats often do).
fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once("] ") else {
        return false;
    };
    let stamp = stamp.trim_start();
    let mut parts = stamp.splitn(2, '.');
    let (Some(secs), Some(frac)) = (parts.next(), parts.next()) else {
        return false;
    };
    !secs.is_empty()
        && !frac.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Opens (creating) a file the monitor's own messages go to.
pub fn open_monitor_log(vms: &VmStore, id: &str) -> std::io::Result<File> {
    super::files::open_private_append(&vms.dir(id).join("monitor.log"))
}

#[cfg(test)]
mod tests {
    use super::is_init_line;

    #[test]
    fn only_the_kernels_and_the_inits_lines_are_hidden() {
        for hidden in [
            "[    0.123456] Linux version 6.1",
            "[12345.000001] xen-blkfront: ...",
            "hyperstart: mounted /dev/xvda",
            "reboot: Power down",
        ] {
            assert!(is_init_line(hidden), "{hidden}");
        }
        for shown in [
            "[2024-01-01 10:00:00 +0000] [1] [INFO] Booting worker",
            "[main] INFO ready",
            "[1, 2, 3]",
            "[ 12.x] not a stamp",
            "hello",
        ] {
            assert!(!is_init_line(shown), "{shown}");
        }
    }

    /// The watcher's teardown against a fake Xen (no root, no Xen needed).
    mod finish {
        use libxl::fake::FakeDomainOps;
        use libxl::DomId;

        use super::super::{finish, EXIT_KILLED};
        use crate::vm::state::{Status, VmState, VmStore};

        fn domain(xen: &FakeDomainOps, name: &str) -> DomId {
            xen.add_domain(name, false)
        }

        fn record(vms: &VmStore, name: &str, domid: Option<DomId>) -> VmState {
            let mut vm = VmState::new(crate::vm::state::new_id(), name.into(), "img".into());
            vm.domid = domid.map(|d| d.0);
            vm.mark_running();
            vms.create(&vm).unwrap();
            vm
        }

        #[test]
        fn the_domain_goes_and_the_exit_code_is_recorded() {
            let dir = tempfile::tempdir().unwrap();
            let vms = VmStore::open(dir.path()).unwrap();
            let xen = FakeDomainOps::new();
            let (mine, other) = (domain(&xen, "hyperxl-a"), domain(&xen, "hyperxl-b"));
            let vm = record(&vms, "a", Some(mine));
            assert_eq!(
                finish(Some(&xen), &vms, &vm.id, Some(mine), Ok(3)).unwrap(),
                3
            );
            assert_eq!(xen.domids(), [other], "only its own domain goes");
            let ended = vms.load(&vm.id).unwrap();
            assert_eq!(
                (ended.status, ended.exit_code, ended.domid),
                (Status::Exited, Some(3), None)
            );
        }

        /// A watcher that knows one domain while the record names another (a restart,
        /// a domain found by name): both go; with `--rm` the record goes too, and the
        /// run's own error is what the caller hears.
        #[test]
        fn the_recorded_domain_goes_too_and_rm_removes_the_record() {
            let dir = tempfile::tempdir().unwrap();
            let vms = VmStore::open(dir.path()).unwrap();
            let xen = FakeDomainOps::new();
            let (known, recorded) = (domain(&xen, "hyperxl-c"), domain(&xen, "hyperxl-c2"));
            let vm = record(&vms, "c", Some(recorded));
            vms.update(&vm.id, |v| v.auto_remove = true).unwrap();
            let err = finish(
                Some(&xen),
                &vms,
                &vm.id,
                Some(known),
                Err(anyhow::anyhow!("the guest crashed")),
            )
            .unwrap_err();
            assert!(err.to_string().contains("crashed"), "{err}");
            assert!(xen.domids().is_empty());
            assert!(vms.load(&vm.id).is_err(), "--rm removes the record");
        }

        /// Killed on purpose: no exit code from the guest is 137 and no failure; a
        /// domain already gone is no error; without Xen the record is written anyway.
        #[test]
        fn a_killed_vm_ends_137_even_without_xen() {
            let dir = tempfile::tempdir().unwrap();
            let vms = VmStore::open(dir.path()).unwrap();
            let xen = FakeDomainOps::new();
            let vm = record(&vms, "k", Some(DomId(42)));
            vms.update(&vm.id, VmState::mark_killed).unwrap();
            let _ = finish(
                Some(&xen),
                &vms,
                &vm.id,
                Some(DomId(42)),
                Err(anyhow::anyhow!("x")),
            );
            let ended = vms.load(&vm.id).unwrap();
            assert_eq!((ended.exit_code, ended.error), (Some(EXIT_KILLED), None));

            let other = record(&vms, "n", None);
            let _ = finish(None, &vms, &other.id, None, Ok(0));
            assert_eq!(vms.load(&other.id).unwrap().status, Status::Exited);
        }
    }

    /// The watcher's wait loop against a fake Xen and a fake xenstored: what the guest
    /// wrote (hostile or not) and what became of its domain decide the result.
    mod wait {
        use hyperxl_contract::keys;
        use libxl::fake::FakeDomainOps;
        use libxl::{DomId, DomainOps, ShutdownReason};
        use xenstore_wire::fake::FakeXenstored;
        use xenstore_wire::{Access, Perm, Xenstore};

        use super::super::{wait_for_exit, EXIT_KILLED};
        use crate::vm::host::EXIT_CRASHED;
        use crate::vm::state::{VmState, VmStore};

        struct Setup {
            _dir: tempfile::TempDir,
            vms: VmStore,
            id: String,
            xen: FakeDomainOps,
            domid: DomId,
            xs: Xenstore<FakeXenstored>,
        }

        /// A running domain whose guest wrote `keys` (as its own, below `data/`).
        fn running(guest_keys: &[(&str, &str)]) -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let vms = VmStore::open(dir.path()).unwrap();
            let xen = FakeDomainOps::new();
            let domid = xen.add_domain("hyperxl-w", true);
            let mut vm = VmState::new(crate::vm::state::new_id(), "w".into(), "img".into());
            vm.domid = Some(domid.0);
            vm.mark_running();
            vms.create(&vm).unwrap();
            let mut store = FakeXenstored::new(0);
            for (k, v) in guest_keys {
                let perms = vec![Perm::new(Access::None, domid.0)];
                store.put(&keys::abs(domid.0, k), v.as_bytes(), perms);
            }
            Setup {
                _dir: dir,
                vms,
                id: vm.id,
                xen,
                domid,
                xs: Xenstore::new(store),
            }
        }

        fn wait(s: &mut Setup) -> anyhow::Result<i32> {
            wait_for_exit(&s.xen, &mut s.xs, s.domid, 1, &s.vms, &s.id, Vec::new())
                .map(super::super::Ending::code)
        }

        #[test]
        fn the_exit_code_ends_the_wait_and_the_guests_error_is_kept_safe() {
            let mut s = running(&[
                (keys::status::STARTED, "1"),
                (keys::status::EXIT_CODE, "3"),
                (keys::status::ERROR, "exec: \x1b[2Jgone\u{202e}"),
            ]);
            assert_eq!(wait(&mut s).unwrap(), 3);
            let vm = s.vms.load(&s.id).unwrap();
            assert_eq!(vm.error.as_deref(), Some("exec: ?[2Jgone?"));
        }

        #[test]
        fn an_exit_code_that_is_not_a_number_is_a_crash() {
            for hostile in ["99999999999", "-", "3; rm -rf /", "0x1"] {
                let mut s = running(&[(keys::status::EXIT_CODE, hostile)]);
                assert_eq!(wait(&mut s).unwrap(), EXIT_CRASHED, "{hostile:?}");
            }
        }

        #[test]
        fn a_failed_init_is_an_error_that_names_its_reason() {
            let mut s = running(&[
                (keys::status::STATE, "failed"),
                (keys::status::ERROR, "mounting /dev/xvda: no such device"),
            ]);
            let err = wait(&mut s).unwrap_err().to_string();
            assert_eq!(
                err,
                "the guest init failed: mounting /dev/xvda: no such device"
            );
        }

        /// Started, then the domain shut down with no exit code: a crash, once the
        /// last look (500 ms) found none; the start was recorded on the way.
        #[test]
        fn a_domain_that_ends_without_an_exit_code_crashed() {
            let mut s = running(&[(keys::status::STARTED, "1")]);
            s.xen.guest_exits(s.domid, ShutdownReason::Crash);
            let err = wait(&mut s).unwrap_err().to_string();
            assert!(err.contains("died without reporting an exit code"), "{err}");
            assert!(s.vms.load(&s.id).unwrap().started_at.is_some());
        }

        /// The same end after `kill` (recorded by another process): 137, no error.
        #[test]
        fn a_killed_domain_that_is_gone_ends_137() {
            let mut s = running(&[(keys::status::STARTED, "1")]);
            s.vms.update(&s.id, VmState::mark_killed).unwrap();
            s.xen.destroy(s.domid).unwrap();
            assert_eq!(wait(&mut s).unwrap(), EXIT_KILLED);
        }
    }
}
