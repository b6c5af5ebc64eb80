//! `hyperxl system df|prune`: what hyperxl keeps on dom0's disk, and freeing what no VM
//! needs, as `docker system df` and `docker system prune` do.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use clap::{Args, Subcommand};

use hyperxl_core::prune::PruneOptions;
use hyperxl_core::usage::{self, Row};
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl system`.
#[derive(Debug, Args)]
pub struct SystemArgs {
    #[command(subcommand)]
    command: SystemCommand,
}

#[derive(Debug, Subcommand)]
enum SystemCommand {
    /// Show the disk space images, disks, VMs and volumes use.
    Df {
        /// Output format: `table` or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Remove exited VMs, unused networks, and unreferenced blobs and disks.
    Prune {
        /// Also remove every image no VM record uses.
        #[arg(short, long)]
        all: bool,
        /// Also remove anonymous volumes no VM uses.
        #[arg(long)]
        volumes: bool,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Bring the VM records in line with Xen (run at boot by hyperxl-reconcile.service).
    ///
    /// After a dom0 reboot or a crash, records may say a VM runs whose domain, loop
    /// devices and vif are gone. Every command reconciles what it touches; this does it
    /// for all VMs at once: ended VMs are marked exited (restart policies and `ps` see
    /// the truth), their addresses and volume claims released; a pool that is kept
    /// (`hyperxl pool fill --size`) is refilled in the background.
    Reconcile,
}

pub fn run(state_dir: &Path, args: SystemArgs) -> anyhow::Result<u8> {
    match args.command {
        SystemCommand::Df { format } => df(state_dir, &format),
        SystemCommand::Prune {
            all,
            volumes,
            force,
        } => prune(state_dir, all, volumes, force),
        SystemCommand::Reconcile => reconcile(state_dir),
    }
}

fn df(state_dir: &Path, format: &str) -> anyhow::Result<u8> {
    if !matches!(format, "table" | "json") {
        anyhow::bail!("unknown --format {format:?} (expected table or json)");
    }
    let vm_store = VmStore::open(state_dir)?;
    let vms = reconcile_all(&vm_store, &Host::connect())?;
    let u = usage::measure(&vm_store, &vms)?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&u)?);
        return Ok(0);
    }
    println!(
        "{:<10} {:>6} {:>7} {:>10} {:>16}",
        "TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"
    );
    for (name, row) in [
        ("Images", u.images),
        ("Disks", u.disks),
        ("VMs", u.vms),
        ("Volumes", u.volumes),
    ] {
        println!(
            "{:<10} {:>6} {:>7} {:>10} {:>16}",
            name,
            row.total,
            row.active,
            human(row.size),
            reclaimable(row)
        );
    }
    Ok(0)
}

/// `1.2MB (50%)`, as Docker's RECLAIMABLE column.
fn reclaimable(row: Row) -> String {
    let pct = (row.reclaimable * 100).checked_div(row.size).unwrap_or(0);
    format!("{} ({pct}%)", human(row.reclaimable))
}

fn human(bytes: u64) -> String {
    super::human_size(bytes, 1000)
}

fn prune(state_dir: &Path, all: bool, volumes: bool, force: bool) -> anyhow::Result<u8> {
    if !force && !confirm(all, volumes)? {
        eprintln!("hyperxl: nothing removed");
        return Ok(1);
    }
    let opts = PruneOptions {
        images: all,
        volumes,
    };
    let pruned = hyperxl_core::prune::prune(state_dir, &Host::connect(), opts)?;
    let images: Vec<String> = pruned
        .images
        .iter()
        .map(|i| format!("untagged: {i}"))
        .collect();
    for (title, names) in [
        ("Deleted VMs:", &pruned.vms),
        ("Deleted Networks:", &pruned.networks),
        ("Deleted Volumes:", &pruned.volumes),
        ("Deleted Images:", &images),
    ] {
        if !names.is_empty() {
            println!("{title}");
            for name in names {
                println!("{name}");
            }
            println!();
        }
    }
    println!("Total reclaimed space: {}", human(pruned.freed));
    Ok(0)
}

fn reconcile(state_dir: &Path) -> anyhow::Result<u8> {
    let vm_store = VmStore::open(state_dir)?;
    let before = vm_store.list()?;
    let vms = reconcile_all(&vm_store, &Host::connect())?;
    hyperxl_core::net::sweep(&vm_store, &vms);
    let mut ended = 0;
    for vm in &vms {
        let was = before.iter().find(|b| b.id == vm.id).map(|b| b.status);
        if was.is_some_and(|s| s.can_stop()) && !vm.status.can_stop() {
            println!("{}: exited", vm.name);
            ended += 1;
        }
    }
    let running = vms.iter().filter(|v| v.status.can_stop()).count();
    println!("{} VMs: {running} running, {ended} found ended", vms.len());
    // After a reboot the pooled VMs are gone with every domain: refill in the background.
    if !hyperxl_core::vm::pool::Settings::load(state_dir)?
        .shapes
        .is_empty()
    {
        hyperxl_core::vm::pool::spawn_refill(state_dir)?;
        println!("pool: refilling in the background");
    }
    Ok(0)
}

/// Docker's warning and question; only a `y` or `yes` answer goes on. Without a
/// terminal to ask on, `-f` is needed.
fn confirm(all: bool, volumes: bool) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "system prune asks for confirmation on a terminal: use -f to prune without one"
        );
    }
    let mut err = std::io::stderr();
    writeln!(err, "WARNING! This will remove:")?;
    writeln!(err, "  - all exited VMs")?;
    writeln!(err, "  - all networks not used by at least one VM")?;
    if volumes {
        writeln!(err, "  - all anonymous volumes not used by at least one VM")?;
    }
    if all {
        writeln!(
            err,
            "  - all images without at least one VM associated to them"
        )?;
    }
    writeln!(err, "  - all blobs and disks no image refers to")?;
    write!(err, "Are you sure you want to continue? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
