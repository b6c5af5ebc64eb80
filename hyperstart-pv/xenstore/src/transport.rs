//! Byte transports under the client: the xenstored unix socket and the xenbus device.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connection that carries whole xenstore messages.
pub trait Transport {
    /// Sends one complete message (header + payload). Implementations must hand the
    /// whole buffer to a single `write()` (the xenbus device requires it).
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Fills `buf` completely, blocking as needed.
    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// Waits until data can be read. `None` waits forever; returns false on timeout and
    /// when a signal interrupted the wait.
    fn wait_readable(&mut self, timeout: Option<Duration>) -> io::Result<bool>;
}

/// A transport over any readable/writable file descriptor (socket or char device).
#[derive(Debug)]
pub struct FdTransport<F> {
    inner: F,
}

impl<F> FdTransport<F> {
    /// Wraps an open descriptor.
    pub fn new(inner: F) -> Self {
        FdTransport { inner }
    }
}

/// The xenstored unix socket in dom0.
pub type SocketTransport = FdTransport<UnixStream>;
/// The `/dev/xen/xenbus` (or `/proc/xen/xenbus`) device.
pub type XenbusTransport = FdTransport<File>;

impl SocketTransport {
    /// Connects to a xenstored unix socket.
    pub fn connect(path: &str) -> io::Result<Self> {
        UnixStream::connect(path).map(FdTransport::new)
    }
}

impl XenbusTransport {
    /// Opens a xenbus character device read-write.
    pub fn open(path: &str) -> io::Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(FdTransport::new)
    }
}

impl<F: Read + Write + AsRawFd> Transport for FdTransport<F> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < msg.len() {
            match self.inner.write(&msg[sent..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "xenstore closed")),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)
    }

    fn wait_readable(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => d.as_millis().min(libc::c_int::MAX as u128) as libc::c_int,
        };
        let mut pfd = libc::pollfd {
            fd: self.inner.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // A signal ends the wait as a timeout would: a caller sleeping without a
            // timeout is woken by its stop signal and looks at its flags.
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(r > 0)
    }
}
