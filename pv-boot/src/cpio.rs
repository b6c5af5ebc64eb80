//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as initramfs.
//!
//! Output is deterministic: inode numbers count up from 1, every mtime is 0 and owners
//! are root, so the same inputs give byte-identical archives (and a stable cache key).

use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Errors while writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The underlying writer failed.
    #[error("writing cpio archive: {0}")]
    Io(#[from] io::Error),
    /// A name that the kernel's unpacker would reject or misplace.
    #[error("invalid cpio entry name {0:?}")]
    BadName(String),
    /// A file too large for the format's 32-bit size field.
    #[error("cpio entry {0:?} is larger than 4 GiB")]
    TooLarge(String),
}

/// Streams cpio `newc` entries into a writer; call [`Archive::finish`] at the end.
pub struct Archive<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> Archive<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, 0, b"")
    }

    /// Adds a regular file with `data` as its contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, 0, data)
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, 0, target.as_bytes())
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1).
    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(
            name,
            S_IFCHR | (perm & 0o7777),
            1,
            (major << 8) | minor,
            b"",
        )
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header("TRAILER!!!", 0, 0, 1, 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        if name.is_empty()
            || name.starts_with('/')
            || name.contains('\0')
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(CpioError::BadName(name.to_owned()));
        }
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.to_owned()))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, size, rdev)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: u32,
    ) -> Result<(), CpioError> {
        let namesize = name.len() as u32 + 1;
        let (rmaj, rmin) = (rdev >> 8, rdev & 0xff);
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(b"\0")?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads to the format's 4-byte alignment.
    fn pad(&mut self) -> Result<(), CpioError> {
        let rem = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..rem])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(header: &[u8], index: usize) -> u32 {
        let start = 6 + index * 8;
        u32::from_str_radix(std::str::from_utf8(&header[start..start + 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn file_entry_has_newc_header_name_and_aligned_data() {
        let mut a = Archive::new(Vec::new());
        a.file("init", 0o755, b"abcde").unwrap();
        let out = a.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 1), S_IFREG | 0o755);
        assert_eq!(field(&out, 6), 5, "size");
        assert_eq!(field(&out, 11), 5, "namesize includes the NUL");
        // 110-byte header + "init\0" = 115, padded to 116; data follows.
        assert_eq!(&out[116..121], b"abcde");
        assert_eq!(out.len() % 4, 0);
        let trailer = 124;
        assert_eq!(&out[trailer..trailer + 6], b"070701");
        assert_eq!(&out[trailer + 110..trailer + 120], b"TRAILER!!!");
    }

    #[test]
    fn device_numbers_split_into_major_and_minor() {
        let mut a = Archive::new(Vec::new());
        a.char_device("dev/console", 0o600, 5, 1).unwrap();
        let out = a.finish().unwrap();
        assert_eq!(field(&out, 1), S_IFCHR | 0o600);
        assert_eq!(field(&out, 9), 5);
        assert_eq!(field(&out, 10), 1);
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "/init", "a/../b", "a//b", "./x", "a\0b"] {
            let mut a = Archive::new(Vec::new());
            assert!(
                matches!(a.file(name, 0o644, b""), Err(CpioError::BadName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn archives_are_deterministic() {
        let build = || {
            let mut a = Archive::new(Vec::new());
            a.dir("dev", 0o755).unwrap();
            a.symlink("sbin", "bin").unwrap();
            a.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}
