//! `hyperxl volume create|ls|inspect|rm|prune`: named volumes, ext4 filesystems dom0 makes
//! on sparse files and attaches to VMs as extra disks (`run -v NAME:/path`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::machine::{guest_dir, Guest};
use hyperxl_core::vm::state::VmStore;
use hyperxl_core::volume::store::{self, VolumeStore};
use hyperxl_core::volume::transfer;

fn helper_files() -> Guest {
    Guest::in_dir(&guest_dir())
}

// Arguments of `hyperxl volume`.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume (an empty ext4 filesystem; sparse, it costs what is written).
    Create {
        /// Its size, e.g. 512m, 2g (at least 16m).
        #[arg(long, default_value = "1g")]
        size: String,
        /// A label KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Its name (letters, digits, '_', '.', '-'; at most 64).
        name: String,
    },
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes as JSON: size, space used on dom0, the VMs that use them.
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes no VM uses (a VM that exists, running or not, uses its volumes).
    #[command(visible_alias = "remove")]
    Rm {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write a volume's tree as a tar archive (made by a helper VM: dom0 never mounts
    /// the volume).
    Export {
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// The volume.
        name: String,
    },
    /// Unpack a tar archive into a volume, made if missing (by a helper VM).
    Import {
        /// The size of a volume made now.
        #[arg(long, default_value = "1g")]
        size: String,
        /// The volume.
        name: String,
        /// The archive (default: stdin).
        file: Option<std::path::PathBuf>,
    },
    /// Remove the anonymous volumes no VM uses (with -a, every unused volume).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
    },
}

/// Runs `hyperxl volume ...`.
pub fn run(state_dir: &Path, args: VolumeArgs) -> anyhow::Result<u8> {
    let store = VolumeStore::open(state_dir)?;
    match args.command {
        VolumeCommand::Create { size, labels, name } => {
            let size = store::parse_size(&size)?;
            let mut map = BTreeMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                map.insert(k.to_string(), v.to_string());
            }
            let (_, made) = store.ensure(&name, size, false, map)?;
            if !made {
                bail!("volume {name:?} already exists");
            }
            println!("{name}");
        }
        VolumeCommand::Ls { quiet } => {
            let vms = in_use(state_dir)?;
            if !quiet {
                println!("{:<34}  {:>9}  {:>9}  VMS", "NAME", "SIZE", "USED");
            }
            for v in store.list()? {
                if quiet {
                    println!("{}", v.name);
                    continue;
                }
                let users = hyperxl_core::volume::users(&vms, &v.name);
                println!(
                    "{:<34}  {:>9}  {:>9}  {}",
                    v.name,
                    human(v.size),
                    human(store.allocated(&v.name)),
                    users.join(",")
                );
            }
        }
        VolumeCommand::Inspect { names } => {
            let vms = in_use(state_dir)?;
            let mut out = Vec::new();
            for name in names {
                let v = store.load(&name)?;
                out.push(serde_json::json!({
                    "name": v.name,
                    "size": v.size,
                    "used_on_dom0": store.allocated(&v.name),
                    "created_at": v.created_at,
                    "anonymous": v.anonymous,
                    "labels": v.labels,
                    "file": store.data_file(&v.name),
                    "vms": hyperxl_core::volume::users(&vms, &v.name),
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { names } => {
            let vms = VmStore::open(state_dir)?;
            reconcile_all(&vms, &Host::connect())?;
            for name in names {
                hyperxl_core::volume::remove_unused(&store, &vms, &name)?;
                println!("{name}");
            }
        }
        VolumeCommand::Export { output, name } => {
            reconcile_all(&VmStore::open(state_dir)?, &Host::connect())?;
            let files = helper_files();
            match output {
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    // The volume's data: readable by its owner alone, as the state dir.
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    if let Err(e) = transfer::export(state_dir, &name, &files, &mut f) {
                        drop(f);
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                }
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        bail!("refusing to write a tar archive to a terminal: use -o FILE or a redirect");
                    }
                    transfer::export(state_dir, &name, &files, &mut std::io::stdout().lock())?;
                }
            }
        }
        VolumeCommand::Import { size, name, file } => {
            let size = store::parse_size(&size)?;
            store::validate_name(&name)?;
            reconcile_all(&VmStore::open(state_dir)?, &Host::connect())?;
            let files = helper_files();
            let n = match file {
                Some(path) => {
                    let mut f = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    transfer::import(state_dir, &name, size, &files, &mut f)?
                }
                None => {
                    transfer::import(state_dir, &name, size, &files, &mut std::io::stdin().lock())?
                }
            };
            eprintln!("{name}: {n} bytes imported");
        }
        VolumeCommand::Prune { all } => {
            let vm_store = VmStore::open(state_dir)?;
            let vms = reconcile_all(&vm_store, &Host::connect())?;
            let mut freed = 0;
            for (name, bytes) in hyperxl_core::volume::prune(&store, &vm_store, &vms, all)? {
                println!("{name}");
                freed += bytes;
            }
            println!("Total reclaimed space: {}", human(freed));
        }
    }
    Ok(0)
}

fn in_use(state_dir: &Path) -> anyhow::Result<Vec<hyperxl_core::vm::state::VmState>> {
    let vms = VmStore::open(state_dir)?;
    Ok(reconcile_all(&vms, &Host::connect())?)
}

/// Volume sizes in binary steps: a `--size 1g` volume shows as 1.0GB.
fn human(bytes: u64) -> String {
    super::human_size(bytes, 1024)
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1 << 30), "1.0GB");
        assert_eq!(human(3 << 19), "1.5MB");
    }
}
