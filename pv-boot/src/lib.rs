//! Boot artefacts of a hyperxl guest: the initramfs that carries hyperstart-pv, and
//! checks on HyperKernel (the Xen entry points it must carry).
//!
//! ```
//! use pv_boot::cpio::Archive;
//!
//! let mut out = Vec::new();
//! let mut cpio = Archive::new(&mut out);
//! cpio.dir("dev", 0o755).unwrap();
//! cpio.file("init", 0o755, b"#!/bin/sh\n").unwrap();
//! cpio.finish().unwrap();
//! assert!(out.starts_with(b"070701"));
//! ```

pub mod cpio;
pub mod elfnote;
pub mod initramfs;
