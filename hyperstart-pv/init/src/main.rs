//! hyperstart-pv: the static init (PID 1) of every hyperxl guest.
//!
//! Mounts /proc /sys /dev, reads the spec from xenstore through the xenbus device,
//! mounts the image read-only under a writable overlay, switches into it, runs the app
//! as the spec says, reaps zombies, forwards shutdown requests, reports the exit code
//! under `data/hyperxl/` and powers the domain off. Every failure of the init itself is
//! reported as `state=failed` plus `error`, and on the console, before powering off.

mod builtin;
mod console;
mod error;
mod exec;
mod job;
mod mounts;
mod net;
mod session;
mod status;
mod supervise;
mod timing;

use std::fs;
use std::os::fd::AsRawFd;
use std::time::Duration;

use hyperxl_contract::{keys, user, Spec, State};
use nix::fcntl::OFlag;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::wait::waitpid;
use nix::unistd::pipe2;
use xenstore_wire::Xenstore;

use crate::console::say;
use crate::error::{InitError, SysContext};
use crate::exec::Launch;
use crate::status::Status;

fn read_or_empty(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn run(status: &mut Status) -> Result<(), InitError> {
    timing::mark("kernel");
    mounts::early()?;
    let dev = mounts::xenbus_device()?;
    status.attach(Xenstore::open_xenbus_at(dev)?);
    let mut watch_xs = Xenstore::open_xenbus_at(dev)?;
    status.state(State::Booting);
    timing::mark("xenbus");

    let raw = read_spec(status, &mut watch_xs)?;
    let spec = Spec::from_json(&raw)?;
    timing::mark("spec");
    if let Some(job) = &spec.job {
        // A helper VM: the init does the work itself, no image, no app.
        status.started();
        job::run(job)?;
        status.exited(0, None);
        return Ok(());
    }

    net::configure(&spec)?;
    timing::mark("network");
    mounts::rootfs(&spec)?;
    timing::mark("rootfs");
    mounts::switch_root()?;
    net::write_files(&spec)?;
    if !spec.hostname.is_empty() {
        nix::unistd::sethostname(&spec.hostname).ctx("sethostname")?;
    }
    let who = user::resolve(
        &spec.user,
        &read_or_empty("/etc/passwd"),
        &read_or_empty("/etc/group"),
    )?;
    mounts::extra(&spec)?;
    exec::ensure_workdir(&spec.working_dir)?;
    if spec.read_only {
        mounts::seal_root()?;
    }
    supervise::install_signal_handlers();
    timing::mark("root-ready");

    let prepared = exec::prepare(&spec, who);
    // `run -t`: the app's controlling terminal is a pty whose master the init keeps
    // (its output copied to the console and to an attached session).
    let pty = match spec.terminal {
        true => Some(session::open_pty(0, 0).map_err(InitError::Terminal)?),
        false => None,
    };
    // `run -i`: the app reads a pipe whose other end an attach session feeds.
    let stdin = match spec.open_stdin && pty.is_none() {
        true => Some(pipe2(OFlag::O_CLOEXEC).ctx("pipe")?),
        false => None,
    };
    let stdio = match &pty {
        Some((_, slave)) => exec::Stdio::Pty {
            slave: slave.as_raw_fd(),
        },
        None => exec::Stdio::Console {
            stdin: stdin.as_ref().map(|(r, _)| r.as_raw_fd()),
        },
    };
    let launched = exec::launch_with(&prepared, stdio)?;
    if let Some((r, w)) = stdin {
        drop(r);
        session::set_app_stdin(w);
    }
    let tty_drained = match pty {
        Some((master, slave)) => {
            drop(slave);
            Some(session::spawn_tty_copier(master).map_err(InitError::Terminal)?)
        }
        None => None,
    };
    timing::mark("launch");
    match launched {
        Launch::Running(pid) => {
            status.started();
            timing::mark("started");
            supervise::set_main(pid, spec.stop_grace_secs);
            supervise::spawn_watcher(watch_xs);
            match Xenstore::open_xenbus_at(dev) {
                Ok(xs) => session::spawn_listener(
                    xs,
                    session::AppDefaults {
                        env: spec.env.clone(),
                        user: spec.user.clone(),
                        workdir: spec.working_dir.clone(),
                        rlimits: spec.rlimits.clone(),
                    },
                ),
                Err(e) => say!("exec sessions are not available: {e}"),
            }
            timing::mark("listeners");
            let code = supervise::reap_until(pid);
            timing::mark("app");
            if let Some(drained) = &tty_drained {
                session::drain_tty(drained, spec.attached, Duration::from_secs(5));
            }
            if spec.timings {
                timing::print();
            }
            status.exited(code, None);
        }
        Launch::Failed { pid, code, message } => {
            let _ = waitpid(pid, None);
            say!("{message}");
            status.exited(code, Some(&message));
        }
    }
    Ok(())
}

/// The spec, read at once (`hyperxl run` writes it before the domain runs), or, in a
/// pre-booted VM, waited for: the init reports `pooled` and sleeps on a watch of the
/// spec key until the toolstack that takes the VM writes it.
fn read_spec(
    status: &mut Status,
    watch_xs: &mut Xenstore<xenstore_wire::XenbusTransport>,
) -> Result<Vec<u8>, InitError> {
    let Some(xs) = status.xs() else {
        unreachable!("status attached before the spec is read")
    };
    match xs.read(keys::SPEC) {
        Err(xenstore_wire::XenstoreError::Server {
            errno: xenstore_wire::XsErrno::NoEntry,
            ..
        }) => {}
        other => return Ok(other?),
    }
    const TOKEN: &str = "spec";
    watch_xs.watch(keys::SPEC, TOKEN)?;
    status.state(State::Pooled);
    eprintln!("{}", hyperxl_contract::console::POOLED_WAITING);
    let raw = loop {
        // The first event fires at once; later ones as the key (or its directory)
        // changes. Until the key is there and readable, keep sleeping.
        watch_xs.next_watch_event(None)?;
        if let Some(xs) = status.xs() {
            if let Ok(raw) = xs.read(keys::SPEC) {
                break raw;
            }
        }
    };
    watch_xs.unwatch(keys::SPEC, TOKEN)?;
    // The toolstack shows nothing of the console before this line.
    eprintln!("{}", hyperxl_contract::console::SPEC_RECEIVED);
    Ok(raw)
}

fn power_off() -> ! {
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    say!("power off failed: {e}");
    // PID 1 must never exit (the kernel would panic); wait for the toolstack instead.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    if std::process::id() != 1 {
        // A builtin session process (see builtin.rs): this binary, run again by a session.
        let args: Vec<String> = std::env::args().collect();
        if let Some(code) = builtin::helper(&args) {
            std::process::exit(code);
        }
    }
    let mut status = Status::console_only();
    if std::process::id() != 1 {
        say!("not PID 1: refusing to run (this is the guest init)");
        std::process::exit(hyperxl_contract::exit::INIT_FAILED);
    }
    if let Err(e) = run(&mut status) {
        status.failed(&e.to_string());
    }
    power_off()
}
