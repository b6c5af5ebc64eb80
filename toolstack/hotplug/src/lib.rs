//! What libxl's hotplug steps share: libxl runs `SCRIPT ACTION` with the backend's
//! xenstore path in `$XENBUS_PATH`; a step acts on some actions only, and on failure
//! leaves the reason in the backend's `hotplug-error`, where libxl reports it.

use std::process::ExitCode;

use xenstore_wire::{AnyTransport, Xenstore};

/// Runs hotplug step `name`: `step(xenstore, backend path)` for an action in `acts_on`,
/// nothing (success) for any other; exit 2 without `$XENBUS_PATH`.
pub fn main(
    name: &str,
    acts_on: &[&str],
    step: impl FnOnce(&mut Xenstore<AnyTransport>, &str) -> Result<(), String>,
) -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    let Some(be) = std::env::var("XENBUS_PATH").ok().filter(|p| !p.is_empty()) else {
        eprintln!("{name}: XENBUS_PATH is not set (this is run by libxl)");
        return ExitCode::from(2);
    };
    if !acts_on.contains(&action.as_str()) {
        return ExitCode::SUCCESS;
    }
    let mut xs = match Xenstore::open_default() {
        Ok(xs) => xs,
        Err(e) => {
            eprintln!("{name}: connecting to xenstore: {e}");
            return ExitCode::FAILURE;
        }
    };
    match step(&mut xs, &be) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            let _ = xs.write(&format!("{be}/hotplug-error"), e.as_bytes());
            ExitCode::FAILURE
        }
    }
}
