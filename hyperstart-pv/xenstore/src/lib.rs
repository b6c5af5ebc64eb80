//! A small xenstore wire-protocol client, shared by dom0 and the guest.
//!
//! The same framing (`xsd_sockmsg`: a 16-byte native-endian header of type, request id,
//! transaction id and length, then a NUL-separated payload of at most 4096 bytes) runs
//! over xenstored's unix socket in dom0 and over `/dev/xen/xenbus` in a guest.
//! Watch events may arrive between a request and its reply; they are queued and handed
//! out by [`Xenstore::next_watch_event`].
//!
//! Paths not starting with `/` are relative to the caller's own
//! `/local/domain/<domid>` (xenstored resolves them), which is how a guest reaches its
//! keys without knowing its domid.
//!
//! ```no_run
//! use xenstore_wire::Xenstore;
//! let mut xs = Xenstore::open_default()?;
//! let spec = xs.read("hyperxl/spec")?;
//! xs.write("data/hyperxl/state", b"started")?;
//! # Ok::<(), xenstore_wire::XenstoreError>(())
//! ```

mod error;
mod perm;
mod transport;
pub mod wire;

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

pub use error::{XenstoreError, XsErrno};
pub use perm::{Access, Perm};
pub use transport::{FdTransport, SocketTransport, Transport, XenbusTransport};
use wire::{encode_message, nul_args, split_nul, Header, MsgType, HEADER_LEN};

/// The xenstored socket in dom0.
pub const DEFAULT_SOCKET: &str = "/run/xenstored/socket";
/// The xenbus device in a guest (and in dom0 without a local xenstored).
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// The xenfs fallback of the xenbus device (xenfs mounted on /proc/xen).
pub const XENBUS_PROC: &str = "/proc/xen/xenbus";

/// A transaction id; [`TxId::NONE`] means outside any transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxId(pub u32);

impl TxId {
    /// No transaction.
    pub const NONE: TxId = TxId(0);
}

/// One watch notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (relative if the watch was registered relative).
    pub path: String,
    /// The token given to [`Xenstore::watch`].
    pub token: String,
}

/// A xenstore connection over some [`Transport`].
pub struct Xenstore<T: Transport> {
    transport: T,
    next_req: u32,
    events: VecDeque<WatchEvent>,
}

impl Xenstore<SocketTransport> {
    /// Connects to xenstored's unix socket.
    pub fn open_socket(path: &str) -> Result<Self, XenstoreError> {
        SocketTransport::connect(path)
            .map(Xenstore::new)
            .map_err(|source| XenstoreError::Open {
                path: path.to_string(),
                source,
            })
    }
}

impl Xenstore<XenbusTransport> {
    /// Opens `/dev/xen/xenbus`, or `/proc/xen/xenbus` when only xenfs provides it.
    pub fn open_xenbus() -> Result<Self, XenstoreError> {
        let path = if Path::new(XENBUS_DEVICE).exists() {
            XENBUS_DEVICE
        } else {
            XENBUS_PROC
        };
        Self::open_xenbus_at(path)
    }

    /// Opens a xenbus device at an explicit path.
    pub fn open_xenbus_at(path: &str) -> Result<Self, XenstoreError> {
        XenbusTransport::open(path)
            .map(Xenstore::new)
            .map_err(|source| XenstoreError::Open {
                path: path.to_string(),
                source,
            })
    }
}

/// Either transport, as picked by [`Xenstore::open_default`].
pub enum AnyTransport {
    /// xenstored's unix socket.
    Socket(SocketTransport),
    /// The xenbus device.
    Xenbus(XenbusTransport),
}

impl Transport for AnyTransport {
    fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        match self {
            AnyTransport::Socket(t) => t.send(msg),
            AnyTransport::Xenbus(t) => t.send(msg),
        }
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            AnyTransport::Socket(t) => t.recv_exact(buf),
            AnyTransport::Xenbus(t) => t.recv_exact(buf),
        }
    }
    fn wait_readable(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
        match self {
            AnyTransport::Socket(t) => t.wait_readable(timeout),
            AnyTransport::Xenbus(t) => t.wait_readable(timeout),
        }
    }
}

impl Xenstore<AnyTransport> {
    /// The socket if it exists, else the xenbus device.
    pub fn open_default() -> Result<Self, XenstoreError> {
        if Path::new(DEFAULT_SOCKET).exists() {
            let t =
                SocketTransport::connect(DEFAULT_SOCKET).map_err(|source| XenstoreError::Open {
                    path: DEFAULT_SOCKET.to_string(),
                    source,
                })?;
            return Ok(Xenstore::new(AnyTransport::Socket(t)));
        }
        for dev in [XENBUS_DEVICE, XENBUS_PROC] {
            if Path::new(dev).exists() {
                let t = XenbusTransport::open(dev).map_err(|source| XenstoreError::Open {
                    path: dev.to_string(),
                    source,
                })?;
                return Ok(Xenstore::new(AnyTransport::Xenbus(t)));
            }
        }
        Err(XenstoreError::NotAvailable {
            socket: DEFAULT_SOCKET.to_string(),
            device: format!("{XENBUS_DEVICE} or {XENBUS_PROC}"),
        })
    }
}

fn utf8(op: &'static str, bytes: Vec<u8>) -> Result<String, XenstoreError> {
    String::from_utf8(bytes)
        .map_err(|_| XenstoreError::Protocol(format!("{op}: reply is not UTF-8")))
}

fn expect_ok(op: &'static str, reply: &[u8]) -> Result<(), XenstoreError> {
    if reply == b"OK\0" || reply == b"OK" {
        Ok(())
    } else {
        Err(XenstoreError::Protocol(format!(
            "{op}: expected OK, got {:?}",
            String::from_utf8_lossy(reply)
        )))
    }
}

impl<T: Transport> Xenstore<T> {
    /// A client over an already open transport.
    pub fn new(transport: T) -> Self {
        Xenstore {
            transport,
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    /// The transport (tests use it to inspect a fake).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn recv_message(&mut self) -> Result<(Header, Vec<u8>), XenstoreError> {
        let mut hb = [0u8; HEADER_LEN];
        self.transport.recv_exact(&mut hb)?;
        let h = Header::decode(&hb)?;
        let mut payload = vec![0u8; h.len as usize];
        self.transport.recv_exact(&mut payload)?;
        Ok((h, payload))
    }

    fn queue_event(&mut self, payload: &[u8]) -> Result<(), XenstoreError> {
        let mut parts = split_nul(payload).into_iter();
        match (parts.next(), parts.next()) {
            (Some(path), Some(token)) => {
                self.events.push_back(WatchEvent { path, token });
                Ok(())
            }
            _ => Err(XenstoreError::Protocol(
                "watch event without path and token".to_string(),
            )),
        }
    }

    /// Sends one request and returns the reply payload, queueing watch events seen first.
    fn request(
        &mut self,
        op: &'static str,
        ty: MsgType,
        tx: TxId,
        path: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, XenstoreError> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let msg = encode_message(ty, req_id, tx.0, payload)?;
        self.transport.send(&msg)?;
        loop {
            let (h, body) = self.recv_message()?;
            if h.msg_type == MsgType::WatchEvent as u32 {
                self.queue_event(&body)?;
                continue;
            }
            // Old kernels' xenbus device synthesized (un)watch replies with req_id 0.
            let synthesized = h.req_id == 0 && h.msg_type == ty as u32;
            if h.req_id != req_id && !synthesized {
                return Err(XenstoreError::Protocol(format!(
                    "{op}: reply for request {} while waiting for {req_id}",
                    h.req_id
                )));
            }
            if h.msg_type == MsgType::Error as u32 {
                let name = split_nul(&body).into_iter().next().unwrap_or_default();
                return Err(XenstoreError::Server {
                    op,
                    path: path.to_string(),
                    errno: XsErrno::from_name(&name),
                });
            }
            if h.msg_type != ty as u32 {
                return Err(XenstoreError::Protocol(format!(
                    "{op}: reply of type {} to a request of type {}",
                    h.msg_type, ty as u32
                )));
            }
            return Ok(body);
        }
    }

    /// Reads a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XenstoreError> {
        self.read_tx(TxId::NONE, path)
    }

    /// Reads a node's value inside a transaction.
    pub fn read_tx(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XenstoreError> {
        self.request(
            "read",
            MsgType::Read,
            tx,
            path,
            &nul_args(&[path.as_bytes()]),
        )
    }

    /// Reads a node's value as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String, XenstoreError> {
        let v = self.read(path)?;
        utf8("read", v)
    }

    /// Writes a node (creating it and missing parents).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XenstoreError> {
        self.write_tx(TxId::NONE, path, value)
    }

    /// Writes a node inside a transaction.
    pub fn write_tx(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XenstoreError> {
        // The value is not NUL-terminated: it runs to the end of the payload.
        let mut payload = nul_args(&[path.as_bytes()]);
        payload.extend_from_slice(value);
        let r = self.request("write", MsgType::Write, tx, path, &payload)?;
        expect_ok("write", &r)
    }

    /// Creates an empty node (no error if it exists).
    pub fn mkdir(&mut self, path: &str) -> Result<(), XenstoreError> {
        self.mkdir_tx(TxId::NONE, path)
    }

    /// Creates an empty node inside a transaction.
    pub fn mkdir_tx(&mut self, tx: TxId, path: &str) -> Result<(), XenstoreError> {
        let r = self.request(
            "mkdir",
            MsgType::Mkdir,
            tx,
            path,
            &nul_args(&[path.as_bytes()]),
        )?;
        expect_ok("mkdir", &r)
    }

    /// Removes a node and everything under it.
    pub fn rm(&mut self, path: &str) -> Result<(), XenstoreError> {
        self.rm_tx(TxId::NONE, path)
    }

    /// Removes a node inside a transaction.
    pub fn rm_tx(&mut self, tx: TxId, path: &str) -> Result<(), XenstoreError> {
        let r = self.request("rm", MsgType::Rm, tx, path, &nul_args(&[path.as_bytes()]))?;
        expect_ok("rm", &r)
    }

    /// Lists the names of a node's children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XenstoreError> {
        self.directory_tx(TxId::NONE, path)
    }

    /// Lists a node's children inside a transaction.
    pub fn directory_tx(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XenstoreError> {
        let r = self.request(
            "directory",
            MsgType::Directory,
            tx,
            path,
            &nul_args(&[path.as_bytes()]),
        )?;
        Ok(split_nul(&r))
    }

    /// Reads a node's permissions (owner first).
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XenstoreError> {
        let r = self.request(
            "get_perms",
            MsgType::GetPerms,
            TxId::NONE,
            path,
            &nul_args(&[path.as_bytes()]),
        )?;
        split_nul(&r).iter().map(|s| s.parse()).collect()
    }

    /// Replaces a node's permissions; the first entry is the owner and the default.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XenstoreError> {
        self.set_perms_tx(TxId::NONE, path, perms)
    }

    /// Replaces a node's permissions inside a transaction.
    pub fn set_perms_tx(
        &mut self,
        tx: TxId,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), XenstoreError> {
        if perms.is_empty() {
            return Err(XenstoreError::BadPerm(String::new()));
        }
        let strs: Vec<String> = perms.iter().map(Perm::to_string).collect();
        let mut args: Vec<&[u8]> = vec![path.as_bytes()];
        args.extend(strs.iter().map(|s| s.as_bytes()));
        let r = self.request("set_perms", MsgType::SetPerms, tx, path, &nul_args(&args))?;
        expect_ok("set_perms", &r)
    }

    /// Registers a watch. xenstored fires one event for it at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XenstoreError> {
        let payload = nul_args(&[path.as_bytes(), token.as_bytes()]);
        let r = self.request("watch", MsgType::Watch, TxId::NONE, path, &payload)?;
        expect_ok("watch", &r)
    }

    /// Removes a watch registered with the same path and token.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XenstoreError> {
        let payload = nul_args(&[path.as_bytes(), token.as_bytes()]);
        let r = self.request("unwatch", MsgType::Unwatch, TxId::NONE, path, &payload)?;
        expect_ok("unwatch", &r)?;
        self.events.retain(|e| e.token != token);
        Ok(())
    }

    /// Waits for the next watch event; `None` timeout waits forever, and `Ok(None)` means
    /// the timeout passed, or a signal interrupted the wait, without an event.
    pub fn next_watch_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<WatchEvent>, XenstoreError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !self.transport.wait_readable(left)? {
                return Ok(None);
            }
            let (h, body) = self.recv_message()?;
            if h.msg_type == MsgType::WatchEvent as u32 {
                self.queue_event(&body)?;
            } else {
                return Err(XenstoreError::Protocol(format!(
                    "unsolicited reply of type {} (request {})",
                    h.msg_type, h.req_id
                )));
            }
        }
    }

    /// Watch events already received and not yet handed out.
    pub fn pending_watch_events(&self) -> usize {
        self.events.len()
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, XenstoreError> {
        let r = self.request(
            "transaction_start",
            MsgType::TransactionStart,
            TxId::NONE,
            "",
            b"\0",
        )?;
        let s = split_nul(&r).into_iter().next().unwrap_or_default();
        s.parse().map(TxId).map_err(|_| {
            XenstoreError::Protocol(format!("transaction_start: bad transaction id {s:?}"))
        })
    }

    /// Ends a transaction: `commit` true commits, false aborts. A commit that conflicts
    /// fails with errno `EAGAIN` ([`XsErrno::Again`]): retry the whole transaction.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XenstoreError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        let r = self.request("transaction_end", MsgType::TransactionEnd, tx, "", arg)?;
        expect_ok("transaction_end", &r)
    }

    /// The home path of a domain (`/local/domain/<domid>`).
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String, XenstoreError> {
        let d = domid.to_string();
        let r = self.request(
            "get_domain_path",
            MsgType::GetDomainPath,
            TxId::NONE,
            &d,
            &nul_args(&[d.as_bytes()]),
        )?;
        Ok(split_nul(&r).into_iter().next().unwrap_or_default())
    }
}

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod tests;
