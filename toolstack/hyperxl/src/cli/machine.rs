//! The machine flags `run`, `config` and `pool fill` share: memory, vCPUs, domain type
//! and the guest to boot. They only parse; `hyperxl_core::vm::machine` checks them and
//! owns the defaults.

use std::path::PathBuf;

use clap::Args;
use hyperxl_core::vm::machine::{Guest, Kind, Machine, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};

// Memory, vCPUs, domain type, kernel and initramfs.
#[derive(Debug, Clone, Args)]
pub struct MachineArgs {
    /// Memory, e.g. 64m, 1g.
    #[arg(short = 'm', long = "memory", default_value_t = format!("{DEFAULT_MEMORY_MIB}m"))]
    pub memory: String,
    /// Number of virtual CPUs.
    #[arg(long = "cpus", visible_alias = "vcpus", default_value_t = DEFAULT_VCPUS)]
    pub cpus: u32,
    /// Domain type.
    #[arg(long = "type", default_value_t = Kind::default().to_string(), value_parser = ["pvh", "pv"])]
    pub kind: String,
    /// Guest kernel (default: $HYPERXL_GUEST_DIR/vmlinuz, else /usr/lib/hyperxl/vmlinuz).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default: $HYPERXL_GUEST_DIR/initramfs.cpio).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
}

impl MachineArgs {
    /// The checked machine and the guest it boots (whose files are checked at launch).
    pub fn resolve(&self) -> anyhow::Result<(Machine, Guest)> {
        let machine = Machine::parse(&self.memory, self.cpus.into(), &self.kind)?;
        Ok((
            machine,
            Guest::installed_or(self.kernel.clone(), self.initrd.clone()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        machine: MachineArgs,
    }

    #[test]
    fn defaults_come_from_the_library_and_limits_are_its_own() {
        let (m, _) = Cli::parse_from(["x"]).machine.resolve().unwrap();
        assert_eq!(m, Machine::default());
        let (m, g) = Cli::parse_from(["x", "-m", "64m", "--cpus", "2", "--type", "pv"])
            .machine
            .resolve()
            .unwrap();
        assert_eq!(m, Machine::parse("64m", 2, "pv").unwrap());
        assert!(g.kernel.ends_with("vmlinuz"));
        let err = Cli::parse_from(["x", "--cpus", "65"])
            .machine
            .resolve()
            .unwrap_err();
        assert_eq!(err.to_string(), "vcpus must be between 1 and 64, not 65");
        assert!(Cli::parse_from(["x", "-m", "8m"])
            .machine
            .resolve()
            .is_err());
    }
}
