//! Extra filesystems the guest mounts into the app's root: volumes and host-directory
//! snapshots (block devices dom0 attached), and tmpfs.
//!
//! The init mounts them after switching into the app's root, parents before children,
//! so a target is resolved inside the guest's own tree (a symlink in the image can only
//! point elsewhere in that tree). With [`crate::Spec::read_only`] the root is remounted
//! read-only after the mount points exist.

use serde::{Deserialize, Serialize};

/// The most extra mounts one spec may carry.
pub const MAX_MOUNTS: usize = 16;

/// Why a mount list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// More than [`MAX_MOUNTS`].
    #[error("at most {MAX_MOUNTS} mounts, got {0}")]
    TooMany(usize),
    /// A target that is not an absolute, normal path below `/`.
    #[error("mount target {0:?} must be an absolute path below / without . or .. parts")]
    BadTarget(String),
    /// Two mounts on one target.
    #[error("two mounts on {0}")]
    Duplicate(String),
    /// A device outside `/dev/xvd*`, or an odd filesystem type.
    #[error("mount of {target}: bad device {device:?} or filesystem {fstype:?}")]
    BadDisk {
        /// Its target.
        target: String,
        /// Its device.
        device: String,
        /// Its filesystem type.
        fstype: String,
    },
    /// A tmpfs mode with bits beyond 07777.
    #[error("tmpfs on {0}: mode beyond 07777")]
    BadMode(String),
}

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A block device dom0 attached (a volume, a host-directory snapshot).
    Disk {
        /// Device node in the guest, e.g. `/dev/xvdb`.
        device: String,
        /// Filesystem type, `ext4` or `squashfs`.
        fstype: String,
    },
    /// A tmpfs in guest memory.
    Tmpfs {
        /// Its size limit in bytes (default: the kernel's, half the guest's memory).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// Mode of its root (default 01777, as Docker's `--tmpfs`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
}

/// One extra mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute path in the app's root; created if missing.
    pub target: String,
    /// What is mounted there.
    pub source: Source,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

/// Whether `target` is an absolute path below `/` made of normal components only.
pub fn valid_target(target: &str) -> bool {
    let Some(rest) = target.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && target.len() <= 512
        && !target.contains('\0')
        && rest
            .trim_end_matches('/')
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The target without a trailing slash (`/data/` and `/data` are one mount point).
pub fn normal_target(target: &str) -> &str {
    match target.trim_end_matches('/') {
        "" => "/",
        t => t,
    }
}

/// Whether `device` is a guest block device dom0 attaches: `/dev/xvd[b-z]` or two letters.
pub fn valid_device(device: &str) -> bool {
    device
        .strip_prefix("/dev/xvd")
        .is_some_and(|s| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Checks a mount list: count, targets, devices, modes, no target twice.
pub fn validate(mounts: &[Mount]) -> Result<(), MountError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(MountError::TooMany(mounts.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        if !valid_target(&m.target) {
            return Err(MountError::BadTarget(m.target.clone()));
        }
        if !seen.insert(normal_target(&m.target)) {
            return Err(MountError::Duplicate(m.target.clone()));
        }
        match &m.source {
            Source::Disk { device, fstype } => {
                if !valid_device(device) || !matches!(fstype.as_str(), "ext4" | "squashfs") {
                    return Err(MountError::BadDisk {
                        target: m.target.clone(),
                        device: device.clone(),
                        fstype: fstype.clone(),
                    });
                }
            }
            Source::Tmpfs { mode, .. } => {
                if mode.is_some_and(|m| m > 0o7777) {
                    return Err(MountError::BadMode(m.target.clone()));
                }
            }
        }
    }
    Ok(())
}

/// The mounts in the order to mount them: parents before their children.
pub fn mount_order(mounts: &[Mount]) -> Vec<&Mount> {
    let mut v: Vec<&Mount> = mounts.iter().collect();
    v.sort_by_key(|m| normal_target(&m.target).matches('/').count());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs(target: &str) -> Mount {
        Mount {
            target: target.into(),
            source: Source::Tmpfs {
                size: None,
                mode: None,
            },
            readonly: false,
        }
    }

    fn disk(target: &str, device: &str, fstype: &str) -> Mount {
        Mount {
            target: target.into(),
            source: Source::Disk {
                device: device.into(),
                fstype: fstype.into(),
            },
            readonly: true,
        }
    }

    #[test]
    fn targets() {
        for ok in ["/data", "/var/lib/db", "/data/", "/a b"] {
            assert!(valid_target(ok), "{ok}");
        }
        for bad in ["", "/", "data", "/a/../b", "/./a", "/a//b", "//", "/a\0"] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&[tmpfs("/tmp"), disk("/data", "/dev/xvdb", "ext4")]).is_ok());
        assert_eq!(
            validate(&[tmpfs("/tmp"), tmpfs("/tmp/")]),
            Err(MountError::Duplicate("/tmp/".into()))
        );
        assert!(matches!(
            validate(&[disk("/d", "/dev/sda", "ext4")]),
            Err(MountError::BadDisk { .. })
        ));
        assert!(matches!(
            validate(&[disk("/d", "/dev/xvdb", "xfs")]),
            Err(MountError::BadDisk { .. })
        ));
        assert!(matches!(
            validate(&[disk("/d", "/dev/xvd", "ext4")]),
            Err(MountError::BadDisk { .. })
        ));
        let mut m = tmpfs("/x");
        m.source = Source::Tmpfs {
            size: None,
            mode: Some(0o17777),
        };
        assert_eq!(validate(&[m]), Err(MountError::BadMode("/x".into())));
        let many: Vec<Mount> = (0..=MAX_MOUNTS).map(|i| tmpfs(&format!("/t{i}"))).collect();
        assert_eq!(validate(&many), Err(MountError::TooMany(MAX_MOUNTS + 1)));
    }

    #[test]
    fn parents_first() {
        let m = [tmpfs("/a/b/c"), tmpfs("/a"), tmpfs("/a/b/")];
        let order: Vec<&str> = mount_order(&m).iter().map(|m| m.target.as_str()).collect();
        assert_eq!(order, ["/a", "/a/b/", "/a/b/c"]);
    }

    #[test]
    fn json_form() {
        let m = disk("/data", "/dev/xvdb", "ext4");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"target":"/data","source":{"type":"disk","device":"/dev/xvdb","fstype":"ext4"},"readonly":true}"#
        );
        assert_eq!(serde_json::from_str::<Mount>(&json).unwrap(), m);
        assert!(
            serde_json::from_str::<Mount>(r#"{"target":"/x","source":{"type":"nfs"}}"#).is_err()
        );
    }
}
