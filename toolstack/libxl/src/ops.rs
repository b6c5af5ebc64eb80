//! The domain lifecycle as a trait, so toolstack logic can be tested without Xen,
//! and the plain data types it speaks in.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Disk, DomainConfig, Nic};
use crate::error::LibxlError;

/// A Xen domain id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomId(pub u32);

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a domain shut down, as Xen records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The guest powered off (the normal end of a hyperxl guest).
    Poweroff,
    /// The guest asked to reboot.
    Reboot,
    /// The guest suspended.
    Suspend,
    /// The guest crashed.
    Crash,
    /// The guest's watchdog fired.
    Watchdog,
    /// The guest asked for a soft reset.
    SoftReset,
    /// A value this crate does not know (libxl's `LIBXL_SHUTDOWN_REASON_UNKNOWN`
    /// is -1).
    Unknown(i32),
}

impl ShutdownReason {
    /// Maps libxl's `libxl_shutdown_reason` value.
    pub fn from_raw(raw: i32) -> Self {
        use libxl_sys as sys;
        match raw {
            sys::LIBXL_SHUTDOWN_REASON_POWEROFF => Self::Poweroff,
            sys::LIBXL_SHUTDOWN_REASON_REBOOT => Self::Reboot,
            sys::LIBXL_SHUTDOWN_REASON_SUSPEND => Self::Suspend,
            sys::LIBXL_SHUTDOWN_REASON_CRASH => Self::Crash,
            sys::LIBXL_SHUTDOWN_REASON_WATCHDOG => Self::Watchdog,
            sys::LIBXL_SHUTDOWN_REASON_SOFT_RESET => Self::SoftReset,
            other => Self::Unknown(other),
        }
    }
}

/// One domain as `libxl_list_domain` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Its id.
    pub domid: DomId,
    /// Its name from xenstore; `None` if it could not be read (e.g. dying).
    pub name: Option<String>,
    /// A vCPU is running.
    pub running: bool,
    /// All vCPUs are blocked.
    pub blocked: bool,
    /// Paused by the toolstack.
    pub paused: bool,
    /// Shut down, waiting to be destroyed.
    pub shutdown: bool,
    /// Being destroyed.
    pub dying: bool,
    /// Why it shut down; `Some` only when `shutdown` is set.
    pub shutdown_reason: Option<ShutdownReason>,
    /// Current memory in KiB.
    pub memory_kib: u64,
    /// Maximum memory in KiB.
    pub max_memory_kib: u64,
    /// CPU time its vCPUs used, in nanoseconds.
    pub cpu_time_ns: u64,
}

/// What [`DomainOps::host_info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Xen's version, e.g. `4.17.6-pre`.
    pub xen_version: String,
    /// The host's memory, in KiB.
    pub total_memory_kib: u64,
    /// Memory no domain holds, in KiB (what new VMs can get).
    pub free_memory_kib: u64,
    /// Physical CPUs.
    pub cpus: u32,
}

/// How a domain ended, as seen by [`DomainOps::wait_for_death`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainExit {
    /// The guest shut down and the domain still exists (Xen keeps it until the
    /// toolstack destroys it; libxl does not act on `on_poweroff` by itself).
    Shutdown(ShutdownReason),
    /// The domain is gone or dying (someone destroyed it).
    Gone,
}

/// The domain lifecycle: implemented by [`crate::Context`] on Xen and by
/// `fake::FakeDomainOps` (feature `fake`) in tests.
pub trait DomainOps {
    /// Creates and builds the domain with its devices, and leaves it paused.
    ///
    /// A name already in use fails with `ERROR_FAIL` (after libxl has made and
    /// destroyed a domain shell), so callers should check names first.
    fn create_paused(&self, config: &DomainConfig) -> Result<DomId, LibxlError>;
    /// Lets a paused domain run.
    fn unpause(&self, domid: DomId) -> Result<(), LibxlError>;
    /// Asks the guest to power off (PV control: `control/shutdown = poweroff`).
    ///
    /// On Xen this waits for the guest to *acknowledge* the request (clear the
    /// key), up to libxl's fixed 60 s, but not for the guest to finish: follow
    /// with [`Self::wait_for_death`]. A guest that dies or ignores the request
    /// gives `ERROR_TIMEDOUT` after those 60 s; one without PV control yet
    /// gives `ERROR_NOPARAVIRT` at once.
    fn shutdown(&self, domid: DomId) -> Result<(), LibxlError>;
    /// Destroys the domain and its devices now.
    fn destroy(&self, domid: DomId) -> Result<(), LibxlError>;
    /// All domains, dom0 included.
    fn list(&self) -> Result<Vec<DomainInfo>, LibxlError>;
    /// One domain's state; `Ok(None)` when it does not exist. (By default from
    /// [`Self::list`]; Xen answers for one domain.)
    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, LibxlError> {
        Ok(self.list()?.into_iter().find(|d| d.domid == domid))
    }
    /// The id of the domain called `name`, if there is one. (By default from
    /// [`Self::list`].)
    fn domid_for_name(&self, name: &str) -> Result<Option<DomId>, LibxlError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|d| d.name.as_deref() == Some(name))
            .map(|d| d.domid))
    }
    /// Waits until the domain shuts down or disappears, at most `timeout`
    /// ([`LibxlError::Timeout`] after that).
    fn wait_for_death(&self, domid: DomId, timeout: Duration) -> Result<DomainExit, LibxlError>;
    /// The name of domain `domid`, if it exists and has one. (By default from
    /// [`Self::domain_info`].)
    fn name_of(&self, domid: DomId) -> Option<String> {
        self.domain_info(domid).ok().flatten().and_then(|d| d.name)
    }
    /// Renames domain `domid` from `old` to `new`; fails if it is not called `old` any
    /// more or `new` is taken.
    fn rename(&self, domid: DomId, old: &str, new: &str) -> Result<(), LibxlError>;
    /// Pauses a running domain; devices can still be added to it.
    fn pause(&self, domid: DomId) -> Result<(), LibxlError>;
    /// Adds a disk to an existing domain (synchronous: returns once the backend is set
    /// up and its hotplug script has run).
    fn add_disk(&self, domid: DomId, disk: &Disk) -> Result<(), LibxlError>;
    /// Adds a vif to an existing domain as device `devid` (numbered from 0).
    fn add_nic(&self, domid: DomId, nic: &Nic, devid: i32) -> Result<(), LibxlError>;
    /// The pty of the domain's PV console 0, e.g. `/dev/pts/3`.
    fn console_tty(&self, domid: DomId) -> Result<PathBuf, LibxlError>;
    /// The hypervisor's version and the host's memory and CPUs.
    fn host_info(&self) -> Result<HostInfo, LibxlError>;
}
