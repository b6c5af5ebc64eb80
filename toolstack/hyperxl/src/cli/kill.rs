//! `hyperxl kill [-s SIGNAL] VM...`: destroy a running VM's domain at once (exit code
//! 137), or with another signal than KILL, send it to the app, as `docker kill -s`.

use std::path::Path;
use std::str::FromStr;

use anyhow::bail;
use clap::Args;
use nix::sys::signal::Signal;

use hyperxl_core::vm::control;
use hyperxl_core::vm::exec;
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The signal: KILL destroys the domain; any other (TERM, SIGUSR1, 10, ...) is
    /// delivered to the app by the guest's init, and the VM runs on if the app does.
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// A signal as `kill(1)` and Docker take it: a name with or without `SIG`, in any case,
/// or its number.
fn parse_signal(s: &str) -> Result<Signal, String> {
    let bad = || format!("invalid signal {s:?} (a name such as TERM or SIGUSR1, or a number)");
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// Kills (or signals) each VM; one that is not running is an error, as with Docker.
pub fn run(state_dir: &Path, args: KillArgs) -> anyhow::Result<u8> {
    let signal = parse_signal(&args.signal).map_err(anyhow::Error::msg)?;
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    for which in &args.vms {
        let vm = vms.find(which)?;
        if !vm.status.can_stop() {
            bail!("VM {} is not running", vm.name);
        }
        if signal == Signal::SIGKILL {
            control::kill(&vms, &host, &vm)?;
        } else {
            exec::signal_app(&vms, &host, vm, signal as i32)?;
        }
        println!("{which}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_taken_as_kill_1_takes_them() {
        for s in ["TERM", "term", "SIGTERM", "sigterm", "15"] {
            assert_eq!(parse_signal(s), Ok(Signal::SIGTERM), "{s}");
        }
        assert_eq!(parse_signal("usr1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("KILL"), Ok(Signal::SIGKILL));
        for bad in ["", "SIG", "NOPE", "0", "-1", "65", "9x", "TERM "] {
            let err = parse_signal(bad).unwrap_err();
            assert!(err.starts_with("invalid signal"), "{bad}: {err}");
        }
    }
}
