//! The client end of a Xen vchan, in Rust, for the guest's init: it maps the rings a
//! libxenvchan server (dom0) granted, binds the event channel it announced, and moves
//! bytes in libxenvchan's wire format. No C library: the grant mapping and the event
//! channel are the kernel's `/dev/xen/gntdev` and `/dev/xen/evtchn`.
//!
//! The server announces a vchan under a xenstore path as `ring-ref` (the control page's
//! grant) and `event-channel` (an unbound port for this domain); the caller reads those
//! and calls [`Vchan::connect`]. [`ring`] holds the part that reads memory the server
//! can change at any time, written so that nothing it does there can make this side
//! read or write outside the rings.

pub mod ring;
pub mod sys;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use ring::{ClientRings, Layout, Placement, RingError};

/// Why a vchan could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VchanError {
    /// A device or mapping call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The shared memory is not a valid vchan, or the peer corrupted it.
    #[error(transparent)]
    Ring(#[from] RingError),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VchanError {
    move |source| VchanError::Io { what, source }
}

/// A connected vchan (client end).
#[derive(Debug)]
pub struct Vchan {
    rings: ClientRings,
    evtchn: sys::EventChannel,
    /// Kept mapped for as long as `rings` points into them (dropped after it).
    _maps: Vec<sys::GrantMapping>,
}

impl Vchan {
    /// Connects to the vchan `server_domid` announced with `ring_ref` and `port`.
    pub fn connect(server_domid: u32, ring_ref: u32, port: u32) -> Result<Vchan, VchanError> {
        let evtchn = sys::EventChannel::bind(server_domid, port)
            .map_err(io_err("binding the vchan's event channel"))?;
        let ctrl = sys::GrantMapping::map(server_domid, &[ring_ref], true)
            .map_err(io_err("mapping the vchan's control page"))?;
        // Clear our liveness byte and wake the server if this end goes away unclean.
        ctrl.notify_on_unmap(ring::CLI_LIVE, evtchn.port())
            .map_err(io_err("arming the vchan's unmap notification"))?;
        let base = ctrl.ptr();
        // SAFETY: base is the mapped control page, kept in _maps below.
        let (left, right) = unsafe { ring::orders(base) };
        let layout = Layout::from_orders(left, right)?;
        let mut maps = Vec::new();
        let mut place = |p: Placement, writable: bool| -> Result<*mut u8, VchanError> {
            Ok(match p {
                // SAFETY: in-page offsets 1024/2048 lie inside the mapped page.
                Placement::InPage(off) => unsafe { base.add(off) },
                Placement::Pages { n, first_grant } => {
                    // SAFETY: Layout::from_orders checked the grant list fits the page.
                    let refs: Vec<u32> = (first_grant..first_grant + n)
                        .map(|i| unsafe { ring::grant(base, i) })
                        .collect();
                    let m = sys::GrantMapping::map(server_domid, &refs, writable)
                        .map_err(io_err("mapping the vchan's ring pages"))?;
                    let p = m.ptr();
                    maps.push(m);
                    p
                }
            })
        };
        let wbuf = place(layout.left.1, true)?;
        let rbuf = place(layout.right.1, false)?;
        maps.insert(0, ctrl);
        // SAFETY: every pointer is into a mapping held in `maps`, sized by the layout.
        let rings = unsafe { ClientRings::new(base, layout, wbuf, rbuf) };
        rings.set_client_live(1);
        rings.request(ring::NOTIFY_WRITE);
        let v = Vchan {
            rings,
            evtchn,
            _maps: maps,
        };
        v.evtchn
            .notify()
            .map_err(io_err("notifying the vchan's server"))?;
        Ok(v)
    }

    /// Reads what is there (non-blocking); `Ok(0)` when nothing is.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, VchanError> {
        let (n, tell) = self.rings.read(out)?;
        if n == 0 {
            self.rings.request(ring::NOTIFY_WRITE);
            let (n, tell) = self.rings.read(out)?;
            self.tell(tell)?;
            return Ok(n);
        }
        self.tell(tell)?;
        Ok(n)
    }

    /// Writes what fits (non-blocking); `Ok(0)` when the ring is full.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        let (n, tell) = self.rings.write(data)?;
        if n == 0 && !data.is_empty() {
            self.rings.request(ring::NOTIFY_READ);
            let (n, tell) = self.rings.write(data)?;
            self.tell(tell)?;
            return Ok(n);
        }
        self.tell(tell)?;
        Ok(n)
    }

    fn tell(&self, yes: bool) -> Result<(), VchanError> {
        if yes {
            self.evtchn
                .notify()
                .map_err(io_err("notifying the vchan's server"))?;
        }
        Ok(())
    }

    /// Whether the server is still there.
    pub fn server_live(&self) -> bool {
        self.rings.server_live()
    }

    /// Takes a pending event (after `poll` said the fd is readable) and re-arms it.
    pub fn ack_event(&self) -> Result<(), VchanError> {
        self.evtchn
            .ack()
            .map_err(io_err("reading the vchan's event channel"))
    }
}

impl AsFd for Vchan {
    /// The event channel's fd: readable when the server sent an event.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.evtchn.as_fd()
    }
}

impl AsRawFd for Vchan {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.evtchn.as_fd().as_raw_fd()
    }
}

impl Drop for Vchan {
    fn drop(&mut self) {
        self.rings.set_client_live(0);
        let _ = self.evtchn.notify();
    }
}
