//! The machine a VM runs on: memory, virtual CPUs and domain type ([`Machine`]), and the
//! guest it boots ([`Guest`]). Every front end converts into these before anything is
//! built — `run`'s and `pool fill`'s flags, a deployment file's VM, dom0's helper VMs,
//! and a containerd shim — so the defaults and limits are spelt here and nowhere else.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use libxl::DomainType;
use serde::{Deserialize, Serialize};

/// Memory of a VM that does not say (as `docker run` has none, hyperxl picks one).
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// The least memory a guest boots in, PV and PVH, measured in the test host: HyperKernel
/// linked at 2 MiB boots in 24 MiB; in 20 MiB a PV domain cannot be built and a PVH
/// guest runs out of memory while booting.
pub const MIN_MEMORY_MIB: u64 = 24;
/// The most memory a VM may ask for: 1 TiB, far beyond any test host, but small enough
/// that the size in KiB libxl takes cannot overflow.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Virtual CPUs of a VM that does not say.
pub const DEFAULT_VCPUS: u32 = 1;
/// The most virtual CPUs a VM may ask for. Xen's own limit for a PVH domain is 128
/// (libxl's `MAX_VCPUS`); hyperxl's guests are small, and half of that is plenty.
pub const MAX_VCPUS: u32 = 64;
/// The guest device of every VM's read-only root disk (what hyperstart-pv mounts).
pub const ROOT_VDEV: &str = "xvda";

/// A [`Machine`] or [`Guest`] that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// A memory size that does not parse or is out of range.
    #[error("invalid memory size {0:?}: use a number with b, k, m or g (at least {MIN_MEMORY_MIB}m, which HyperKernel needs to boot)")]
    Memory(String),
    /// A vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Vcpus(i64),
    /// A domain type other than `pvh` and `pv`.
    #[error("invalid domain type {0:?}: use pvh or pv")]
    Kind(String),
    /// A guest kernel or initramfs that is not there.
    #[error("guest {what} {} not found (build it with scripts/build-guest, or pass --kernel/--initrd)", path.display())]
    GuestFile {
        /// `kernel` or `initramfs`.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
}

/// The domain type: PVH (the default: hardware-assisted, no QEMU) or PV.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// PVH.
    #[default]
    Pvh,
    /// PV.
    Pv,
}

impl Kind {
    /// `pvh` or `pv`, as xl.cfg and hyperxl's flags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pvh => "pvh",
            Kind::Pv => "pv",
        }
    }

    /// libxl's name for it.
    pub fn domain_type(self) -> DomainType {
        match self {
            Kind::Pvh => DomainType::Pvh,
            Kind::Pv => DomainType::Pv,
        }
    }
}

impl FromStr for Kind {
    type Err = MachineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pvh" => Ok(Kind::Pvh),
            "pv" => Ok(Kind::Pv),
            _ => Err(MachineError::Kind(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Memory, vCPUs and domain type, checked: only [`Machine::new`] makes one (and
/// deserialising, through the same checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "MachineRecord", into = "MachineRecord")]
pub struct Machine {
    memory_mib: u64,
    vcpus: u32,
    kind: Kind,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            kind: Kind::default(),
        }
    }
}

impl Machine {
    /// A machine of `memory_mib` MiB and `vcpus` vCPUs, if both are within the limits.
    pub fn new(memory_mib: u64, vcpus: i64, kind: Kind) -> Result<Machine, MachineError> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(MachineError::Memory(format!("{memory_mib}m")));
        }
        let vcpus = u32::try_from(vcpus)
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or(MachineError::Vcpus(vcpus))?;
        Ok(Machine {
            memory_mib,
            vcpus,
            kind,
        })
    }

    /// From the words users write: a memory size as Docker spells it (`128m`, `1g`),
    /// a vCPU count and `pvh`/`pv`.
    pub fn parse(memory: &str, vcpus: i64, kind: &str) -> Result<Machine, MachineError> {
        Machine::new(parse_memory(memory)?, vcpus, kind.parse()?)
    }

    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    /// Virtual CPUs.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// The domain type.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether it is a PV domain.
    pub fn is_pv(&self) -> bool {
        self.kind == Kind::Pv
    }
}

/// How a [`Machine`] is stored (pool settings, VM records): flat fields, checked again
/// when read.
#[derive(Serialize, Deserialize)]
struct MachineRecord {
    pv: bool,
    memory_mib: u64,
    vcpus: u32,
}

impl TryFrom<MachineRecord> for Machine {
    type Error = MachineError;

    fn try_from(r: MachineRecord) -> Result<Self, Self::Error> {
        let kind = if r.pv { Kind::Pv } else { Kind::Pvh };
        Machine::new(r.memory_mib, i64::from(r.vcpus), kind)
    }
}

impl From<Machine> for MachineRecord {
    fn from(m: Machine) -> Self {
        MachineRecord {
            pv: m.is_pv(),
            memory_mib: m.memory_mib,
            vcpus: m.vcpus,
        }
    }
}

/// Parses Docker's memory sizes (`128m`, `1g`, `524288k`, bytes) into MiB, at least
/// [`MIN_MEMORY_MIB`].
pub fn parse_memory(s: &str) -> Result<u64, MachineError> {
    let bad = || MachineError::Memory(s.to_owned());
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('b') => (&lower[..lower.len() - 1], 1),
        _ => (lower, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mib = n.checked_mul(mult).ok_or_else(bad)? >> 20;
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(bad());
    }
    Ok(mib)
}

/// Where the guest artefacts live unless a front end says otherwise:
/// `$HYPERXL_GUEST_DIR`, else the package's `/usr/lib/hyperxl`.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("HYPERXL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/hyperxl"))
}

/// The guest a VM boots: HyperKernel and the initramfs holding hyperstart-pv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

impl Guest {
    /// `vmlinuz` and `initramfs.cpio` in `dir`.
    pub fn in_dir(dir: &Path) -> Guest {
        Guest {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio"),
        }
    }

    /// The installed guest ([`guest_dir`]), each file replaced by the one given.
    pub fn installed_or(kernel: Option<PathBuf>, initrd: Option<PathBuf>) -> Guest {
        let dir = Guest::in_dir(&guest_dir());
        Guest {
            kernel: kernel.unwrap_or(dir.kernel),
            initrd: initrd.unwrap_or(dir.initrd),
        }
    }

    /// Both files exist.
    pub fn check(&self) -> Result<(), MachineError> {
        for (what, path) in [("kernel", &self.kernel), ("initramfs", &self.initrd)] {
            if !path.is_file() {
                return Err(MachineError::GuestFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_as_docker_spells_them() {
        assert_eq!(parse_memory("128m").unwrap(), 128);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("1G").unwrap(), 1024);
        assert_eq!(parse_memory("65536k").unwrap(), 64);
        assert_eq!(parse_memory("64mb").unwrap(), 64);
        assert_eq!(parse_memory("24m").unwrap(), 24);
        for bad in [
            "",
            "m",
            "12x",
            "-1m",
            "16m",
            "0",
            "99999999999999999g",
            "2048g",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_checked_once_for_every_front_end() {
        assert_eq!(
            Machine::default(),
            Machine::parse("128m", 1, "pvh").unwrap()
        );
        let m = Machine::parse("64m", 2, "pv").unwrap();
        assert_eq!((m.memory_mib(), m.vcpus(), m.kind()), (64, 2, Kind::Pv));
        assert_eq!(
            Machine::parse("64m", 65, "pvh"),
            Err(MachineError::Vcpus(65))
        );
        assert_eq!(Machine::parse("64m", 0, "pvh"), Err(MachineError::Vcpus(0)));
        assert_eq!(
            Machine::parse("64m", -1, "pvh"),
            Err(MachineError::Vcpus(-1))
        );
        assert_eq!(
            Machine::parse("64m", 1, "hvm"),
            Err(MachineError::Kind("hvm".into()))
        );
        assert!(matches!(
            Machine::new(16, 1, Kind::Pvh),
            Err(MachineError::Memory(_))
        ));
    }

    #[test]
    fn stored_machines_are_checked_when_read() {
        let m = Machine::parse("256m", 4, "pv").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"pv":true,"memory_mib":256,"vcpus":4}"#);
        assert_eq!(serde_json::from_str::<Machine>(&json).unwrap(), m);
        let bad = r#"{"pv":false,"memory_mib":256,"vcpus":1000}"#;
        assert!(serde_json::from_str::<Machine>(bad).is_err());
    }

    #[test]
    fn a_missing_guest_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let guest = Guest::in_dir(dir.path());
        let err = guest.check().unwrap_err().to_string();
        assert!(
            err.contains("guest kernel") && err.contains("vmlinuz"),
            "{err}"
        );
        std::fs::write(&guest.kernel, b"k").unwrap();
        let err = guest.check().unwrap_err().to_string();
        assert!(err.contains("guest initramfs"), "{err}");
        std::fs::write(&guest.initrd, b"i").unwrap();
        guest.check().unwrap();
    }
}
