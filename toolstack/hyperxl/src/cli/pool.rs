//! `hyperxl pool fill|ls|drain`: VMs booted ahead of time, each serving one `run` of
//! its shape (see [`hyperxl_core::vm::pool`]).

use std::path::Path;

use clap::{Args, Subcommand};

use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::pool::{self, Settings, Shape};
use hyperxl_core::vm::state::{Status, VmStore};

use super::machine::MachineArgs;

// Arguments of `hyperxl pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Boot VMs until every shape has its size ready; with --size, set that first.
    Fill(FillArgs),
    /// List the pool's shapes and its VMs.
    #[command(visible_alias = "list")]
    Ls {
        /// Only the pooled VMs' names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Stop keeping any pool, and destroy every pooled VM.
    Drain,
}

// `pool fill`: the shape as `run` spells it.
#[derive(Debug, Args)]
struct FillArgs {
    /// Keep this many VMs of this shape ready (0: none; at most 64). Without it, the
    /// shapes set before are refilled.
    #[arg(long)]
    size: Option<u32>,
    /// Each VM's machine, as `run`'s flags.
    #[command(flatten)]
    machine: MachineArgs,
    /// Run as the refill `run` starts: only if no refill runs (else that one refills
    /// again), output to the pool's log.
    #[arg(long, hide = true)]
    background: bool,
}

impl FillArgs {
    fn shape(&self) -> anyhow::Result<Shape> {
        let (machine, guest) = self.machine.resolve()?;
        let shape = Shape { machine, guest };
        // Checked now, not when the refill boots it.
        shape.boot_id()?;
        Ok(shape)
    }
}

/// Runs `hyperxl pool ...`.
pub fn run(state_dir: &Path, args: PoolArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    match args.command {
        PoolCommand::Fill(f) => fill(state_dir, &vms, f),
        PoolCommand::Ls { quiet } => ls(state_dir, &vms, quiet),
        PoolCommand::Drain => {
            for name in pool::drain(state_dir, &vms)? {
                println!("{name}");
            }
            Ok(0)
        }
    }
}

fn fill(state_dir: &Path, vms: &VmStore, f: FillArgs) -> anyhow::Result<u8> {
    if let Some(size) = f.size {
        let shape = f.shape()?;
        let _lock = vms.lock()?;
        let mut settings = Settings::load(state_dir)?;
        settings.set(shape, size)?;
        settings.save(state_dir)?;
    }
    if f.background {
        pool::fill_background(state_dir, vms)?;
    } else {
        // The names of the VMs booted on stdout; those destroyed on stderr.
        let done = pool::fill(state_dir, vms, |name| println!("{name}"))?;
        for name in done.removed {
            eprintln!("hyperxl: destroyed pooled VM {name}");
        }
    }
    Ok(0)
}

fn ls(state_dir: &Path, vms: &VmStore, quiet: bool) -> anyhow::Result<u8> {
    let pooled: Vec<_> = reconcile_all(vms, &Host::connect())?
        .into_iter()
        .filter(pool::is_pooled)
        .collect();
    if quiet {
        for vm in &pooled {
            println!("{}", vm.name);
        }
        return Ok(0);
    }
    let settings = Settings::load(state_dir)?;
    println!(
        "{:<18} {:>4} {:>5} {:>7}",
        "SHAPE", "SIZE", "READY", "BOOTING"
    );
    for (key, entry) in &settings.shapes {
        let of_shape = || {
            pooled
                .iter()
                .filter(move |v| v.labels.get(pool::LABEL_POOL) == Some(key))
        };
        let ready = of_shape().filter(|v| v.status == Status::Running).count();
        let booting = of_shape().filter(|v| v.status == Status::Created).count();
        println!("{key:<18} {:>4} {ready:>5} {booting:>7}", entry.size);
    }
    if !pooled.is_empty() {
        println!();
        println!(
            "{:<14} {:>5} {:<18} {:<8}",
            "NAME", "DOMID", "SHAPE", "STATUS"
        );
        for vm in &pooled {
            let status = match vm.status {
                Status::Running => "ready",
                Status::Created => "booting",
                Status::Exited => "ended",
            };
            println!(
                "{:<14} {:>5} {:<18} {:<8}",
                vm.name,
                vm.domid.map_or("-".into(), |d| d.to_string()),
                vm.labels.get(pool::LABEL_POOL).map_or("?", |s| s.as_str()),
                status
            );
        }
    }
    Ok(0)
}
