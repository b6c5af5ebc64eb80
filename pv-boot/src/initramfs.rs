//! The guest initramfs: hyperstart-pv as `/init`, the mount points it needs, and
//! `/dev/console` so the init has a console before it mounts devtmpfs. Nothing else.

use crate::cpio::{Archive, CpioError};

/// Builds the initramfs (uncompressed cpio `newc`) around the init binary `init`.
///
/// Uncompressed on purpose: hyperstart-pv is a few hundred KiB, and the guest kernel
/// would otherwise spend boot time decompressing it.
pub fn build(init: &[u8]) -> Result<Vec<u8>, CpioError> {
    let mut a = Archive::new(Vec::with_capacity(init.len() + 1024));
    for dir in ["dev", "proc", "sys", "mnt", "run", "tmp"] {
        a.dir(dir, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, init)?;
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_init_and_console() {
        let out = build(b"\x7fELF-init").unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("dev/console\0"));
        assert!(text.contains("init\0"));
        assert!(text.contains("\x7fELF-init"));
        assert!(text.contains("TRAILER!!!"));
    }
}
