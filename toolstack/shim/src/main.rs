//! `containerd-shim-hyperxl-v2`: containerd's runtime `io.containerd.hyperxl.v2`, which
//! runs each task as a Xen VM through hyperxl-core (see [`service`]). containerd starts
//! it with `start` (it re-executes itself as the shim daemon and prints its socket),
//! talks to it over ttrpc (task API v2, containerd 1.6), and runs `delete` to clean up
//! after a shim that died.

mod oci;
mod process;
mod rootfs;
mod service;

fn main() {
    // What containerd never asks, but an operator checking an install does.
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("-v" | "--version" | "-version")
    ) {
        println!(
            "containerd-shim-hyperxl-v2 (hyperxl {}): runtime io.containerd.hyperxl.v2, task API v2",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let config = containerd_shim::Config {
        // hyperxl's own children (mksquashfs, the VM's monitor) are waited for by the
        // code that starts them; a reaper would take their exit statuses first.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>("io.containerd.hyperxl.v2", Some(config));
}
