//! [`Context`]: an open libxl context with its logger, and the domain
//! operations on it.

use std::ffi::{c_char, CStr, CString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::{Duration, Instant};

use libxl_sys as sys;

use crate::config::{Disk, DomainConfig, Nic};
use crate::error::{check, ErrorCode, LibxlError};
use crate::ops::{DomId, DomainExit, DomainInfo, DomainOps, HostInfo, ShutdownReason};
use crate::raw::RawDomainConfig;

/// The privcmd device a dom0 toolstack needs (libxencall also tries the
/// older `/proc/xen/privcmd`).
pub const PRIVCMD: &str = "/dev/xen/privcmd";
const PRIVCMD_PROC: &str = "/proc/xen/privcmd";

/// The least severe message libxl's logger prints to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything, including libxl's debug traces.
    Debug,
    /// Progress details.
    Verbose,
    /// Informational messages.
    Info,
    /// Warnings and worse.
    Warn,
    /// Errors only (the default: the caller reports failures itself).
    #[default]
    Error,
    /// Nothing: libxl's own explanation of a failure is lost, only the
    /// returned [`LibxlError`] remains.
    Off,
}

impl LogLevel {
    fn raw(self) -> sys::xentoollog_level {
        match self {
            Self::Debug => sys::XTL_DEBUG,
            Self::Verbose => sys::XTL_VERBOSE,
            Self::Info => sys::XTL_INFO,
            Self::Warn => sys::XTL_WARN,
            Self::Error => sys::XTL_ERROR,
            // The stdio logger drops messages below its minimum level, and no
            // message is at or above XTL_NUM_LEVELS.
            Self::Off => sys::XTL_NUM_LEVELS,
        }
    }
}

/// An open libxl context (`libxl_ctx`) and the xentoollog logger it writes to
/// (stderr). Both are freed on drop.
///
/// Opening one needs a Xen dom0: the hypervisor's privcmd device and a running
/// xenstored.
pub struct Context {
    ctx: *mut sys::libxl_ctx,
    logger: *mut sys::xentoollog_logger,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

// SAFETY: libxl.h documents `struct libxl_ctx*` as threadsafe (libxl locks
// internally), and the stdio logger only writes to stderr through stdio, which
// locks the stream.
unsafe impl Send for Context {}
// SAFETY: as above; every method takes &self and libxl serialises internally.
unsafe impl Sync for Context {}

impl Context {
    /// Opens a context that logs libxl errors to stderr.
    pub fn new() -> Result<Self, LibxlError> {
        Self::with_log_level(LogLevel::default())
    }

    /// Opens a context that logs libxl messages at `level` or above to stderr.
    ///
    /// Fails with [`LibxlError::XenUnavailable`] when this host does not run
    /// Xen, before touching libxl.
    pub fn with_log_level(level: LogLevel) -> Result<Self, LibxlError> {
        if !Path::new(PRIVCMD).exists() && !Path::new(PRIVCMD_PROC).exists() {
            return Err(LibxlError::XenUnavailable { path: PRIVCMD });
        }
        // SAFETY: stderr is the C library's stream, valid for the whole process;
        // the logger keeps the pointer and never closes it.
        let stdio = unsafe {
            sys::xtl_createlogger_stdiostream(
                sys::stderr,
                level.raw(),
                sys::XTL_STDIOSTREAM_HIDE_PROGRESS,
            )
        };
        if stdio.is_null() {
            return Err(LibxlError::null("xtl_createlogger_stdiostream"));
        }
        // A stdiostream logger starts with its xentoollog_logger vtable, which
        // is how xentoollog.h means it to be passed on.
        let logger = stdio.cast::<sys::xentoollog_logger>();
        let mut ctx = ptr::null_mut();
        // SAFETY: ctx is a valid out-pointer and logger a live logger that
        // outlives the context (both are freed together in Drop, ctx first).
        let rc = unsafe { sys::libxl_ctx_alloc(&mut ctx, sys::LIBXL_VERSION as i32, 0, logger) };
        if rc != 0 || ctx.is_null() {
            let err = LibxlError::call("libxl_ctx_alloc", rc);
            // SAFETY: the logger is ours and no context refers to it (on
            // failure libxl_ctx_alloc frees its half-built context).
            unsafe { sys::xtl_logger_destroy(logger) };
            return Err(err);
        }
        Ok(Self { ctx, logger })
    }

    /// The raw context, for calls this layer does not wrap; valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::libxl_ctx {
        self.ctx
    }

    /// [`DomainOps::domid_for_name`] through `libxl_name_to_domid`.
    fn name_to_domid(&self, name: &str) -> Result<Option<DomId>, LibxlError> {
        let Ok(c_name) = CString::new(name) else {
            return Ok(None);
        };
        let mut domid = 0u32;
        // SAFETY: ctx is live, c_name is NUL-terminated and domid a valid out-pointer.
        let rc = unsafe { sys::libxl_name_to_domid(self.ctx, c_name.as_ptr(), &mut domid) };
        match rc {
            0 => Ok(Some(DomId(domid))),
            // libxl_name_to_domid says "no such name" with ERROR_INVAL.
            sys::ERROR_INVAL => Ok(None),
            rc => Err(LibxlError::call("libxl_name_to_domid", rc)),
        }
    }

    /// The name of a domain, from xenstore.
    pub fn name_of(&self, domid: DomId) -> Option<String> {
        // SAFETY: ctx is live; the call returns NULL or a malloc'd string.
        let p = unsafe { sys::libxl_domid_to_name(self.ctx, domid.0) };
        take_c_string(p).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Renames domain `domid` from `old` to `new` (`libxl_domain_rename`, one xenstore
    /// transaction); fails if it is not called `old` any more or `new` is taken.
    pub fn rename(&self, domid: DomId, old: &str, new: &str) -> Result<(), LibxlError> {
        let (Ok(c_old), Ok(c_new)) = (CString::new(old), CString::new(new)) else {
            return Err(LibxlError::call("libxl_domain_rename", sys::ERROR_INVAL));
        };
        // SAFETY: ctx is live and both names are NUL-terminated strings that outlive
        // the (synchronous) call.
        let rc =
            unsafe { sys::libxl_domain_rename(self.ctx, domid.0, c_old.as_ptr(), c_new.as_ptr()) };
        check("libxl_domain_rename", rc)
    }

    /// Pauses domain `domid` (`libxl_domain_pause`); devices can still be added to it.
    pub fn pause(&self, domid: DomId) -> Result<(), LibxlError> {
        // SAFETY: ctx is live; NULL ao_how makes the call synchronous.
        let rc = unsafe { sys::libxl_domain_pause(self.ctx, domid.0, ptr::null()) };
        check("libxl_domain_pause", rc)
    }

    /// Adds a disk to a running domain (`libxl_device_disk_add`, synchronous: returns
    /// once the backend is set up and its hotplug script has run).
    pub fn add_disk(&self, domid: DomId, disk: &Disk) -> Result<(), LibxlError> {
        let mut raw = sys::libxl_device_disk::default();
        // SAFETY: raw is writable memory for one libxl_device_disk; init only writes
        // default values into it.
        unsafe { sys::libxl_device_disk_init(&mut raw) };
        let rc = crate::raw::fill_disk(&mut raw, disk).map(|()| {
            // SAFETY: ctx is live, raw is an initialised disk that outlives the call,
            // and a NULL ao_how makes it synchronous.
            unsafe { sys::libxl_device_disk_add(self.ctx, domid.0, &mut raw, ptr::null()) }
        });
        // SAFETY: raw was initialised above; dispose frees what fill_disk allocated.
        unsafe { sys::libxl_device_disk_dispose(&mut raw) };
        check("libxl_device_disk_add", rc?)
    }

    /// Adds a vif to a running domain as device `devid` (`libxl_device_nic_add`,
    /// synchronous, as [`Context::add_disk`]); the domain's vifs are numbered from 0.
    pub fn add_nic(&self, domid: DomId, nic: &Nic, devid: i32) -> Result<(), LibxlError> {
        let mut raw = sys::libxl_device_nic::default();
        // SAFETY: raw is writable memory for one libxl_device_nic; init only writes
        // default values into it.
        unsafe { sys::libxl_device_nic_init(&mut raw) };
        let rc = crate::raw::fill_nic(&mut raw, nic, devid).map(|()| {
            // SAFETY: ctx is live, raw is an initialised nic that outlives the call,
            // and a NULL ao_how makes it synchronous.
            unsafe { sys::libxl_device_nic_add(self.ctx, domid.0, &mut raw, ptr::null()) }
        });
        // SAFETY: raw was initialised above; dispose frees what fill_nic allocated.
        unsafe { sys::libxl_device_nic_dispose(&mut raw) };
        check("libxl_device_nic_add", rc?)
    }

    /// The hypervisor's version and the host's memory and CPUs (what `xl info` opens
    /// with).
    pub fn host_info(&self) -> Result<HostInfo, LibxlError> {
        // SAFETY: ctx is live; libxl returns a pointer into the context (valid while it
        // lives, not to be freed) or NULL.
        let v = unsafe { sys::libxl_get_version_info(self.ctx) };
        // SAFETY: v is NULL or points to the context's libxl_version_info.
        let v = unsafe { v.as_ref() }.ok_or(LibxlError::call("libxl_get_version_info", -1))?;
        let extra = if v.xen_version_extra.is_null() {
            String::new()
        } else {
            // SAFETY: a non-NULL xen_version_extra is a NUL-terminated string owned by
            // the context.
            unsafe { CStr::from_ptr(v.xen_version_extra) }
                .to_string_lossy()
                .into_owned()
        };
        let mut p = sys::libxl_physinfo::default();
        // SAFETY: p is writable memory for one libxl_physinfo.
        unsafe { sys::libxl_physinfo_init(&mut p) };
        // SAFETY: ctx is live and p initialised.
        let rc = unsafe { sys::libxl_get_physinfo(self.ctx, &mut p) };
        let page_kib = 4;
        let info = HostInfo {
            xen_version: format!("{}.{}{extra}", v.xen_version_major, v.xen_version_minor),
            total_memory_kib: p.total_pages * page_kib,
            free_memory_kib: p.free_pages * page_kib,
            cpus: p.nr_cpus,
        };
        // SAFETY: p was initialised and is disposed exactly once.
        unsafe { sys::libxl_physinfo_dispose(&mut p) };
        check("libxl_get_physinfo", rc)?;
        Ok(info)
    }

    /// `libxl_domain_info`, with the name read from xenstore if `with_name`.
    fn query(&self, domid: DomId, with_name: bool) -> Result<Option<DomainInfo>, LibxlError> {
        let mut info = sys::libxl_dominfo::default();
        // SAFETY: info is writable memory for one libxl_dominfo.
        unsafe { sys::libxl_dominfo_init(&mut info) };
        // SAFETY: ctx is live and info initialised.
        let rc = unsafe { sys::libxl_domain_info(self.ctx, &mut info, domid.0) };
        let result = match rc {
            0 => Ok(Some(self.to_info(&info, with_name))),
            sys::ERROR_DOMAIN_NOTFOUND => Ok(None),
            rc => Err(LibxlError::call("libxl_domain_info", rc)),
        };
        // SAFETY: info was initialised and is disposed exactly once.
        unsafe { sys::libxl_dominfo_dispose(&mut info) };
        result
    }

    /// The pty of the domain's console 0 (the PV console xenconsoled serves),
    /// e.g. `/dev/pts/3`.
    pub fn console_tty(&self, domid: DomId) -> Result<PathBuf, LibxlError> {
        let mut path: *mut c_char = ptr::null_mut();
        // SAFETY: ctx is live and path a valid out-pointer.
        let rc = unsafe {
            sys::libxl_console_get_tty(self.ctx, domid.0, 0, sys::LIBXL_CONSOLE_TYPE_PV, &mut path)
        };
        check("libxl_console_get_tty", rc)?;
        take_c_string(path)
            .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
            .ok_or_else(|| LibxlError::null("libxl_console_get_tty"))
    }

    fn to_info(&self, raw: &sys::libxl_dominfo, with_name: bool) -> DomainInfo {
        let domid = DomId(raw.domid);
        DomainInfo {
            domid,
            name: if with_name { self.name_of(domid) } else { None },
            running: raw.running,
            blocked: raw.blocked,
            paused: raw.paused,
            shutdown: raw.shutdown,
            dying: raw.dying,
            shutdown_reason: raw
                .shutdown
                .then(|| ShutdownReason::from_raw(raw.shutdown_reason)),
            memory_kib: raw.current_memkb,
            max_memory_kib: raw.max_memkb,
            cpu_time_ns: raw.cpu_time,
        }
    }
}

impl DomainOps for Context {
    fn domain_info(&self, domid: DomId) -> Result<Option<DomainInfo>, LibxlError> {
        self.query(domid, true)
    }

    fn domid_for_name(&self, name: &str) -> Result<Option<DomId>, LibxlError> {
        self.name_to_domid(name)
    }

    /// `libxl_domain_create_new`, synchronous (NULL `ao_how`). The domain is
    /// left paused. On failure libxl destroys what it had built.
    fn create_paused(&self, config: &DomainConfig) -> Result<DomId, LibxlError> {
        let mut raw = RawDomainConfig::new(config)?;
        raw.ensure_uuid();
        let mut domid = u32::MAX;
        // SAFETY: ctx is live, raw is a valid config that outlives the
        // (synchronous) call, domid is a valid out-pointer, and NULL ao_how /
        // console-progress pointers are documented to mean "synchronous, none".
        let rc = unsafe {
            sys::libxl_domain_create_new(
                self.ctx,
                raw.as_mut_ptr(),
                &mut domid,
                ptr::null(),
                ptr::null(),
            )
        };
        check("libxl_domain_create_new", rc)?;
        Ok(DomId(domid))
    }

    fn unpause(&self, domid: DomId) -> Result<(), LibxlError> {
        // SAFETY: ctx is live; NULL ao_how makes the call synchronous.
        let rc = unsafe { sys::libxl_domain_unpause(self.ctx, domid.0, ptr::null()) };
        check("libxl_domain_unpause", rc)
    }

    /// `libxl_domain_shutdown`, synchronous: writes `control/shutdown =
    /// poweroff` and blocks until the guest clears it (at most 60 s, then
    /// `ERROR_TIMEDOUT`). A PVH guest without PV control yet gets
    /// `ERROR_NOPARAVIRT`. For a bounded stop, write the key through xenstore
    /// directly instead.
    fn shutdown(&self, domid: DomId) -> Result<(), LibxlError> {
        // SAFETY: ctx is live; NULL ao_how makes the call synchronous.
        let rc = unsafe { sys::libxl_domain_shutdown(self.ctx, domid.0, ptr::null()) };
        check("libxl_domain_shutdown", rc)
    }

    fn destroy(&self, domid: DomId) -> Result<(), LibxlError> {
        // SAFETY: ctx is live; NULL ao_how makes the call synchronous.
        let rc = unsafe { sys::libxl_domain_destroy(self.ctx, domid.0, ptr::null()) };
        check("libxl_domain_destroy", rc)
    }

    fn list(&self) -> Result<Vec<DomainInfo>, LibxlError> {
        let mut n = 0;
        // SAFETY: ctx is live and n a valid out-pointer.
        let list = unsafe { sys::libxl_list_domain(self.ctx, &mut n) };
        if list.is_null() {
            return Err(LibxlError::null("libxl_list_domain"));
        }
        let len = usize::try_from(n).unwrap_or(0);
        // SAFETY: libxl returned an array of n initialised dominfo entries,
        // which stays valid until libxl_dominfo_list_free below.
        let entries = unsafe { std::slice::from_raw_parts(list, len) };
        let infos = entries.iter().map(|raw| self.to_info(raw, true)).collect();
        // SAFETY: list/n are exactly what libxl_list_domain returned, freed once.
        unsafe { sys::libxl_dominfo_list_free(list, n) };
        Ok(infos)
    }

    /// Polls `libxl_domain_info` (2 ms, doubling to 20 ms) until the domain
    /// has shut down, is dying or is gone. One poll is one getdomaininfo
    /// hypercall, so the 20 ms cap costs little and bounds how late an exit is
    /// seen. Polling keeps the timeout exact and needs no event loop; libxl's
    /// death events (`libxl_evenable_domain_death`) would need one
    /// (`libxl_osevent_beforepoll`/`afterpoll`) to honour a timeout.
    fn wait_for_death(&self, domid: DomId, timeout: Duration) -> Result<DomainExit, LibxlError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            match self.query(domid, false)? {
                None => return Ok(DomainExit::Gone),
                Some(info) if info.dying => return Ok(DomainExit::Gone),
                Some(info) if info.shutdown => {
                    let reason = info
                        .shutdown_reason
                        .unwrap_or(ShutdownReason::Unknown(sys::LIBXL_SHUTDOWN_REASON_UNKNOWN));
                    return Ok(DomainExit::Shutdown(reason));
                }
                Some(_) => {}
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(LibxlError::Timeout { domid, timeout });
            }
            std::thread::sleep(pause.min(timeout - elapsed));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn name_of(&self, domid: DomId) -> Option<String> {
        Context::name_of(self, domid)
    }

    fn rename(&self, domid: DomId, old: &str, new: &str) -> Result<(), LibxlError> {
        Context::rename(self, domid, old, new)
    }

    fn pause(&self, domid: DomId) -> Result<(), LibxlError> {
        Context::pause(self, domid)
    }

    fn add_disk(&self, domid: DomId, disk: &Disk) -> Result<(), LibxlError> {
        Context::add_disk(self, domid, disk)
    }

    fn add_nic(&self, domid: DomId, nic: &Nic, devid: i32) -> Result<(), LibxlError> {
        Context::add_nic(self, domid, nic, devid)
    }

    fn console_tty(&self, domid: DomId) -> Result<PathBuf, LibxlError> {
        Context::console_tty(self, domid)
    }

    fn host_info(&self) -> Result<HostInfo, LibxlError> {
        Context::host_info(self)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ctx came from libxl_ctx_alloc and is freed once, before the
        // logger it logs to.
        let rc = unsafe { sys::libxl_ctx_free(self.ctx) };
        debug_assert_eq!(rc, 0, "libxl_ctx_free: {}", ErrorCode(rc));
        // SAFETY: the logger came from xtl_createlogger_stdiostream and nothing
        // refers to it any more.
        unsafe { sys::xtl_logger_destroy(self.logger) };
    }
}

/// Copies and frees a malloc'd C string returned by libxl; `None` for NULL.
fn take_c_string(p: *mut c_char) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: p is non-NULL and NUL-terminated, as libxl returns it.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes().to_vec();
    // SAFETY: libxl allocated p with malloc and hands ownership to us.
    unsafe { libc::free(p.cast()) };
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_xen_new_fails_with_a_clear_error() {
        if Path::new(PRIVCMD).exists() || Path::new(PRIVCMD_PROC).exists() {
            eprintln!("skipped: this host runs Xen");
            return;
        }
        let err = Context::new().expect_err("no Xen, so no context");
        assert_eq!(err, LibxlError::XenUnavailable { path: PRIVCMD });
    }
}
