//! The container spec dom0 writes to `hyperxl/spec`.

use serde::{Deserialize, Serialize};

/// The contract version this crate speaks. A guest refuses a spec of another version.
pub const CONTRACT_VERSION: u32 = 1;

/// The default root filesystem device.
pub const DEFAULT_ROOTFS_DEVICE: &str = "/dev/xvda";
/// The default root filesystem type.
pub const DEFAULT_ROOTFS_FSTYPE: &str = "squashfs";
/// The default grace period between SIGTERM and SIGKILL (as `docker stop`).
pub const DEFAULT_STOP_GRACE_SECS: u32 = 10;

/// The largest spec, as JSON: xenstore carries at most 4096 bytes per request
/// (`XENSTORE_PAYLOAD_MAX`), and a write's payload also holds the key's path
/// (`/local/domain/<domid>/hyperxl/spec`, at most 37 bytes) and a NUL.
pub const MAX_SPEC_BYTES: usize = 4096 - 64;

/// Errors of spec parsing and validation.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not valid JSON, or unknown/mistyped fields.
    #[error("invalid spec JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A version this side does not speak.
    #[error("spec version {found} is not supported (expected {CONTRACT_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// `args` is empty.
    #[error("spec has no command (args is empty)")]
    NoCommand,
    /// An env entry without `=`.
    #[error("env entry {0:?} is not NAME=VALUE")]
    BadEnv(String),
    /// A soft limit above its hard limit.
    #[error("rlimit {name}: soft {soft} exceeds hard {hard}")]
    BadRlimit {
        /// The limit.
        name: String,
        /// Soft value.
        soft: u64,
        /// Hard value.
        hard: u64,
    },
    /// The spec does not fit in one xenstore value.
    #[error("the container spec is {size} bytes as JSON, over the {MAX_SPEC_BYTES} bytes one xenstore value can carry: shorten the environment or the command")]
    TooLarge {
        /// Its size as JSON.
        size: usize,
    },
    /// The network section is invalid.
    #[error("invalid network: {0}")]
    Network(#[from] crate::net::NetworkError),
    /// A hostname that is not a DNS name.
    #[error("invalid hostname {0:?}")]
    Hostname(String),
    /// A job's device that is not a `/dev/xvd*` disk.
    #[error("job device {0:?} is not a /dev/xvd* disk")]
    JobDevice(String),
    /// The extra mounts are invalid.
    #[error("invalid mounts: {0}")]
    Mounts(#[from] crate::mounts::MountError),
    /// A relative working directory or device path.
    #[error("{field} must be an absolute path, got {value:?}")]
    NotAbsolute {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

/// A block device and the filesystem on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Device node in the guest, e.g. `/dev/xvda`.
    pub device: String,
    /// Filesystem type for mount(2), e.g. `squashfs`, `erofs`, `ext4`.
    pub fstype: String,
}

/// Resource limits by their `docker run --ulimit` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum RlimitName {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
    As,
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// Which limit.
    pub name: RlimitName,
    /// Soft value (`u64::MAX` = unlimited).
    pub soft: u64,
    /// Hard value (`u64::MAX` = unlimited).
    pub hard: u64,
}

fn default_rootfs() -> Disk {
    Disk {
        device: DEFAULT_ROOTFS_DEVICE.to_string(),
        fstype: DEFAULT_ROOTFS_FSTYPE.to_string(),
    }
}

fn default_workdir() -> String {
    "/".to_string()
}

fn default_grace() -> u32 {
    DEFAULT_STOP_GRACE_SECS
}

/// The spec as JSON on the wire (and, after [`Spec::validate`], as the code uses it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Must equal [`CONTRACT_VERSION`].
    pub version: u32,
    /// The full argv (entrypoint and cmd already merged); `args[0]` is looked up on PATH.
    pub args: Vec<String>,
    /// The final environment as `NAME=VALUE` (see [`crate::env::merge`]); the guest adds
    /// `HOME` when absent.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory, created if missing (as Docker does).
    #[serde(default = "default_workdir")]
    pub working_dir: String,
    /// User as Docker spells it: "", "name", "uid", "uid:gid", "name:group".
    #[serde(default)]
    pub user: String,
    /// Hostname of the guest (empty: leave the kernel's).
    #[serde(default)]
    pub hostname: String,
    /// Resource limits applied before exec.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// The read-only image disk.
    #[serde(default = "default_rootfs")]
    pub rootfs: Disk,
    /// A writable scratch disk for the overlay's upper layer (tmpfs when absent).
    #[serde(default)]
    pub scratch: Option<Disk>,
    /// Seconds between SIGTERM and SIGKILL on a shutdown request.
    #[serde(default = "default_grace")]
    pub stop_grace_secs: u32,
    /// The app runs with a terminal (adds `TERM=xterm` in [`crate::env::merge`]).
    #[serde(default)]
    pub terminal: bool,
    /// dom0 attaches to the app's terminal once it runs (`run -t` without `-d`): the
    /// init keeps the app's first output (at most 64 KiB) for that session, and when the
    /// app ends waits (at most 5 s) for it to take the rest before powering off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// The app's stdin is a pipe that dom0 feeds through an attach session (`run -i`);
    /// otherwise it is `/dev/null`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_stdin: bool,
    /// The guest's network (`eth0`); none: only `lo` (`--network none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::Network>,
    /// Volumes, host-directory snapshots and tmpfs mounted into the app's root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::mounts::Mount>,
    /// The app's root is remounted read-only once the mount points exist (`--read-only`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// A job the init does itself instead of running `args` (dom0's helper VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::job::Job>,
    /// The init prints when it finished each of its steps, for the benchmarks
    /// (`HYPERXL_TIMINGS=1`): [`crate::console::TIMING`] lines before its last line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timings: bool,
}

impl Spec {
    /// A spec with defaults for everything but the command.
    pub fn new(args: Vec<String>) -> Spec {
        Spec {
            version: CONTRACT_VERSION,
            args,
            env: Vec::new(),
            working_dir: default_workdir(),
            user: String::new(),
            hostname: String::new(),
            rlimits: Vec::new(),
            rootfs: default_rootfs(),
            scratch: None,
            stop_grace_secs: DEFAULT_STOP_GRACE_SECS,
            terminal: false,
            open_stdin: false,
            attached: false,
            network: None,
            mounts: Vec::new(),
            read_only: false,
            job: None,
            timings: false,
        }
    }

    /// Parses and validates spec JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Spec, SpecError> {
        let spec: Spec = serde_json::from_slice(bytes)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Serializes to the JSON written to xenstore (after validating).
    pub fn to_json(&self) -> Result<String, SpecError> {
        self.validate()?;
        Ok(serde_json::to_string(self)?)
    }

    /// Checks what serde cannot: version, command, env form, limits, absolute paths, and
    /// that the JSON fits in one xenstore value.
    pub fn validate(&self) -> Result<(), SpecError> {
        let size = serde_json::to_vec(self)?.len();
        if size > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge { size });
        }
        if self.version != CONTRACT_VERSION {
            return Err(SpecError::Version {
                found: self.version,
            });
        }
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(SpecError::NoCommand);
        }
        if let Some(bad) = self
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(SpecError::BadEnv(bad.clone()));
        }
        if !self.hostname.is_empty()
            && (self.hostname.len() > 64 || !crate::net::valid_hostname(&self.hostname))
        {
            return Err(SpecError::Hostname(self.hostname.clone()));
        }
        if let Some(net) = &self.network {
            net.validate()?;
        }
        crate::mounts::validate(&self.mounts)?;
        if let Some(job) = &self.job {
            if let Some(bad) = job
                .devices()
                .into_iter()
                .find(|d| !crate::mounts::valid_device(d))
            {
                return Err(SpecError::JobDevice(bad.to_string()));
            }
        }
        for r in &self.rlimits {
            if r.soft > r.hard {
                return Err(SpecError::BadRlimit {
                    name: format!("{:?}", r.name).to_lowercase(),
                    soft: r.soft,
                    hard: r.hard,
                });
            }
        }
        let mut abs = vec![
            ("working_dir", &self.working_dir),
            ("rootfs.device", &self.rootfs.device),
        ];
        if let Some(s) = &self.scratch {
            abs.push(("scratch.device", &s.device));
        }
        for (field, value) in abs {
            if !value.starts_with('/') {
                return Err(SpecError::NotAbsolute {
                    field,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example documented in the report and docs; keep it parsing.
    pub const EXAMPLE: &str = r#"{
  "version": 1,
  "args": ["/bin/sh", "-c", "echo hello; exit 7"],
  "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=web1", "FOO=bar"],
  "working_dir": "/srv",
  "user": "1000:1000",
  "hostname": "web1",
  "rlimits": [{"name": "nofile", "soft": 1024, "hard": 4096}],
  "rootfs": {"device": "/dev/xvda", "fstype": "squashfs"},
  "scratch": {"device": "/dev/xvdb", "fstype": "ext4"},
  "stop_grace_secs": 10,
  "terminal": false
}"#;

    #[test]
    fn full_example_parses() {
        let s = Spec::from_json(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(s.args[2], "echo hello; exit 7");
        assert_eq!(s.rlimits[0].name, RlimitName::Nofile);
        assert_eq!(s.scratch.as_ref().unwrap().device, "/dev/xvdb");
        let again = Spec::from_json(s.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(again, s);
    }

    /// Defect 8 (issue 10): a spec over xenstore's value limit failed only after the
    /// domain was built; now validation refuses it up front.
    #[test]
    fn defect8_a_spec_over_the_xenstore_value_limit_is_refused() {
        let mut spec = Spec::new(vec!["sh".into()]);
        spec.env.push(format!("X={}", "a".repeat(MAX_SPEC_BYTES)));
        assert!(
            matches!(spec.validate(), Err(SpecError::TooLarge { size }) if size > MAX_SPEC_BYTES)
        );
        assert!(matches!(spec.to_json(), Err(SpecError::TooLarge { .. })));
        spec.env[0] = format!("X={}", "a".repeat(3000));
        let json = spec.to_json().unwrap();
        assert!(json.len() <= MAX_SPEC_BYTES);
    }

    #[test]
    fn defaults() {
        let s = Spec::from_json(br#"{"version":1,"args":["true"]}"#).unwrap();
        assert_eq!(s, Spec::new(vec!["true".into()]));
        assert_eq!(s.rootfs.fstype, "squashfs");
        assert_eq!(s.working_dir, "/");
        assert_eq!(s.stop_grace_secs, 10);
        assert!(s.scratch.is_none());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(matches!(
            Spec::from_json(br#"{"version":1,"args":["true"],"cmd":["x"]}"#),
            Err(SpecError::Json(_))
        ));
        assert!(matches!(
            Spec::from_json(br#"{"version":2,"args":["true"]}"#),
            Err(SpecError::Version { found: 2 })
        ));
        assert!(matches!(
            Spec::from_json(br#"{"version":1,"args":[]}"#),
            Err(SpecError::NoCommand)
        ));
        assert!(matches!(
            Spec::from_json(br#"{"version":1,"args":["x"],"env":["FOO"]}"#),
            Err(SpecError::BadEnv(_))
        ));
        assert!(matches!(
            Spec::from_json(br#"{"version":1,"args":["x"],"working_dir":"srv"}"#),
            Err(SpecError::NotAbsolute { .. })
        ));
        assert!(matches!(
            Spec::from_json(
                br#"{"version":1,"args":["x"],"rlimits":[{"name":"nofile","soft":9,"hard":1}]}"#
            ),
            Err(SpecError::BadRlimit { .. })
        ));
        assert!(Spec::from_json(
            br#"{"version":1,"args":["x"],"rlimits":[{"name":"bogus","soft":1,"hard":1}]}"#
        )
        .is_err());
    }
}
