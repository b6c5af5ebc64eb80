//! An xl.cfg(5) file for a hyperxl VM, for `xl create` and for reading what a deployment
//! VM was started with: direct kernel boot, raw disks on the `phy` backend (so libxl
//! starts no QEMU, as [`libxl`]'s own disks), and every exit destroying the domain so that
//! hyperxl, not xl, decides about restarts.
//!
//! Strings are written double-quoted, disk specs single-quoted, with libxlutil's escapes
//! (`\\`, `\"`, `\'`, `\n`, `\r`, `\t`); other control characters are refused, since
//! xl's numeric escapes cannot carry them.

// Wired into the CLI by `up`/`down`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A domain as xl.cfg describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlConfig {
    /// The domain name.
    pub name: String,
    /// PV rather than PVH.
    pub pv: bool,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub ramdisk: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Raw disks, in order.
    pub disks: Vec<XlDisk>,
}

/// One raw disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlDisk {
    /// The file or block device backing it.
    pub target: PathBuf,
    /// The guest's device name, e.g. `xvda`.
    pub vdev: String,
    /// Read-only to the guest.
    pub readonly: bool,
}

/// A config xl.cfg cannot express.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XlCfgError {
    /// A path that is not UTF-8.
    #[error("{what} {} is not UTF-8, which xl.cfg cannot name", path.display())]
    NotUtf8 {
        /// Which setting.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A control character xl.cfg has no escape for.
    #[error("{what} {value:?} has a control character xl.cfg cannot write")]
    ControlCharacter {
        /// Which setting.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A vdev that is not a plain device name (it is not the last field of the disk
    /// spec, so a comma in it would add settings).
    #[error("invalid disk vdev {0:?}: use a device name like xvda")]
    BadVdev(String),
}

impl XlConfig {
    /// The config file's text.
    pub fn render(&self) -> Result<String, XlCfgError> {
        let mut out = String::from("# xl.cfg(5) written by hyperxl; xl create reads it\n");
        let kind = if self.pv { "pv" } else { "pvh" };
        let kernel = path_str("kernel", &self.kernel)?;
        let ramdisk = path_str("ramdisk", &self.ramdisk)?;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "name = {}", quote("name", &self.name, '"')?);
        let _ = writeln!(out, "type = \"{kind}\"");
        let _ = writeln!(out, "kernel = {}", quote("kernel", kernel, '"')?);
        let _ = writeln!(out, "ramdisk = {}", quote("ramdisk", ramdisk, '"')?);
        let _ = writeln!(out, "cmdline = {}", quote("cmdline", &self.cmdline, '"')?);
        let _ = writeln!(out, "memory = {}", self.memory_mib);
        let _ = writeln!(out, "vcpus = {}", self.vcpus);
        if !self.disks.is_empty() {
            let specs = self
                .disks
                .iter()
                .map(XlDisk::spec)
                .collect::<Result<Vec<_>, _>>()?;
            let _ = writeln!(out, "disk = [ {} ]", specs.join(", "));
        }
        for event in ["on_poweroff", "on_reboot", "on_crash"] {
            let _ = writeln!(out, "{event} = \"destroy\"");
        }
        Ok(out)
    }
}

impl XlDisk {
    /// The quoted disk spec (xl-disk-configuration(5)). `target=` comes last: xl takes the
    /// rest of the spec as the target, commas included.
    fn spec(&self) -> Result<String, XlCfgError> {
        let mut chars = self.vdev.chars();
        let vdev_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !vdev_ok {
            return Err(XlCfgError::BadVdev(self.vdev.clone()));
        }
        let access = if self.readonly { "ro" } else { "rw" };
        let target = path_str("disk target", &self.target)?;
        let spec = format!(
            "format=raw, vdev={}, access={access}, backendtype=phy, target={target}",
            self.vdev
        );
        quote("disk target", &spec, '\'')
    }
}

fn path_str<'a>(what: &'static str, path: &'a Path) -> Result<&'a str, XlCfgError> {
    path.to_str().ok_or_else(|| XlCfgError::NotUtf8 {
        what,
        path: path.to_path_buf(),
    })
}

/// `value` between `q`s, with libxlutil's escapes.
fn quote(what: &'static str, value: &str, q: char) -> Result<String, XlCfgError> {
    let mut out = String::with_capacity(value.len() + 2);
    out.push(q);
    for c in value.chars() {
        match c {
            '\\' | '"' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                return Err(XlCfgError::ControlCharacter {
                    what,
                    value: value.to_owned(),
                })
            }
            c => out.push(c),
        }
    }
    out.push(q);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> XlConfig {
        XlConfig {
            name: "shop-web".into(),
            pv: false,
            kernel: "/usr/lib/hyperxl/vmlinuz".into(),
            ramdisk: "/usr/lib/hyperxl/initramfs.cpio".into(),
            cmdline: "console=hvc0 quiet".into(),
            memory_mib: 128,
            vcpus: 2,
            disks: vec![
                XlDisk {
                    target: "/dev/loop3".into(),
                    vdev: "xvda".into(),
                    readonly: true,
                },
                XlDisk {
                    target: "/var/lib/hyperxl/vms/abc/scratch.img".into(),
                    vdev: "xvdb".into(),
                    readonly: false,
                },
            ],
        }
    }

    #[test]
    fn golden_pvh() {
        let want = r#"# xl.cfg(5) written by hyperxl; xl create reads it
name = "shop-web"
type = "pvh"
kernel = "/usr/lib/hyperxl/vmlinuz"
ramdisk = "/usr/lib/hyperxl/initramfs.cpio"
cmdline = "console=hvc0 quiet"
memory = 128
vcpus = 2
disk = [ 'format=raw, vdev=xvda, access=ro, backendtype=phy, target=/dev/loop3', 'format=raw, vdev=xvdb, access=rw, backendtype=phy, target=/var/lib/hyperxl/vms/abc/scratch.img' ]
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
"#;
        assert_eq!(config().render().unwrap(), want);
    }

    #[test]
    fn pv_and_no_disks() {
        let c = XlConfig {
            pv: true,
            disks: Vec::new(),
            ..config()
        };
        let text = c.render().unwrap();
        assert!(text.contains("\ntype = \"pv\"\n"), "{text}");
        assert!(!text.contains("\ndisk"), "{text}");
    }

    #[test]
    fn nothing_that_starts_qemu() {
        let text = config().render().unwrap();
        for key in [
            "device_model",
            "vnc",
            "sdl",
            "vfb",
            "serial",
            "builder",
            "usb",
        ] {
            assert!(!text.contains(key), "{key} in {text}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let c = XlConfig {
            name: r#"a"b\c"#.into(),
            cmdline: "x='1'\ty\n".into(),
            disks: vec![XlDisk {
                target: "/images/it's, here".into(),
                vdev: "xvda".into(),
                readonly: true,
            }],
            ..config()
        };
        let text = c.render().unwrap();
        assert!(text.contains(r#"name = "a\"b\\c""#), "{text}");
        assert!(text.contains(r#"cmdline = "x=\'1\'\ty\n""#), "{text}");
        assert!(text.contains(r"target=/images/it\'s, here' ]"), "{text}");
    }

    #[test]
    fn refuses_what_xl_cannot_say() {
        let c = XlConfig {
            cmdline: "a\0b".into(),
            ..config()
        };
        assert!(matches!(
            c.render(),
            Err(XlCfgError::ControlCharacter {
                what: "cmdline",
                ..
            })
        ));
        for vdev in ["", "xvda, access=rw", "XVDA", "1xvd"] {
            let mut c = config();
            c.disks[0].vdev = vdev.into();
            assert_eq!(c.render(), Err(XlCfgError::BadVdev(vdev.into())));
        }
        use std::os::unix::ffi::OsStrExt as _;
        let c = XlConfig {
            kernel: PathBuf::from(std::ffi::OsStr::from_bytes(b"/k\xff")),
            ..config()
        };
        assert!(matches!(
            c.render(),
            Err(XlCfgError::NotUtf8 { what: "kernel", .. })
        ));
    }
}
