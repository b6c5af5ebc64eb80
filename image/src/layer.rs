//! Opening a layer blob as an uncompressed tar stream, with a byte limit.
//!
//! The compression is sniffed from the first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`,
//! anything else is read as plain tar), so a media type that lies cannot make us feed
//! compressed bytes to the tar parser or the other way round.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

/// Layer compression, as sniffed from the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

/// Opens `path` and returns its uncompressed stream and the compression found.
pub fn open(path: &Path) -> io::Result<(Box<dyn Read>, Compression)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Gzip,
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok((
            Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
            Compression::Zstd,
        ))
    } else {
        Ok((Box::new(r), Compression::None))
    }
}

/// A reader that stops with an error once more than `limit` bytes passed, and records
/// that it did in a flag the caller keeps (the error itself gets wrapped by the tar
/// parser, the flag does not).
pub struct Limited<R> {
    inner: R,
    left: u64,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Limited<R> {
    /// Wraps `inner`; `hit` is set when the limit is exceeded.
    pub fn new(inner: R, limit: u64, hit: Rc<Cell<bool>>) -> Self {
        Limited {
            inner,
            left: limit,
            hit,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(io::Error::other("size limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
