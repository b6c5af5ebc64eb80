//! nf_tables set elements over netlink: how a VM's rules come and go without running
//! `nft`.
//!
//! Every per-VM rule of hyperxl is an element of a set or map in its tables (see
//! [`super::nft`]), so a VM needs only `NEWSETELEM`/`DELSETELEM` messages, sent as one
//! nfnetlink batch: all of them or none, as `nft -f` would. Spawning `nft` for that cost
//! a networked VM about 150 ms of dom0's CPU in the test host (start-up and its ruleset
//! cache, `scripts/bench/nft-cost.sh`), beside the domain build, on every `run`. The
//! tables, chains and sets themselves are still written by `nft` once per network
//! (rare, and a language worth its process there).
//!
//! The kernel checks every message against the set's declared key and data lengths and
//! answers each with an ack or an error; nothing here is trusted from a guest. Replies
//! are awaited with a timeout, so a wedged netlink socket cannot hang a `run`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

// linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const HEADER_LEN: usize = 16;
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// An nf_tables family (`nfgen_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `ip`.
    Ip,
    /// `bridge`.
    Bridge,
}

impl Family {
    fn code(self) -> u8 {
        match self {
            Family::Ip => libc::NFPROTO_IPV4 as u8,
            Family::Bridge => libc::NFPROTO_BRIDGE as u8,
        }
    }
}

/// A netlink exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    /// The socket could not be opened, or sending or receiving failed.
    #[error("nf_tables netlink: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused a message (the whole batch is then undone).
    #[error("nf_tables refused {what}: {source}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The kernel's errno.
        source: io::Error,
    },
    /// A reply that does not parse.
    #[error("nf_tables netlink: malformed reply")]
    Malformed,
}

impl NfnlError {
    /// Whether the kernel said that something does not exist (table, set or element).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NfnlError::Refused { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
    }
}

/// One element to add to or delete from a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOp {
    /// Delete (true) or add.
    pub delete: bool,
    /// The table's family.
    pub family: Family,
    /// The set's name.
    pub set: &'static str,
    /// The key, as the set stores it (see [`concat`]).
    pub key: Vec<u8>,
    /// A map element's value (adds only).
    pub data: Option<Vec<u8>>,
}

/// One element as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Its key.
    pub key: Vec<u8>,
    /// Its value (maps only).
    pub data: Option<Vec<u8>>,
}

/// An interface name as a set key (`ifname`: 16 bytes, NUL-padded; longer names are
/// cut, as the kernel never has one).
pub fn ifname(name: &str) -> Vec<u8> {
    let mut out = vec![0u8; libc::IFNAMSIZ];
    let n = name.len().min(libc::IFNAMSIZ - 1);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// A concatenation's key (`a . b . c`): each part padded with zeros to 4 bytes, as the
/// kernel's registers hold them.
pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// A netlink socket to nf_tables.
#[derive(Debug)]
pub struct Nfnl {
    fd: OwnedFd,
    seq: u32,
}

impl Nfnl {
    /// Opens a socket (needs CAP_NET_ADMIN for changes).
    pub fn open() -> Result<Self, NfnlError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(io::Error::from)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(io::Error::from)?;
        let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        Ok(Nfnl { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Applies `ops` as one transaction in `table`: all of them or none. Adding an
    /// element that exists with the same value is not an error; deleting one that does
    /// not exist is (ENOENT, see [`NfnlError::is_not_found`]).
    pub fn commit(&mut self, table: &str, ops: &[SetOp]) -> Result<(), NfnlError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let begin = self.next_seq();
        message(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        let mut waiting = Vec::new();
        for op in ops {
            let seq = self.next_seq();
            waiting.push(seq);
            let (kind, flags) = if op.delete {
                (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
            } else {
                (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
            };
            message(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | kind,
                flags,
                seq,
                op.family.code(),
                0,
                |b| element_list(b, table, op.set, &op.key, op.data.as_deref()),
            );
        }
        let end = self.next_seq();
        message(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        self.transmit(&buf)?;
        // One ack per element message, in order; the first error undid the batch.
        // Replies to an earlier batch that ended at its first error may still be
        // queued: only this batch's sequence numbers count.
        let what = if ops[0].delete {
            "deleting set elements"
        } else {
            "adding set elements"
        };
        let last = *waiting.last().expect("ops is not empty");
        let mut reply = vec![0u8; 64 * 1024];
        loop {
            let n = self.receive(&mut reply)?;
            for msg in Messages::new(&reply[..n]) {
                let (kind, _, seq, body) = msg?;
                if kind != NLMSG_ERROR || !waiting.contains(&seq) {
                    continue;
                }
                let code = error_code(body)?;
                if code != 0 {
                    return Err(NfnlError::Refused {
                        what,
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
                if seq == last {
                    return Ok(());
                }
            }
        }
    }

    /// Every element of `set` in `table`.
    pub fn elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Result<Vec<Element>, NfnlError> {
        let mut buf = Vec::new();
        let seq = self.next_seq();
        message(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family.code(),
            0,
            |b| {
                attr(b, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
                attr(b, NFTA_SET_ELEM_LIST_SET, &cstr(set));
            },
        );
        self.transmit(&buf)?;
        let mut out = Vec::new();
        let mut reply = vec![0u8; 64 * 1024];
        loop {
            let n = self.receive(&mut reply)?;
            for msg in Messages::new(&reply[..n]) {
                let (kind, flags, got, body) = msg?;
                if got != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(body)?;
                        if code != 0 {
                            return Err(NfnlError::Refused {
                                what: "listing a set",
                                source: io::Error::from_raw_os_error(-code),
                            });
                        }
                        return Ok(out);
                    }
                    _ => parse_elements(body, &mut out)?,
                }
                if flags & NLM_F_MULTI == 0 {
                    return Ok(out);
                }
            }
        }
    }

    fn transmit(&self, buf: &[u8]) -> Result<(), NfnlError> {
        send(self.fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(io::Error::from)?;
        Ok(())
    }

    fn receive(&self, buf: &mut [u8]) -> Result<usize, NfnlError> {
        loop {
            match recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
                Ok(0) => return Err(NfnlError::Malformed),
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(NfnlError::Io(e.into())),
            }
        }
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends one netlink message: header, `nfgenmsg`, then what `body` writes.
fn message(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    buf[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel.
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn element_list(buf: &mut Vec<u8>, table: &str, set: &str, key: &[u8], data: Option<&[u8]>) {
    attr(buf, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
    attr(buf, NFTA_SET_ELEM_LIST_SET, &cstr(set));
    nested(buf, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
        nested(b, NFTA_LIST_ELEM, |b| {
            nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, key));
            if let Some(d) = data {
                nested(b, NFTA_SET_ELEM_DATA, |b| attr(b, NFTA_DATA_VALUE, d));
            }
        });
    });
}

/// The messages in one datagram: (type, flags, seq, payload).
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(u16, u16, u32, &'a [u8]), NfnlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let h = self.rest.get(..HEADER_LEN)?;
            let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
            if len < HEADER_LEN || len > self.rest.len() {
                return None;
            }
            let kind = u16::from_ne_bytes(h[4..6].try_into().ok()?);
            let flags = u16::from_ne_bytes(h[6..8].try_into().ok()?);
            let seq = u32::from_ne_bytes(h[8..12].try_into().ok()?);
            let body = &self.rest[HEADER_LEN..len];
            let next = len.next_multiple_of(4).min(self.rest.len());
            Some(((kind, flags, seq, body), next))
        })();
        match parsed {
            Some((item, next)) => {
                self.rest = &self.rest[next..];
                Some(Ok(item))
            }
            None => {
                self.rest = &[];
                Some(Err(NfnlError::Malformed))
            }
        }
    }
}

/// An `nlmsgerr`'s error code (0: an ack).
fn error_code(body: &[u8]) -> Result<i32, NfnlError> {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or(NfnlError::Malformed)
}

/// The attributes in `buf`: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), NfnlError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let item = (|| {
            let len = u16::from_ne_bytes(buf.get(..2)?.try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & 0x3fff;
            let payload = buf.get(4..len)?;
            let next = len.next_multiple_of(4).min(buf.len());
            Some(((kind, payload), next))
        })();
        match item {
            Some((a, next)) => {
                buf = &buf[next..];
                Some(Ok(a))
            }
            None => {
                buf = &[];
                Some(Err(NfnlError::Malformed))
            }
        }
    })
}

fn value_of(nest: &[u8]) -> Result<Option<Vec<u8>>, NfnlError> {
    for a in attrs(nest) {
        let (kind, payload) = a?;
        if kind == NFTA_DATA_VALUE {
            return Ok(Some(payload.to_vec()));
        }
    }
    Ok(None)
}

/// The elements of one `NEWSETELEM` message of a dump (after its `nfgenmsg`).
fn parse_elements(body: &[u8], out: &mut Vec<Element>) -> Result<(), NfnlError> {
    let attrs_buf = body.get(4..).ok_or(NfnlError::Malformed)?;
    for a in attrs(attrs_buf) {
        let (kind, list) = a?;
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for e in attrs(list) {
            let (kind, elem) = e?;
            if kind != NFTA_LIST_ELEM {
                continue;
            }
            let (mut key, mut data) = (None, None);
            for f in attrs(elem) {
                let (kind, nest) = f?;
                match kind {
                    NFTA_SET_ELEM_KEY => key = value_of(nest)?,
                    NFTA_SET_ELEM_DATA => data = value_of(nest)?,
                    _ => {}
                }
            }
            if let Some(key) = key {
                out.push(Element { key, data });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_as_the_kernel_registers_hold_them() {
        // `nft --debug=netlink add element ip hyperxl ports { udp . 9 : 10.88.0.3 . 9 }`
        // printed key 00000011 00000900, data 0300580a 00000900 (little-endian words).
        assert_eq!(
            concat(&[&[17], &9u16.to_be_bytes()]),
            [17, 0, 0, 0, 0, 9, 0, 0]
        );
        assert_eq!(
            concat(&[&[10, 88, 0, 3], &9u16.to_be_bytes()]),
            [10, 88, 0, 3, 0, 9, 0, 0]
        );
        // `{ "hx0124" . 02:00:0a:58:00:03 }`: 31307868 00003432 0 0 580a0002 00000300.
        let k = concat(&[&ifname("hx0124"), &[2, 0, 0x0a, 0x58, 0, 3]]);
        assert_eq!(k.len(), 24);
        assert_eq!(&k[..6], b"hx0124");
        assert_eq!(&k[16..], [2, 0, 0x0a, 0x58, 0, 3, 0, 0]);
        assert_eq!(ifname("a-very-long-interface-name").len(), 16);
        assert_eq!(ifname("a-very-long-interface-name")[15], 0);
    }

    #[test]
    fn a_batch_message_nests_key_and_value() {
        let mut buf = Vec::new();
        message(&mut buf, 0x0a0c, 0x405, 7, 2, 0, |b| {
            element_list(b, "hyperxl", "ports", &[1, 2, 3, 4], Some(&[5, 6, 7, 8]))
        });
        let msgs: Vec<_> = Messages::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let (kind, flags, seq, body) = msgs[0];
        assert_eq!((kind, flags, seq), (0x0a0c, 0x405, 7));
        assert_eq!(&body[..4], [2, 0, 0, 0]);
        // The message reads back as the element it carries (the dump's layout).
        let mut out = Vec::new();
        parse_elements(body, &mut out).unwrap();
        assert_eq!(
            out,
            [Element {
                key: vec![1, 2, 3, 4],
                data: Some(vec![5, 6, 7, 8])
            }]
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut buf = Vec::new();
        message(&mut buf, 2, 0, 1, 0, 0, |b| b.extend_from_slice(&[0; 4]));
        for cut in 0..buf.len() {
            let _ = Messages::new(&buf[..cut]).collect::<Vec<_>>();
        }
        // A length that claims more than the datagram holds.
        let mut bad = buf.clone();
        bad[0] = 200;
        assert!(matches!(
            Messages::new(&bad).next(),
            Some(Err(NfnlError::Malformed))
        ));
        let mut out = Vec::new();
        assert!(parse_elements(&[0, 0, 0, 0, 40, 0, 3, 0], &mut out).is_err());
        for junk in [&[][..], &[1], &[8, 0, 3, 0, 4, 0]] {
            let _ = parse_elements(junk, &mut out);
        }
    }
}
