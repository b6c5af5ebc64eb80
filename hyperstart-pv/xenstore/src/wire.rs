//! The `xsd_sockmsg` framing: a 16-byte header and a NUL-separated payload.
//!
//! Message type numbers follow `xen/include/public/io/xs_wire.h`.

use crate::XenstoreError;

/// Size of the `xsd_sockmsg` header in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest payload xenstored accepts (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// Message types of the xenstore wire protocol (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`: list the children of a node.
    Directory = 1,
    /// `XS_READ`: read a node's value.
    Read = 2,
    /// `XS_GET_PERMS`: read a node's permissions.
    GetPerms = 3,
    /// `XS_WATCH`: register a watch (path, token).
    Watch = 4,
    /// `XS_UNWATCH`: remove a watch (path, token).
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END` ("T" commit, "F" abort).
    TransactionEnd = 7,
    /// `XS_INTRODUCE` (dom0 toolstack only).
    Introduce = 8,
    /// `XS_RELEASE` (dom0 toolstack only).
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`: `/local/domain/<domid>` for a domid.
    GetDomainPath = 10,
    /// `XS_WRITE`: write a node's value.
    Write = 11,
    /// `XS_MKDIR`: create a node (and its parents).
    Mkdir = 12,
    /// `XS_RM`: remove a node and its children.
    Rm = 13,
    /// `XS_SET_PERMS`: replace a node's permissions.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: asynchronous watch notification (path, token).
    WatchEvent = 15,
    /// `XS_ERROR`: the payload is an errno name such as "ENOENT".
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
}

impl MsgType {
    /// The message type for a raw header value, if known.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// One decoded `xsd_sockmsg` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Raw message type (see [`MsgType`]).
    pub msg_type: u32,
    /// Request id, echoed by xenstored in the reply.
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Encodes the header in native byte order, as xenstored expects.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.msg_type.to_ne_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_ne_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_ne_bytes());
        b[12..16].copy_from_slice(&self.len.to_ne_bytes());
        b
    }

    /// Decodes a header; fails when the announced payload is larger than [`PAYLOAD_MAX`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, XenstoreError> {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        };
        if h.len as usize > PAYLOAD_MAX {
            return Err(XenstoreError::Protocol(format!(
                "payload of {} bytes exceeds {PAYLOAD_MAX}",
                h.len
            )));
        }
        Ok(h)
    }
}

/// Builds a full message (header + payload) in one buffer, so it can go out in one `write()`.
pub fn encode_message(
    msg_type: MsgType,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> Result<Vec<u8>, XenstoreError> {
    if payload.len() > PAYLOAD_MAX {
        return Err(XenstoreError::TooLong(payload.len()));
    }
    let h = Header {
        msg_type: msg_type as u32,
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Joins arguments as xenstored wants them: every argument followed by a NUL.
pub fn nul_args(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a);
        out.push(0);
    }
    out
}

/// Splits a NUL-separated payload into its strings (a trailing NUL ends the last one).
pub fn split_nul(payload: &[u8]) -> Vec<String> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = Header {
            msg_type: 2,
            req_id: 7,
            tx_id: 3,
            len: 12,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_rejects_oversized_payload() {
        let h = Header {
            msg_type: 2,
            req_id: 0,
            tx_id: 0,
            len: 4097,
        };
        assert!(Header::decode(&h.encode()).is_err());
    }

    #[test]
    fn message_is_header_then_payload() {
        let m = encode_message(MsgType::Read, 1, 0, b"a/b\0").unwrap();
        assert_eq!(m.len(), 20);
        assert_eq!(&m[0..4], &2u32.to_ne_bytes());
        assert_eq!(&m[12..16], &4u32.to_ne_bytes());
        assert_eq!(&m[16..], b"a/b\0");
        assert!(encode_message(MsgType::Write, 1, 0, &[b'x'; 4097]).is_err());
    }

    #[test]
    fn split_handles_trailing_nul_and_empty() {
        assert_eq!(split_nul(b"a\0b\0"), vec!["a", "b"]);
        assert_eq!(split_nul(b"a\0b"), vec!["a", "b"]);
        assert!(split_nul(b"").is_empty());
        assert!(split_nul(b"\0").is_empty());
    }

    #[test]
    fn msg_type_numbers_match_xs_wire() {
        assert_eq!(MsgType::from_u32(15), Some(MsgType::WatchEvent));
        assert_eq!(MsgType::from_u32(16), Some(MsgType::Error));
        assert_eq!(MsgType::GetDomainPath as u32, 10);
        assert_eq!(MsgType::from_u32(20), None);
    }
}
