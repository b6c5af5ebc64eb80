//! A hostile guest for the e2e tests: waits for dom0 to announce an exec session under
//! `hyperxl/exec`, maps that session's control page itself (as any root process in a
//! guest can), and corrupts the guest -> dom0 ring's producer index, then wakes dom0.
//! With `--hangup` it instead waits for the init to connect and then marks the client
//! side closed, as a session that ends without an exit code. dom0 must end the session
//! with a clear error, soon, whatever its own stdin is, and stay unharmed.
//!
//!     vchan-hostile [SECONDS] [--hangup]    (default 120: how long to wait for a session)

use std::time::{Duration, Instant};

use hyperxl_vchan::sys::{EventChannel, GrantMapping};
use xenstore_wire::Xenstore;

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let hangup = std::env::args().any(|a| a == "--hangup");
    let mut xs = Xenstore::open_xenbus().expect("xenbus");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        for id in xs.directory("hyperxl/exec").unwrap_or_default() {
            let num = |xs: &mut Xenstore<_>, k: &str| {
                xs.read_string(&format!("hyperxl/exec/{id}/{k}"))
                    .ok()
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            let (Some(ring_ref), Some(port)) =
                (num(&mut xs, "ring-ref"), num(&mut xs, "event-channel"))
            else {
                continue;
            };
            let page = GrantMapping::map(0, &[ring_ref], true).expect("map the control page");
            // cli_live (offset 20 of libxenvchan's shared page) turns 1 once the init
            // connected: act after that, so the init's own connect cannot undo us.
            let live = || {
                // SAFETY: offset 20 is a byte inside the mapped page.
                unsafe { std::ptr::read_volatile(page.ptr().add(20)) }
            };
            let wait_until = Instant::now() + Duration::from_secs(20);
            while live() != 1 && Instant::now() < wait_until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if hangup {
                // Say the client is gone (0).
                // SAFETY: as above.
                unsafe { std::ptr::write_volatile(page.ptr().add(20), 0u8) };
                if let Ok(ev) = EventChannel::bind(0, port) {
                    let _ = ev.notify();
                }
                println!("hung up session {id}");
                std::thread::sleep(Duration::from_secs(2));
                return;
            }
            // The init writes its first frames (hello, started) right after connecting,
            // each write storing its own producer index: a corruption made before those
            // would be overwritten (a race the e2e once lost). After them it stays quiet
            // while the exec'd process prints nothing, so what we write stays.
            std::thread::sleep(Duration::from_secs(1));
            // The left ring's producer index (offset 4): claim a gigabyte of data.
            // SAFETY: offset 4 is an aligned u32 inside the mapped page.
            unsafe { std::ptr::write_volatile(page.ptr().add(4) as *mut u32, 1 << 30) };
            if let Ok(ev) = EventChannel::bind(0, port) {
                let _ = ev.notify();
            }
            println!("corrupted session {id}");
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("no exec session appeared");
    std::process::exit(1);
}
