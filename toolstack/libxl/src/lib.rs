//! A small safe layer over libxl (Xen 4.17) for hyperxl: a [`Context`] with its
//! logger, a validated [`DomainConfig`], the domain lifecycle behind the
//! [`DomainOps`] trait, and libxl's JSON form of a config for golden tests.
//!
//! Raw bindings live in `libxl-sys`; every libxl handle here has one owning
//! type that frees it on drop ([`Context`], [`RawDomainConfig`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use libxl::{Context, Disk, DomainConfig, DomainOps, DomainType};
//!
//! let config = DomainConfig::builder("web")
//!     .domain_type(DomainType::Pvh)
//!     .kernel("/var/lib/hyperxl/kernel/bzImage")
//!     .cmdline("console=hvc0 quiet")
//!     .memory_mib(128)
//!     .disk(Disk::new("/dev/loop0", "xvda").readonly())
//!     .build()?;
//! let ctx = Context::new()?; // fails with LibxlError::XenUnavailable off Xen
//! let domid = ctx.create_paused(&config)?;
//! println!("console on {}", ctx.console_tty(domid)?.display());
//! ctx.unpause(domid)?;
//! let exit = ctx.wait_for_death(domid, Duration::from_secs(60))?;
//! ctx.destroy(domid)?;
//! # let _ = exit;
//! # Ok::<(), libxl::LibxlError>(())
//! ```
//!
//! Without Xen, [`domain_config_to_json`] still works, so configurations are
//! golden-tested in ordinary CI (see `tests/golden.rs`).

mod config;
mod context;
mod error;
mod ops;
mod raw;
mod vchan;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use config::{
    ConfigError, Disk, DomainConfig, DomainConfigBuilder, DomainType, Nic, ShutdownAction,
    MAX_VCPUS,
};
pub use context::{Context, LogLevel, PRIVCMD};
pub use error::{ErrorCode, LibxlError};
pub use ops::{DomId, DomainExit, DomainInfo, DomainOps, HostInfo, ShutdownReason};
pub use raw::{domain_config_to_json, RawDomainConfig};
pub use vchan::{ClientState, VchanServer};
