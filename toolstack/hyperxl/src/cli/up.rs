//! `hyperxl up`, `down` and `supervise`: deployments from a TOML file (see
//! `xen-configs/deployment.toml` for the format).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli::run::guest_dir;
use crate::deploy::apply::{self, GuestFiles};
use crate::deploy::file::Deployment;

/// Arguments of `hyperxl up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The deployment file.
    #[arg(short = 'f', long = "file", default_value = "hyperxl.toml")]
    pub file: PathBuf,
    /// Return once the VMs run, leaving a background supervisor to apply the restart
    /// policies (log: STATE_DIR/deployments/NAME/supervisor.log).
    #[arg(short = 'd', long)]
    pub detach: bool,
}

/// Arguments of `hyperxl down` and `hyperxl supervise`.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// The deployment file.
    #[arg(short = 'f', long = "file", default_value = "hyperxl.toml")]
    pub file: PathBuf,
}

fn guest_files() -> GuestFiles {
    let dir = guest_dir();
    GuestFiles {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio"),
    }
}

/// Validates the whole file, starts what is missing or changed in dependency order, then
/// supervises (attached: until Ctrl-C, which stops the VMs, or until nothing runs).
/// `up`, `down` and a starting supervisor of one deployment take turns.
pub fn up(state_dir: &Path, args: UpArgs) -> anyhow::Result<u8> {
    let dep = Deployment::load(&args.file)?;
    let mut out = std::io::stdout();
    let lock = apply::lock_deployment(state_dir, &dep.name)?;
    apply::up(state_dir, &dep, &guest_files(), &mut out, &lock)?;
    if args.detach {
        // It claims the supervisor lock once this process lets go of the deployment.
        let pid = apply::spawn_supervisor(state_dir, &dep, &args.file)?;
        println!("{}: supervised in the background (pid {pid})", dep.name);
        return Ok(0);
    }
    let claimed = apply::claim_supervisor(state_dir, &lock)?;
    drop(lock);
    apply::supervise(state_dir, &dep, &guest_files(), true, &mut out, claimed)?;
    Ok(0)
}

/// Stops and removes the deployment's VMs in reverse dependency order.
pub fn down(state_dir: &Path, args: FileArgs) -> anyhow::Result<u8> {
    let dep = Deployment::load(&args.file)?;
    let lock = apply::lock_deployment(state_dir, &dep.name)?;
    apply::down(state_dir, &dep, &mut std::io::stdout(), &lock)?;
    Ok(0)
}

/// The background supervisor `up -d` starts.
pub fn supervise(state_dir: &Path, args: FileArgs) -> anyhow::Result<u8> {
    let dep = Deployment::load(&args.file)?;
    let lock = apply::lock_deployment(state_dir, &dep.name)?;
    let claimed = apply::claim_supervisor(state_dir, &lock)?;
    drop(lock);
    apply::supervise(
        state_dir,
        &dep,
        &guest_files(),
        false,
        &mut std::io::stdout(),
        claimed,
    )?;
    Ok(0)
}
