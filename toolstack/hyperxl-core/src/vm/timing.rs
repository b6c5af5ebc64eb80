//! Where a `run`'s time goes, for the benchmarks: with `HYPERXL_TIMINGS=1` in the
//! environment, each phase's end prints `hyperxl-timing: PHASE MS` on stderr (the time
//! since the previous mark), and work done beside the phases (in a thread) prints
//! `hyperxl-timing-span: NAME MS`. With `HYPERXL_TIMINGS=guest`, the guest's init also
//! reports when it ended each of its steps (a spec with `timings`; an init older than
//! that field refuses such a spec), printed as `hyperxl-guest-timing: STEP MS`. Off, a
//! mark costs one environment lookup at start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static LAST: Mutex<Option<Instant>> = Mutex::new(None);
static GUEST: AtomicBool = AtomicBool::new(false);

/// Starts the clock if timings were asked for.
pub fn start() {
    let asked = std::env::var_os("HYPERXL_TIMINGS");
    let guest = asked.as_ref().is_some_and(|v| v == "guest");
    if guest || asked.is_some_and(|v| v == "1") {
        GUEST.store(guest, Ordering::SeqCst);
        if let Ok(mut last) = LAST.lock() {
            *last = Some(Instant::now());
        }
    }
}

/// Whether the guest's timings were asked for too.
pub fn guest_enabled() -> bool {
    GUEST.load(Ordering::SeqCst)
}

/// Passes on a guest's timing line (see `hyperstart-pv`'s `timing`): `line` without
/// [`hyperxl_contract::console::TIMING`] is ignored; with it, it is printed as
/// `hyperxl-guest-timing: STEP MS` (the step's end, in ms since the guest's kernel
/// started).
pub fn guest_line(line: &[u8]) {
    if let Some(step) = guest_step(line) {
        eprintln!("hyperxl-guest-timing: {step}");
    }
}

/// `STEP MS` of a guest's timing line; `None` for any other line, and for one that is
/// not a short step name (lowercase letters, digits, `-`) and a number: the guest
/// writes these, so nothing else of them reaches dom0's terminal.
fn guest_step(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text
        .trim_end()
        .strip_prefix(hyperxl_contract::console::TIMING)?;
    let (step, ms) = rest.split_once(' ')?;
    let step_ok = (1..=32).contains(&step.len())
        && step
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ms: f64 = ms.parse().ok().filter(|v: &f64| v.is_finite())?;
    step_ok.then(|| format!("{step} {ms:.1}"))
}

/// Ends `phase`: prints its duration and starts the next one.
pub fn mark(phase: &str) {
    let Ok(mut last) = LAST.lock() else { return };
    if let Some(t) = *last {
        let now = Instant::now();
        eprintln!(
            "hyperxl-timing: {phase} {:.1}",
            (now - t).as_secs_f64() * 1000.0
        );
        *last = Some(now);
    }
}

/// Prints how long `name`, done beside the phases (in a thread), took.
pub fn span(name: &str, took: std::time::Duration) {
    if LAST.lock().is_ok_and(|last| last.is_some()) {
        eprintln!(
            "hyperxl-timing-span: {name} {:.1}",
            took.as_secs_f64() * 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_guest_s_timing_lines_are_passed_on() {
        assert_eq!(
            guest_step(b"hyperstart: timing rootfs 812.5\r\n").as_deref(),
            Some("rootfs 812.5")
        );
        assert_eq!(guest_step(b"hyperstart: app exited with code 0\n"), None);
        assert_eq!(guest_step(b"timing rootfs 1\n"), None);
        // What a hostile guest could print after the prefix does not reach the terminal.
        assert_eq!(guest_step(b"hyperstart: timing \x1b]0;pwned\x07 1\n"), None);
        assert_eq!(guest_step(b"hyperstart: timing rootfs 1 \x1b[2J\n"), None);
        assert_eq!(guest_step(b"hyperstart: timing rootfs NaN\n"), None);
        assert_eq!(guest_step(b"hyperstart: timing rootfs\n"), None);
    }
}
