//! hyperxl's toolstack as a library: everything a front end needs to run container images
//! as Xen VMs, with no command-line parsing or printing of its own. The `hyperxl` CLI is
//! one front end; a containerd shim is meant to be another.
//!
//! - [`vm`]: a VM's record and its lifecycle — launch (domain build, disks, spec), the
//!   watcher, stop/kill/remove, reconcile after a crash or reboot, the pool of pre-booted
//!   VMs, exec, cp and console logs.
//! - [`net`]: networks, address leases, nftables rules and published ports.
//! - [`volume`]: named volumes and their transfers through helper VMs.
//! - [`deploy`]: deployment files (`hyperxl up`/`down`) and their reconciliation.
//! - [`xlcfg`]: a VM's xl.cfg(5) file, for `xl create` and for reading what a VM ran with.
//! - [`usage`]: what hyperxl keeps on dom0's disk (`system df`); [`prune`]: freeing what
//!   no VM needs (`system prune`).
//!
//! Images (pull, load, the squashfs rootfs) are `hyperxl-image`; domains are `libxl`; the
//! host-guest contract is `hyperxl-contract`. Lower libraries return typed errors; the
//! lifecycle here still returns `anyhow` errors with context where it orchestrates many
//! of them.

pub mod deploy;
pub mod fuzzing;
pub mod net;
pub mod prune;
pub mod usage;
pub mod vm;
pub mod volume;
pub mod xlcfg;
