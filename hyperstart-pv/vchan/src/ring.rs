//! The client's side of a vchan's shared memory, in libxenvchan's layout
//! (`xen/include/public/io/libxenvchan.h`): a control page holding two index pairs,
//! the ring orders, liveness and notification bytes, then either in-page rings or the
//! grant references of the ring pages.
//!
//! The server (dom0, through libxenvchan) can change every byte of that memory at any
//! time, so this side trusts none of it: it keeps its own copies of the indices it owns
//! (the shared copy is only ever written), checks the peer's index against the ring size
//! on every read (a peer claiming more than a ring holds is [`RingError::Corrupt`], never
//! an out-of-bounds copy), and masks every offset with the ring size it validated once.

use std::sync::atomic::{fence, AtomicU32, AtomicU8, Ordering};

/// Byte offsets in the control page.
const LEFT_CONS: usize = 0;
const LEFT_PROD: usize = 4;
const RIGHT_CONS: usize = 8;
const RIGHT_PROD: usize = 12;
const LEFT_ORDER: usize = 16;
const RIGHT_ORDER: usize = 18;
/// Liveness of the client / server: 0 gone, 1 connected, 2 (client) not yet connected.
pub const CLI_LIVE: usize = 20;
const SRV_LIVE: usize = 21;
const CLI_NOTIFY: usize = 22;
const SRV_NOTIFY: usize = 23;
/// Where the grant references of multi-page rings start.
pub const GRANTS: usize = 24;
/// Page size.
pub const PAGE: usize = 4096;

/// "Tell me when you write."
pub const NOTIFY_WRITE: u8 = 1;
/// "Tell me when you read."
pub const NOTIFY_READ: u8 = 2;

/// What is wrong with the shared memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The orders in the control page are not a layout libxenvchan makes.
    #[error("vchan ring orders {left}/{right} are not valid")]
    BadOrders {
        /// Left (client -> server) order.
        left: u16,
        /// Right (server -> client) order.
        right: u16,
    },
    /// The peer's index claims more than the ring holds.
    #[error("vchan peer index is corrupt ({ready} bytes claimed in a {size}-byte ring)")]
    Corrupt {
        /// Bytes the indices claim.
        ready: u32,
        /// The ring's size.
        size: u32,
    },
}

/// Where one ring lives: in the control page (orders 10 and 11) or on its own pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At this byte offset of the control page.
    InPage(usize),
    /// On `n` pages of their own, whose grant references start at `first_grant` in the
    /// control page's grant list.
    Pages {
        /// Pages.
        n: usize,
        /// Index of its first grant in the grant list.
        first_grant: usize,
    },
}

/// The two rings' sizes and places, checked as libxenvchan's client checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// client -> server ring: order and place.
    pub left: (u16, Placement),
    /// server -> client ring.
    pub right: (u16, Placement),
}

impl Layout {
    /// The layout the control page announces; orders 10..=20, not both in-page at one
    /// offset, grant list within the page.
    pub fn from_orders(left: u16, right: u16) -> Result<Layout, RingError> {
        let bad = RingError::BadOrders { left, right };
        if !(10..=20).contains(&left) || !(10..=20).contains(&right) || (left == right && left < 12)
        {
            return Err(bad);
        }
        let pages = |o: u16| if o >= 12 { 1usize << (o - 12) } else { 0 };
        let place = |o: u16, first| match o {
            10 => Placement::InPage(1024),
            11 => Placement::InPage(2048),
            _ => Placement::Pages {
                n: pages(o),
                first_grant: first,
            },
        };
        // The grant list must end before any in-page ring (or the page's end).
        let grants_end = GRANTS + 4 * (pages(left) + pages(right));
        let limit = [left, right]
            .iter()
            .filter_map(|&o| match o {
                10 => Some(1024),
                11 => Some(2048),
                _ => None,
            })
            .min()
            .unwrap_or(PAGE);
        if grants_end > limit {
            return Err(bad);
        }
        Ok(Layout {
            left: (left, place(left, 0)),
            right: (right, place(right, pages(left))),
        })
    }
}

/// The client's end of the rings over mapped memory.
#[derive(Debug)]
pub struct ClientRings {
    ctrl: *mut u8,
    /// client -> server ring.
    wbuf: *mut u8,
    wsize: u32,
    /// server -> client ring.
    rbuf: *const u8,
    rsize: u32,
    /// Our own indices: the shared copies are written, never believed.
    wprod: u32,
    rcons: u32,
}

// SAFETY: the pointers are to memory mapped for the life of the owner (the client keeps
// the mappings until after it drops the rings); moving that view between threads is fine,
// concurrent use is prevented by `&mut self` on every operation.
unsafe impl Send for ClientRings {}

impl ClientRings {
    /// A view of the rings.
    ///
    /// # Safety
    /// `ctrl` must point to a mapped, writable page, `wbuf` to `1 << layout.left.0`
    /// writable bytes and `rbuf` to `1 << layout.right.0` readable bytes, all valid
    /// until this value is dropped. They may be written by another domain at any time.
    pub unsafe fn new(ctrl: *mut u8, layout: Layout, wbuf: *mut u8, rbuf: *const u8) -> Self {
        let mut rings = ClientRings {
            ctrl,
            wbuf,
            wsize: 1 << layout.left.0,
            rbuf,
            rsize: 1 << layout.right.0,
            wprod: 0,
            rcons: 0,
        };
        // Start from the indices as the server left them (zero for a fresh vchan).
        rings.wprod = rings.u32_at(LEFT_PROD).load(Ordering::Acquire);
        rings.rcons = rings.u32_at(RIGHT_CONS).load(Ordering::Acquire);
        rings
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: off is one of the aligned index offsets inside the control page, which
        // `new`'s contract keeps mapped; AtomicU32 tolerates the peer's concurrent writes.
        unsafe { &*(self.ctrl.add(off) as *const AtomicU32) }
    }

    fn u8_at(&self, off: usize) -> &AtomicU8 {
        // SAFETY: as u32_at, for a byte of the control page.
        unsafe { &*(self.ctrl.add(off) as *const AtomicU8) }
    }

    /// Bytes the server has written that we have not read.
    pub fn readable(&self) -> Result<u32, RingError> {
        let prod = self.u32_at(RIGHT_PROD).load(Ordering::Acquire);
        let ready = prod.wrapping_sub(self.rcons);
        if ready > self.rsize {
            return Err(RingError::Corrupt {
                ready,
                size: self.rsize,
            });
        }
        Ok(ready)
    }

    /// Free bytes in the ring we write.
    pub fn writable(&self) -> Result<u32, RingError> {
        let cons = self.u32_at(LEFT_CONS).load(Ordering::Acquire);
        let used = self.wprod.wrapping_sub(cons);
        if used > self.wsize {
            return Err(RingError::Corrupt {
                ready: used,
                size: self.wsize,
            });
        }
        Ok(self.wsize - used)
    }

    /// Copies up to `out.len()` available bytes out; returns how many, and whether the
    /// server asked to be told (send it an event then).
    pub fn read(&mut self, out: &mut [u8]) -> Result<(usize, bool), RingError> {
        let n = (self.readable()? as usize).min(out.len());
        if n == 0 {
            return Ok((0, false));
        }
        let start = (self.rcons & (self.rsize - 1)) as usize;
        let first = n.min(self.rsize as usize - start);
        // SAFETY: start < rsize and start + first <= rsize, n - first <= rsize: all within
        // the ring `new` was given; out holds n bytes. The peer may write concurrently:
        // we copy bytes out, and only bytes the (checked) index says are ours.
        unsafe {
            std::ptr::copy_nonoverlapping(self.rbuf.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.rbuf, out.as_mut_ptr().add(first), n - first);
        }
        fence(Ordering::SeqCst);
        self.rcons = self.rcons.wrapping_add(n as u32);
        self.u32_at(RIGHT_CONS).store(self.rcons, Ordering::Release);
        Ok((n, self.take_request(NOTIFY_READ)))
    }

    /// Copies as much of `data` in as fits; returns how many bytes, and whether the
    /// server asked to be told.
    pub fn write(&mut self, data: &[u8]) -> Result<(usize, bool), RingError> {
        let n = (self.writable()? as usize).min(data.len());
        if n == 0 {
            return Ok((0, false));
        }
        let start = (self.wprod & (self.wsize - 1)) as usize;
        let first = n.min(self.wsize as usize - start);
        // SAFETY: as in read, within the write ring's wsize bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.wbuf.add(start), first);
            std::ptr::copy_nonoverlapping(data.as_ptr().add(first), self.wbuf, n - first);
        }
        fence(Ordering::SeqCst);
        self.wprod = self.wprod.wrapping_add(n as u32);
        self.u32_at(LEFT_PROD).store(self.wprod, Ordering::Release);
        Ok((n, self.take_request(NOTIFY_WRITE)))
    }

    /// Whether the server asked (in `cli_notify`) to hear of `bit`, clearing the request.
    fn take_request(&self, bit: u8) -> bool {
        fence(Ordering::SeqCst);
        self.u8_at(CLI_NOTIFY).fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Asks the server to send an event when it does `bit` (write: data for us; read:
    /// room for us). Re-check `readable`/`writable` after this, before sleeping.
    pub fn request(&self, bit: u8) {
        self.u8_at(SRV_NOTIFY).fetch_or(bit, Ordering::AcqRel);
        fence(Ordering::SeqCst);
    }

    /// Whether the server is still there.
    pub fn server_live(&self) -> bool {
        self.u8_at(SRV_LIVE).load(Ordering::Acquire) == 1
    }

    /// Marks this end connected (1) or gone (0).
    pub fn set_client_live(&self, live: u8) {
        self.u8_at(CLI_LIVE).store(live, Ordering::Release);
    }
}

/// The orders a control page announces.
///
/// # Safety
/// `ctrl` must point to a mapped page.
pub unsafe fn orders(ctrl: *const u8) -> (u16, u16) {
    // SAFETY: both offsets are aligned u16s inside the page the caller vouches for.
    unsafe {
        (
            std::ptr::read_volatile(ctrl.add(LEFT_ORDER) as *const u16),
            std::ptr::read_volatile(ctrl.add(RIGHT_ORDER) as *const u16),
        )
    }
}

/// The `i`-th grant reference in a control page's grant list (`i` checked by
/// [`Layout::from_orders`] to lie inside the page).
///
/// # Safety
/// `ctrl` must point to a mapped page and `GRANTS + 4 * i + 4 <= PAGE`.
pub unsafe fn grant(ctrl: *const u8, i: usize) -> u32 {
    // SAFETY: aligned u32 inside the page, as the caller vouches.
    unsafe { std::ptr::read_volatile(ctrl.add(GRANTS + 4 * i) as *const u32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control page and two in-page rings, plus the server's moves on them, as
    /// libxenvchan's server makes them (left order 10 at 1024, right 11 at 2048).
    struct Fake {
        page: Box<[u64; PAGE / 8]>,
    }

    impl Fake {
        fn new() -> Fake {
            let mut f = Fake {
                page: Box::new([0; PAGE / 8]),
            };
            let p = f.ptr();
            // SAFETY: inside the boxed page.
            unsafe {
                *(p.add(LEFT_ORDER) as *mut u16) = 10;
                *(p.add(RIGHT_ORDER) as *mut u16) = 11;
                *p.add(SRV_LIVE) = 1;
                *p.add(CLI_LIVE) = 2;
                *p.add(CLI_NOTIFY) = NOTIFY_WRITE;
            }
            f
        }
        fn ptr(&mut self) -> *mut u8 {
            self.page.as_mut_ptr() as *mut u8
        }
        fn rings(&mut self) -> ClientRings {
            let p = self.ptr();
            // SAFETY: the page outlives the rings in each test.
            let (l, r) = unsafe { orders(p) };
            let layout = Layout::from_orders(l, r).unwrap();
            // SAFETY: as above; offsets 1024 and 2048 hold 1 KiB and 2 KiB.
            unsafe { ClientRings::new(p, layout, p.add(1024), p.add(2048)) }
        }
        fn get(&mut self, off: usize) -> u32 {
            // SAFETY: an index offset in the page.
            unsafe { *(self.ptr().add(off) as *const u32) }
        }
        fn set(&mut self, off: usize, v: u32) {
            // SAFETY: as get.
            unsafe { *(self.ptr().add(off) as *mut u32) = v }
        }
        /// The server writes `data` into the right ring.
        fn server_write(&mut self, data: &[u8]) {
            let prod = self.get(RIGHT_PROD);
            for (i, b) in data.iter().enumerate() {
                let at = 2048 + ((prod as usize + i) & 2047);
                // SAFETY: inside the right ring.
                unsafe { *self.ptr().add(at) = *b };
            }
            self.set(RIGHT_PROD, prod.wrapping_add(data.len() as u32));
        }
        /// The server reads everything in the left ring.
        fn server_read(&mut self) -> Vec<u8> {
            let (cons, prod) = (self.get(LEFT_CONS), self.get(LEFT_PROD));
            let out = (0..prod.wrapping_sub(cons))
                // SAFETY: inside the left ring.
                .map(|i| unsafe {
                    *self
                        .ptr()
                        .add(1024 + ((cons.wrapping_add(i)) as usize & 1023))
                })
                .collect();
            self.set(LEFT_CONS, prod);
            out
        }
    }

    #[test]
    fn bytes_cross_both_rings_and_wrap_around() {
        let mut f = Fake::new();
        let mut r = f.rings();
        let mut got = Vec::new();
        let mut sent = Vec::new();
        for round in 0..50u32 {
            let chunk: Vec<u8> = (0..700).map(|i| (i as u32 * 7 + round) as u8).collect();
            f.server_write(&chunk);
            let mut buf = [0u8; 4096];
            let (n, _) = r.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            assert_eq!(&buf[..n], &chunk[..], "round {round}");
            let (w, _) = r.write(&chunk[..300]).unwrap();
            assert_eq!(w, 300);
            sent.extend_from_slice(&f.server_read());
        }
        assert_eq!(got.len(), 50 * 700);
        assert_eq!(sent.len(), 50 * 300);
    }

    #[test]
    fn a_full_ring_takes_no_more_and_an_empty_one_gives_nothing() {
        let mut f = Fake::new();
        let mut r = f.rings();
        assert_eq!(r.write(&[1; 5000]).unwrap().0, 1024);
        assert_eq!(r.write(&[1; 10]).unwrap().0, 0);
        assert_eq!(r.read(&mut [0; 10]).unwrap().0, 0);
    }

    #[test]
    fn a_server_claiming_more_than_the_ring_is_corrupt() {
        let mut f = Fake::new();
        let mut r = f.rings();
        f.set(RIGHT_PROD, 2049);
        assert_eq!(
            r.read(&mut [0; 16]),
            Err(RingError::Corrupt {
                ready: 2049,
                size: 2048
            })
        );
        // Our own index is ours: a server moving the shared copy changes nothing.
        f.set(RIGHT_PROD, 10);
        f.set(RIGHT_CONS, 5000);
        assert_eq!(r.readable(), Ok(10));
        // A consumer index ahead of what we produced is corrupt too.
        f.set(LEFT_CONS, 7);
        assert!(matches!(r.writable(), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn notifications_follow_the_servers_requests() {
        let mut f = Fake::new();
        let mut r = f.rings();
        // libxenvchan's server asks to hear of writes from the start.
        assert_eq!(r.write(b"a").unwrap(), (1, true));
        assert_eq!(r.write(b"b").unwrap(), (1, false), "a request is used once");
        f.server_write(b"xy");
        assert_eq!(r.read(&mut [0; 2]).unwrap(), (2, false));
        r.request(NOTIFY_WRITE);
        // SAFETY: a byte of the page.
        let srv_notify = unsafe { *f.ptr().add(SRV_NOTIFY) };
        assert_eq!(srv_notify & NOTIFY_WRITE, NOTIFY_WRITE);
        assert!(r.server_live());
    }

    #[test]
    fn only_layouts_libxenvchan_makes_are_accepted() {
        assert!(Layout::from_orders(10, 11).is_ok());
        assert!(Layout::from_orders(11, 10).is_ok());
        assert_eq!(
            Layout::from_orders(16, 16).unwrap(),
            Layout {
                left: (
                    16,
                    Placement::Pages {
                        n: 16,
                        first_grant: 0
                    }
                ),
                right: (
                    16,
                    Placement::Pages {
                        n: 16,
                        first_grant: 16
                    }
                ),
            }
        );
        for (l, r) in [(10, 10), (11, 11), (9, 12), (12, 21), (0, 0), (20, 10)] {
            assert!(Layout::from_orders(l, r).is_err(), "{l}/{r}");
        }
    }
}
