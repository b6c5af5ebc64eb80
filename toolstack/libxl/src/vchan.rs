//! [`VchanServer`]: dom0's end of a Xen vchan, through libxenvchan (Xen's own library,
//! so the guest's Rust client is checked against a peer nobody here wrote).
//!
//! dom0 is the server: it allocates and grants the ring pages (so a guest can never
//! make dom0 map its memory, nor open a session dom0 did not create) and announces them
//! under a xenstore path the guest may read. The guest can still write every byte of
//! the shared pages at any time; [`VchanServer::check`] validates the indices before
//! each use (libxenvchan itself answers a corrupt index with "nothing to read", which
//! would stall a session forever).

use std::ffi::CString;
use std::os::fd::RawFd;

use libxl_sys as sys;

use crate::error::LibxlError;

/// A vchan that dom0 serves to one guest.
#[derive(Debug)]
pub struct VchanServer {
    raw: *mut sys::libxenvchan,
}

// SAFETY: the libxenvchan handle is used only through &mut self (or &self for reads of
// its shared page), never from two threads at once; moving it between threads is fine.
unsafe impl Send for VchanServer {}

/// How the guest's end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// It has not connected yet.
    Waiting,
    /// It is connected.
    Connected,
    /// It connected and went away (or never will: the byte is cleared on unmap).
    Gone,
}

impl VchanServer {
    /// Grants rings of at least `read_min` (guest -> dom0) and `write_min` bytes to
    /// `domid` and announces them under `xs_path` (`ring-ref`, `event-channel`,
    /// readable by that domain only). Non-blocking reads and writes.
    pub fn new(
        domid: u32,
        xs_path: &str,
        read_min: usize,
        write_min: usize,
    ) -> Result<Self, LibxlError> {
        let path =
            CString::new(xs_path).map_err(|_| LibxlError::call("libxenvchan_server_init", -1))?;
        let domid =
            i32::try_from(domid).map_err(|_| LibxlError::call("libxenvchan_server_init", -1))?;
        // SAFETY: a NULL logger makes libxenvchan use Xen's default (stderr); path is a
        // valid C string for the call's duration.
        let raw = unsafe {
            sys::libxenvchan_server_init(
                std::ptr::null_mut(),
                domid,
                path.as_ptr(),
                read_min,
                write_min,
            )
        };
        if raw.is_null() {
            return Err(LibxlError::call("libxenvchan_server_init", -1));
        }
        // SAFETY: raw is the live handle just returned; `blocking` is left uninitialised
        // by libxenvchan_server_init, so set it before any read or write.
        unsafe { (*raw).set_blocking(0) };
        Ok(VchanServer { raw })
    }

    /// The event channel's fd: readable when the guest sent an event; then call
    /// [`Self::ack`].
    pub fn fd(&self) -> RawFd {
        // SAFETY: raw is live.
        unsafe { sys::libxenvchan_fd_for_select(self.raw) }
    }

    /// Takes the pending event and unmasks the port.
    pub fn ack(&mut self) -> Result<(), LibxlError> {
        // SAFETY: raw is live; called after the fd was readable, so this does not block.
        match unsafe { sys::libxenvchan_wait(self.raw) } {
            0 => Ok(()),
            rc => Err(LibxlError::call("libxenvchan_wait", rc)),
        }
    }

    fn ring(&self) -> &sys::vchan_interface {
        // SAFETY: raw is live and its ring page mapped until close; the guest may change
        // the page concurrently, which plain reads of integers tolerate.
        unsafe { &*(*self.raw).ring }
    }

    /// The guest's end, from the liveness byte it shares with us.
    pub fn client(&self) -> ClientState {
        // SAFETY: a byte of the mapped ring page (see ring()).
        match unsafe { std::ptr::read_volatile(&self.ring().cli_live) } {
            2 => ClientState::Waiting,
            1 => ClientState::Connected,
            _ => ClientState::Gone,
        }
    }

    /// Checks both rings' indices: a guest claiming more unread bytes (or more room)
    /// than a ring holds has corrupted it.
    pub fn check(&self) -> Result<(), String> {
        // SAFETY: raw is live; read/write describe rings whose `shr` point into the
        // mapped ring page; the integers are read once each.
        let (r, w) = unsafe { (&(*self.raw).read, &(*self.raw).write) };
        for (name, ring) in [("guest -> dom0", r), ("dom0 -> guest", w)] {
            // SAFETY: shr points into the mapped page (see above).
            let (cons, prod) = unsafe {
                (
                    std::ptr::read_volatile(&(*ring.shr).cons),
                    std::ptr::read_volatile(&(*ring.shr).prod),
                )
            };
            let size = 1u32 << ring.order;
            let used = prod.wrapping_sub(cons);
            if used > size {
                return Err(format!(
                    "the guest corrupted the {name} ring ({used} bytes in a {size}-byte ring)"
                ));
            }
        }
        Ok(())
    }

    /// Reads what is there, at most `out.len()` bytes; `Ok(0)` when nothing is.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, LibxlError> {
        // SAFETY: raw is live (non-blocking); out is writable for its length.
        let rc = unsafe { sys::libxenvchan_read(self.raw, out.as_mut_ptr().cast(), out.len()) };
        usize::try_from(rc).map_err(|_| LibxlError::call("libxenvchan_read", rc))
    }

    /// Writes what fits; `Ok(0)` when the ring is full.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, LibxlError> {
        // SAFETY: raw is live (non-blocking); data is readable for its length.
        let rc = unsafe { sys::libxenvchan_write(self.raw, data.as_ptr().cast(), data.len()) };
        usize::try_from(rc).map_err(|_| LibxlError::call("libxenvchan_write", rc))
    }

    /// Free bytes in the dom0 -> guest ring.
    pub fn space(&mut self) -> usize {
        // SAFETY: raw is live.
        usize::try_from(unsafe { sys::libxenvchan_buffer_space(self.raw) }).unwrap_or(0)
    }
}

impl Drop for VchanServer {
    fn drop(&mut self) {
        // SAFETY: raw is live and closed exactly once; this also removes the xenstore
        // path and ungrants the pages.
        unsafe { sys::libxenvchan_close(self.raw) };
    }
}
