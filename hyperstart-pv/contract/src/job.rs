//! Jobs: work the init does itself, in place of an app, for dom0's helper VMs. A job VM
//! has no image; its disks are a volume and a raw stream disk.
//!
//! `volume export` and `volume import` move a volume's tree as a tar stream through a
//! raw disk, so dom0 never mounts (or parses) a filesystem a guest has written: for an
//! export dom0 only copies the bytes the header announces; for an import the guest
//! unpacks. The stream disk starts with a [`STREAM_HEADER_LEN`]-byte header
//! (`hyperxl-stream 1 LENGTH\n`, zero-padded), then LENGTH bytes of tar.

use serde::{Deserialize, Serialize};

/// The header in front of the tar stream on a stream disk.
pub const STREAM_HEADER_LEN: usize = 512;
const MAGIC: &str = "hyperxl-stream 1 ";

/// What a helper VM does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Job {
    /// Mount `volume` (ext4) read-only and write its tree as tar to `stream`.
    Export {
        /// The volume's device, e.g. `/dev/xvdb`.
        volume: String,
        /// The raw stream disk.
        stream: String,
    },
    /// Unpack the tar on `stream` into `volume` (ext4, mounted read-write).
    Import {
        /// The volume's device.
        volume: String,
        /// The raw stream disk.
        stream: String,
    },
}

impl Job {
    /// The devices it uses.
    pub fn devices(&self) -> [&str; 2] {
        match self {
            Job::Export { volume, stream } | Job::Import { volume, stream } => [volume, stream],
        }
    }
}

/// The header announcing `len` bytes of tar.
pub fn stream_header(len: u64) -> [u8; STREAM_HEADER_LEN] {
    let mut h = [0u8; STREAM_HEADER_LEN];
    let text = format!("{MAGIC}{len}\n");
    h[..text.len()].copy_from_slice(text.as_bytes());
    h
}

/// The length a header announces; `None` if it is not one.
pub fn parse_stream_header(h: &[u8]) -> Option<u64> {
    let h = h.get(..STREAM_HEADER_LEN)?;
    let end = h.iter().position(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&h[..end]).ok()?;
    let digits = text.strip_prefix(MAGIC)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        for len in [0, 1, 512, u64::MAX] {
            assert_eq!(parse_stream_header(&stream_header(len)), Some(len));
        }
    }

    #[test]
    fn bad_headers() {
        let mut h = stream_header(5);
        h[0] = b'X';
        assert_eq!(parse_stream_header(&h), None);
        assert_eq!(parse_stream_header(&[0u8; 512]), None);
        assert_eq!(parse_stream_header(b"hyperxl-stream 1 5\n"), None, "short");
        let mut h = [0u8; 512];
        h[..22].copy_from_slice(b"hyperxl-stream 1 -5\n\0\0");
        assert_eq!(parse_stream_header(&h), None);
        let mut h = [0u8; 512];
        let big = b"hyperxl-stream 1 99999999999999999999999\n";
        h[..big.len()].copy_from_slice(big);
        assert_eq!(parse_stream_header(&h), None);
    }

    #[test]
    fn json_form() {
        let j = Job::Export {
            volume: "/dev/xvdb".into(),
            stream: "/dev/xvdc".into(),
        };
        let s = serde_json::to_string(&j).unwrap();
        assert_eq!(
            s,
            r#"{"kind":"export","volume":"/dev/xvdb","stream":"/dev/xvdc"}"#
        );
        assert_eq!(serde_json::from_str::<Job>(&s).unwrap(), j);
    }
}
