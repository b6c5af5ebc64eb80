//! Where a `run`'s time goes, for the benchmarks: with `HYPERXL_TIMINGS=1` in the
//! environment, each phase's end prints `hyperxl-timing: PHASE MS` on stderr (the time
//! since the previous mark), and work done beside the phases (in a thread) prints
//! `hyperxl-timing-span: NAME MS`. Off, a mark costs one environment lookup at start-up.

use std::sync::Mutex;
use std::time::Instant;

static LAST: Mutex<Option<Instant>> = Mutex::new(None);

/// Starts the clock if timings were asked for.
pub fn start() {
    if std::env::var_os("HYPERXL_TIMINGS").is_some_and(|v| v == "1") {
        if let Ok(mut last) = LAST.lock() {
            *last = Some(Instant::now());
        }
    }
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
