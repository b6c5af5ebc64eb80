//! PID 1 duties while the app runs: reap every child, forward shutdown requests as
//! SIGTERM then SIGKILL after the grace period, and return the app's exit code.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use hyperxl_contract::{exit, keys};
use nix::errno::Errno;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use xenstore_wire::{Transport, Xenstore};

use crate::console::say;

static MAIN_PID: AtomicI32 = AtomicI32::new(0);
static GRACE_SECS: AtomicU32 = AtomicU32::new(10);
static TERM_SENT: AtomicBool = AtomicBool::new(false);
static TIMER_STARTED: AtomicBool = AtomicBool::new(false);
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Sends SIGTERM to the app at most once; async-signal-safe (atomics and kill only).
fn term_once() {
    let pid = MAIN_PID.load(Ordering::SeqCst);
    if pid > 0 && !TERM_SENT.swap(true, Ordering::SeqCst) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
    // Forward at once, so a signal landing just before waitpid() blocks is not lost.
    term_once();
}

/// Signals that ask PID 1 to stop: SIGTERM/SIGINT (ctrl-alt-del, reboot), SIGUSR1
/// (busybox halt), SIGUSR2 (busybox poweroff), SIGPWR.
pub const STOP_SIGNALS: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPWR,
];

/// Installs the stop-signal handlers (without SA_RESTART, so waitpid returns EINTR).
pub fn install_signal_handlers() {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in STOP_SIGNALS {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(s, &act) } {
            say!("sigaction {s}: {e}");
        }
    }
}

/// Records the app's pid and grace period for [`request_stop`].
pub fn set_main(pid: Pid, grace_secs: u32) {
    GRACE_SECS.store(grace_secs, Ordering::SeqCst);
    MAIN_PID.store(pid.as_raw(), Ordering::SeqCst);
}

/// Sends SIGTERM to the app once, and SIGKILL after the grace period.
pub fn request_stop(reason: &str) {
    let pid = MAIN_PID.load(Ordering::SeqCst);
    if pid <= 0 || TIMER_STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let grace = GRACE_SECS.load(Ordering::SeqCst);
    say!("shutdown requested ({reason}): SIGTERM, SIGKILL in {grace} s");
    term_once();
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(u64::from(grace)));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    });
}

/// Sends `signal` to the app (`hyperxl kill -s`, a containerd task's `Kill`), as
/// `docker kill -s` does to a container's first process.
pub fn signal_app(signal: i32) -> Result<(), String> {
    let sig = Signal::try_from(signal).map_err(|_| format!("invalid signal {signal}"))?;
    let pid = MAIN_PID.load(Ordering::SeqCst);
    if pid <= 0 {
        return Err("the app is not running".into());
    }
    kill(Pid::from_raw(pid), sig).map_err(|e| format!("signalling the app: {e}"))
}

/// Decides whether a watch event is a shutdown request. `first` is the event fired at
/// registration; `value` is the key's value now (`None` when it is gone).
///
/// The kernel's own `control/shutdown` handler acknowledges a request by writing ""
/// (and may win the race to read it), so a later empty value counts as a request too.
pub fn is_stop_event(key: &str, first: bool, value: Option<&str>) -> bool {
    match (key, value) {
        (_, None) => false,
        (keys::CONTROL_SHUTDOWN, Some(v)) => {
            keys::is_shutdown_request(v) || (!first && v.is_empty())
        }
        (keys::SHUTDOWN, Some(v)) => !v.is_empty(),
        _ => false,
    }
}

/// Watches both shutdown keys on its own xenstore connection, in a thread.
pub fn spawn_watcher<T: Transport + Send + 'static>(mut xs: Xenstore<T>) {
    thread::spawn(move || {
        let watched = [keys::CONTROL_SHUTDOWN, keys::SHUTDOWN];
        for k in watched {
            if let Err(e) = xs.watch(k, k) {
                say!("cannot watch {k}: {e}");
            }
        }
        let mut seen = [false, false];
        loop {
            let ev = match xs.next_watch_event(None) {
                Ok(Some(ev)) => ev,
                Ok(None) => continue,
                Err(e) => {
                    say!("shutdown watch failed: {e}");
                    return;
                }
            };
            let Some(i) = watched.iter().position(|k| *k == ev.token) else {
                continue;
            };
            let first = !seen[i];
            seen[i] = true;
            let value = xs
                .read(watched[i])
                .ok()
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            if is_stop_event(watched[i], first, value.as_deref()) {
                request_stop(watched[i]);
            }
        }
    });
}

/// The exit code for a wait status of the main process, if it ended.
pub fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(exit::for_signal(s as i32)),
        _ => None,
    }
}

/// Reaps children until `main` ends; returns its exit code.
pub fn reap_until(main: Pid) -> i32 {
    loop {
        if SIGNALLED.swap(false, Ordering::SeqCst) {
            request_stop("signal");
        }
        match waitpid(Pid::from_raw(-1), None) {
            Ok(ws) if ws.pid() == Some(main) => {
                if let Some(code) = exit_code(ws) {
                    // Its pid may be reused from now on: no signal goes there any more.
                    MAIN_PID.store(0, Ordering::SeqCst);
                    return code;
                }
            }
            Ok(ws) => {
                if let (Some(pid), Some(code)) = (ws.pid(), exit_code(ws)) {
                    crate::session::reaped(pid, code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                say!("main process vanished without a status");
                return exit::INIT_FAILED;
            }
            Err(e) => {
                say!("waitpid: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_events() {
        let c = keys::CONTROL_SHUTDOWN;
        assert!(!is_stop_event(c, true, None));
        assert!(!is_stop_event(c, true, Some("")));
        assert!(is_stop_event(c, true, Some("poweroff")));
        assert!(is_stop_event(c, false, Some("halt")));
        assert!(
            is_stop_event(c, false, Some("")),
            "kernel acknowledged it first"
        );
        assert!(!is_stop_event(c, false, None));
        assert!(!is_stop_event(keys::SHUTDOWN, true, Some("")));
        assert!(is_stop_event(keys::SHUTDOWN, true, Some("stop")));
    }

    #[test]
    fn codes() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 7)), Some(7));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
