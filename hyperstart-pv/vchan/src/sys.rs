//! The two kernel devices a vchan client needs, and nothing else: `/dev/xen/gntdev`
//! (map another domain's granted pages) and `/dev/xen/evtchn` (an interdomain event
//! channel). Ioctl numbers and structs as in Xen's `xen/sys/gntdev.h` and
//! `xen/sys/evtchn.h` (`_IOC(_IOC_NONE, type, nr, size)`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::ring::PAGE;

/// `_IOC(_IOC_NONE, ty, nr, size)` (the request type is `c_ulong` in glibc, `c_int` in
/// musl: these fit both, and are cast at each call).
const fn ioc(ty: u8, nr: u8, size: usize) -> u32 {
    ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

#[repr(C)]
struct MapGrantRef {
    count: u32,
    pad: u32,
    index: u64,
    // `count` of (domid, ref) pairs follow.
}

#[repr(C)]
struct UnmapGrantRef {
    index: u64,
    count: u32,
    pad: u32,
}

#[repr(C)]
struct UnmapNotify {
    index: u64,
    action: u32,
    port: u32,
}

const GNTDEV_MAP_GRANT_REF: u32 = ioc(b'G', 0, 24);
const GNTDEV_UNMAP_GRANT_REF: u32 = ioc(b'G', 1, std::mem::size_of::<UnmapGrantRef>());
const GNTDEV_SET_UNMAP_NOTIFY: u32 = ioc(b'G', 7, std::mem::size_of::<UnmapNotify>());
const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 1;
const UNMAP_NOTIFY_SEND_EVENT: u32 = 2;

const EVTCHN_BIND_INTERDOMAIN: u32 = ioc(b'E', 1, 8);
const EVTCHN_UNBIND: u32 = ioc(b'E', 3, 4);
const EVTCHN_NOTIFY: u32 = ioc(b'E', 4, 4);

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Pages of another domain mapped into this process through gntdev.
#[derive(Debug)]
pub struct GrantMapping {
    dev: File,
    index: u64,
    pages: usize,
    addr: *mut u8,
}

// SAFETY: the mapping is plain memory owned by this value; moving it between threads
// moves that ownership.
unsafe impl Send for GrantMapping {}

impl GrantMapping {
    /// Maps the pages `domid` granted as `refs`, read-write or read-only.
    pub fn map(domid: u32, refs: &[u32], writable: bool) -> io::Result<GrantMapping> {
        if refs.is_empty() || refs.len() > 512 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "grant count"));
        }
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/gntdev")?;
        // The request: header, then (domid, ref) pairs, as u32s.
        let mut buf: Vec<u32> = vec![0; 4 + 2 * refs.len()];
        buf[0] = refs.len() as u32;
        for (i, r) in refs.iter().enumerate() {
            buf[4 + 2 * i] = domid;
            buf[5 + 2 * i] = *r;
        }
        // SAFETY: buf is a MapGrantRef header followed by refs.len() pairs, as the ioctl
        // reads (count) and writes (index); it lives across the call.
        check(unsafe {
            libc::ioctl(dev.as_raw_fd(), GNTDEV_MAP_GRANT_REF as _, buf.as_mut_ptr())
        })?;
        // SAFETY: the header is a MapGrantRef at the start of buf (u32-aligned fields;
        // index read unaligned-safe below).
        let index = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const MapGrantRef) }.index;
        let len = refs.len() * PAGE;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: mapping `len` bytes of the gntdev fd at the offset the kernel gave.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                dev.as_raw_fd(),
                index as libc::off_t,
            )
        };
        let mut m = GrantMapping {
            dev,
            index,
            pages: refs.len(),
            addr: std::ptr::null_mut(),
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()); // Drop unmaps the grants
        }
        m.addr = addr as *mut u8;
        Ok(m)
    }

    /// The start of the mapped pages.
    pub fn ptr(&self) -> *mut u8 {
        self.addr
    }

    /// When this mapping goes (also if the process dies), clear the byte at `offset` of
    /// the first page and send an event on `port`: the peer learns this end is gone.
    pub fn notify_on_unmap(&self, offset: usize, port: u32) -> io::Result<()> {
        let mut n = UnmapNotify {
            index: self.index + offset as u64,
            action: UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT,
            port,
        };
        // SAFETY: n is the ioctl's struct, alive across the call.
        check(unsafe { libc::ioctl(self.dev.as_raw_fd(), GNTDEV_SET_UNMAP_NOTIFY as _, &mut n) })?;
        Ok(())
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        if !self.addr.is_null() {
            // SAFETY: addr/len are the mapping made in `map`, unmapped once.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.pages * PAGE) };
        }
        let mut u = UnmapGrantRef {
            index: self.index,
            count: self.pages as u32,
            pad: 0,
        };
        // SAFETY: u is the ioctl's struct, alive across the call.
        unsafe { libc::ioctl(self.dev.as_raw_fd(), GNTDEV_UNMAP_GRANT_REF as _, &mut u) };
    }
}

/// An interdomain event channel bound through `/dev/xen/evtchn`.
#[derive(Debug)]
pub struct EventChannel {
    dev: File,
    port: u32,
}

impl EventChannel {
    /// Binds to `remote_port` of `domid`.
    pub fn bind(domid: u32, remote_port: u32) -> io::Result<EventChannel> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/evtchn")?;
        let mut req = [domid, remote_port];
        // SAFETY: req is the ioctl's { remote_domain, remote_port }; the local port is
        // the return value.
        let port = check(unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                EVTCHN_BIND_INTERDOMAIN as _,
                req.as_mut_ptr(),
            )
        })?;
        Ok(EventChannel {
            dev,
            port: port as u32,
        })
    }

    /// The local port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Sends an event to the peer.
    pub fn notify(&self) -> io::Result<()> {
        let mut p = self.port;
        // SAFETY: p is the ioctl's { port }.
        check(unsafe { libc::ioctl(self.dev.as_raw_fd(), EVTCHN_NOTIFY as _, &mut p) })?;
        Ok(())
    }

    /// Takes a fired event (the fd was readable) and unmasks the port again.
    pub fn ack(&self) -> io::Result<()> {
        let mut b = [0u8; 4];
        (&self.dev).read_exact(&mut b)?;
        (&self.dev).write_all(&b)
    }
}

impl AsFd for EventChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        let mut p = self.port;
        // SAFETY: p is the ioctl's { port }.
        unsafe { libc::ioctl(self.dev.as_raw_fd(), EVTCHN_UNBIND as _, &mut p) };
    }
}
