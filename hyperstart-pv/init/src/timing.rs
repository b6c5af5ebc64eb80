//! When the init finished each of its steps, for the benchmarks (a spec with
//! `timings`, which `hyperxl run` sets under `HYPERXL_TIMINGS=1`): every step's end is
//! kept as the time since the kernel started (CLOCK_BOOTTIME), and the list is printed on
//! the console before the init's last line, where the watcher picks it up. Marks before
//! the spec is read are kept all the same; printing them is what the spec decides.

use std::sync::Mutex;

use hyperxl_contract::console::TIMING;

/// At most this many marks are kept (a fixed set of steps; the bound is a guard).
const MAX_MARKS: usize = 64;

static MARKS: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Milliseconds since the kernel started.
fn since_boot_ms() -> Option<f64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(t.tv_sec() as f64 * 1000.0 + t.tv_nsec() as f64 / 1e6)
}

/// Notes that `step` ended now.
pub fn mark(step: &'static str) {
    let (Some(ms), Ok(mut marks)) = (since_boot_ms(), MARKS.lock()) else {
        return;
    };
    if marks.len() < MAX_MARKS {
        marks.push((step, ms));
    }
}

/// Prints every mark, in order (see the module doc).
pub fn print() {
    if let Ok(marks) = MARKS.lock() {
        for (step, ms) in marks.iter() {
            eprintln!("{TIMING}{step} {ms:.1}");
        }
    }
}
