//! A reader in front of the tar parser that refuses oversized metadata records before
//! the parser reads them.
//!
//! `tar` 0.4 reads the body of a GNU long-name (`L`), long-link (`K`) or PAX (`x`)
//! record whole into memory before its caller sees the entry, so a 16 MiB gzip layer
//! whose PAX header declares 15 GiB becomes a 15 GiB allocation. [`Guard`] sits between
//! the (decompressed, size-limited) stream and `tar::Archive`: it follows the archive's
//! 512-byte block structure the way `tar` does (header, data rounded up to a block, a
//! PAX `size` record overriding the next entry's size, an all-zero block ending the
//! archive) and fails the read of a header whose record is larger than its limit, so the
//! parser never gets to allocate for it. GNU sparse entries (`S`, which carry extra
//! header blocks) are refused here too: hyperxl does not import sparse files.

use std::io::{self, Read};

use tar::{EntryType, Header, PaxExtensions};

const BLOCK: usize = 512;

/// Why the guard stopped the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A long-name, long-link or PAX record larger than its limit.
    #[error("{kind} record of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// `GNU long-name`, `GNU long-link`, `PAX` or `PAX global`.
        kind: &'static str,
        /// The size its header declares.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry whose declared size, rounded up to whole blocks, does not fit in 64 bits
    /// (base-256 sizes can say so).
    #[error("entry size {size} is out of range")]
    SizeOutOfRange {
        /// The size its header declares.
        size: u64,
    },
    /// A GNU sparse entry (the name from its header, sanitised).
    #[error("sparse file {name:?} not supported")]
    Sparse {
        /// The entry's name.
        name: String,
    },
}

impl HeaderError {
    /// The guard's refusal inside an I/O error returned by the tar parser, if it is one.
    pub fn from_io(e: &io::Error) -> Option<&HeaderError> {
        e.get_ref().and_then(|i| i.downcast_ref::<HeaderError>())
    }
}

/// Largest metadata records the guard lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// GNU long-name and long-link record bodies.
    pub name: u64,
    /// PAX extended header bodies (per-entry and global).
    pub pax: u64,
}

/// Wraps a tar stream; see the module docs.
pub struct Guard<R> {
    inner: R,
    limits: RecordLimits,
    /// The current header block and how much of it was read / handed out.
    block: [u8; BLOCK],
    filled: usize,
    served: usize,
    /// Bytes of entry data (with padding) left before the next header.
    data_left: u64,
    /// The body of a PAX record being read (unpadded length still wanted).
    capture: Option<(Vec<u8>, u64)>,
    /// A PAX `size` for the next entry that is not itself a metadata record.
    pending_size: Option<u64>,
    /// Past the end-of-archive block (or lost): pass everything through.
    done: bool,
    /// Once refused, every later read fails the same way.
    failed: Option<HeaderError>,
}

impl<R: Read> Guard<R> {
    /// Guards `inner` with `limits`.
    pub fn new(inner: R, limits: RecordLimits) -> Guard<R> {
        Guard {
            inner,
            limits,
            block: [0; BLOCK],
            filled: 0,
            served: 0,
            data_left: 0,
            capture: None,
            pending_size: None,
            done: false,
            failed: None,
        }
    }

    /// Looks at a complete header block and sets up the data that follows it.
    fn inspect(&mut self) -> io::Result<()> {
        if self.block.iter().all(|&b| b == 0) {
            // End of archive for `tar` (it does not ignore zeros here).
            self.done = true;
            return Ok(());
        }
        let header = Header::from_byte_slice(&self.block);
        let Ok(size) = header.entry_size() else {
            // `tar` fails on this header itself.
            self.done = true;
            return Ok(());
        };
        let etype = header.entry_type();
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let too_large = |kind, limit| {
            if size > limit {
                Err(io::Error::other(HeaderError::TooLarge {
                    kind,
                    size,
                    limit,
                }))
            } else {
                Ok(())
            }
        };
        let data = match etype {
            EntryType::GNULongName | EntryType::GNULongLink => {
                let kind = if etype == EntryType::GNULongName {
                    "GNU long-name"
                } else {
                    "GNU long-link"
                };
                too_large(kind, self.limits.name)?;
                if !recognised {
                    // `tar` returns it as an ordinary entry: the group ends here.
                    self.pending_size = None;
                }
                size
            }
            EntryType::XHeader => {
                too_large("PAX", self.limits.pax)?;
                if recognised {
                    self.capture = Some((Vec::with_capacity(size as usize), size));
                } else {
                    self.pending_size = None;
                }
                size
            }
            EntryType::XGlobalHeader => {
                too_large("PAX global", self.limits.pax)?;
                self.pending_size = None;
                size
            }
            EntryType::GNUSparse => {
                let name = crate::text::sanitise_bytes(&header.path_bytes());
                return Err(io::Error::other(HeaderError::Sparse { name }));
            }
            _ => self.pending_size.take().unwrap_or(size),
        };
        // Found by fuzzing: a base-256 size near 2^64 overflowed here (wrapping in
        // release builds, which would put the guard out of step with tar).
        self.data_left = data
            .checked_next_multiple_of(BLOCK as u64)
            .ok_or_else(|| io::Error::other(HeaderError::SizeOutOfRange { size: data }))?;
        if self.capture.as_ref().is_some_and(|(_, want)| *want == 0) {
            self.finish_capture();
        }
        Ok(())
    }

    /// A PAX body is complete: its `size` record (read as `tar` reads it) applies to
    /// the next entry.
    fn finish_capture(&mut self) {
        if let Some((body, _)) = self.capture.take() {
            self.pending_size = pax_size(&body);
        }
    }
}

/// The `size` record of a PAX body, exactly as `tar` 0.4 reads it: the first `size`
/// key wins, and a malformed record before it means none.
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.served < self.filled {
            // The rest of a header block already read and inspected.
            let n = buf.len().min(self.filled - self.served);
            buf[..n].copy_from_slice(&self.block[self.served..self.served + n]);
            self.served += n;
            return Ok(n);
        }
        if self.done {
            return self.inner.read(buf);
        }
        if self.data_left > 0 {
            let want = buf
                .len()
                .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            self.data_left -= n as u64;
            if let Some((body, left)) = self.capture.as_mut() {
                let take = (n as u64).min(*left) as usize;
                body.extend_from_slice(&buf[..take]);
                *left -= take as u64;
                if *left == 0 {
                    self.finish_capture();
                }
            }
            return Ok(n);
        }
        // The next header: read the whole block before handing any of it out.
        self.filled = 0;
        self.served = 0;
        while self.filled < BLOCK {
            let n = self.inner.read(&mut self.block[self.filled..])?;
            if n == 0 {
                break;
            }
            self.filled += n;
        }
        if self.filled == 0 {
            return Ok(0);
        }
        if self.filled < BLOCK {
            // A truncated header: `tar` reports it.
            self.done = true;
        } else if let Err(e) = self.inspect() {
            self.failed = HeaderError::from_io(&e).cloned();
            return Err(e);
        }
        let n = buf.len().min(self.filled - self.served);
        buf[..n].copy_from_slice(&self.block[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RecordLimits {
        RecordLimits {
            name: 1024,
            pax: 4096,
        }
    }

    fn header(t: EntryType, name: &str, size: u64) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_entry_type(t);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn entries(data: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut ar = tar::Archive::new(Guard::new(data, limits()));
        let mut out = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut d = Vec::new();
            e.read_to_end(&mut d)?;
            out.push((name, d));
        }
        Ok(out)
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".to_string() + &"n".repeat(300);
        let mut h = Header::new_gnu();
        h.set_size(5);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_pax_extensions([("user.x", &b"1"[..]), ("SCHILY.xattr.user.a", b"v")])
            .unwrap();
        let mut h = Header::new_gnu();
        h.set_size(600);
        b.append_data(&mut h, "f", &[7u8; 600][..]).unwrap();
        let data = b.into_inner().unwrap();
        // Read one byte at a time too: the guard must cope with any read size.
        let plain = entries(&data).unwrap();
        let mut slow = Vec::new();
        Guard::new(OneByte(&data), limits())
            .read_to_end(&mut slow)
            .unwrap();
        let first_diff = slow.iter().zip(&data).position(|(a, b)| a != b);
        assert_eq!((slow.len(), first_diff), (data.len(), None));
        assert_eq!(plain[0], (long, b"hello".to_vec()));
        assert_eq!(plain[1], ("f".to_string(), vec![7u8; 600]));
    }

    struct OneByte<'a>(&'a [u8]);
    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            (&mut self.0).take(1).read(buf)
        }
    }

    /// Found by `scripts/fuzz` (layer_merge): a size of 2^64 - 1 overflowed the block
    /// rounding.
    #[test]
    fn a_size_near_2_pow_64_is_refused_not_overflowed() {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_path("f").unwrap();
        h.set_mode(0o644);
        // Base-256: the high bit of the first byte, then the value.
        h.as_old_mut().size = [
            0x80, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        h.set_cksum();
        let e = entries(h.as_bytes()).unwrap_err();
        assert!(
            matches!(
                HeaderError::from_io(&e),
                Some(HeaderError::SizeOutOfRange { .. })
            ),
            "{e}"
        );
    }

    #[test]
    fn oversized_records_are_refused_before_their_body() {
        for (t, kind) in [
            (EntryType::GNULongName, "GNU long-name"),
            (EntryType::GNULongLink, "GNU long-link"),
            (EntryType::XHeader, "PAX"),
            (EntryType::XGlobalHeader, "PAX global"),
        ] {
            // Only the header: the body is never there to be read.
            let data = header(t, "././@LongLink", 5 << 30);
            let e = entries(&data).unwrap_err();
            match HeaderError::from_io(&e) {
                Some(HeaderError::TooLarge { kind: k, size, .. }) => {
                    assert_eq!((*k, *size), (kind, 5 << 30))
                }
                other => panic!("{other:?} for {kind}"),
            }
        }
    }

    #[test]
    fn pax_size_keeps_the_guard_in_step() {
        // A PAX `size` overrides the header's (Go writes files over 8 GiB this way).
        // Here the header says 1024 bytes of data and PAX says none, so `tar` reads the
        // very next block as a header: a guard that trusted the header would skip the
        // long-name bomb hiding there as "data".
        let pax = |size: &str| {
            // "NN size=V\n": the length counts its own two digits.
            let rec = format!("{} size={size}\n", 9 + size.len());
            assert_eq!(rec.len(), 9 + size.len());
            let mut d = header(EntryType::XHeader, "pax", rec.len() as u64);
            let mut body = rec.into_bytes();
            body.resize(BLOCK, 0);
            d.extend(body);
            d
        };
        let mut data = pax("0");
        data.extend(header(EntryType::Regular, "f", 1024));
        data.extend(header(EntryType::GNULongName, "././@LongLink", 5 << 30));
        data.extend([0u8; 1024]);
        let e = entries(&data).unwrap_err();
        assert!(
            matches!(HeaderError::from_io(&e), Some(HeaderError::TooLarge { .. })),
            "{e}"
        );
        // And the other way round: PAX says 1024 bytes the header does not announce;
        // the block that looks like a bomb is file data, as `tar` reads it.
        let mut data = pax("1024");
        data.extend(header(EntryType::Regular, "f", 0));
        let mut payload = header(EntryType::GNULongName, "x", 5 << 30);
        payload.resize(1024, 0);
        data.extend(payload);
        data.extend([0u8; 1024]);
        let got = entries(&data).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 1024);
    }

    #[test]
    fn sparse_entries_are_refused() {
        let data = header(EntryType::GNUSparse, "holes", 0);
        let e = entries(&data).unwrap_err();
        assert_eq!(
            HeaderError::from_io(&e),
            Some(&HeaderError::Sparse {
                name: "holes".into()
            })
        );
    }
}
