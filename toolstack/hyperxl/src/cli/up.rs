//! `hyperxl up`, `down` and `supervise`: deployments from a TOML file (see
//! `xen-configs/deployment.toml` for the format).

use std::path::{Path, PathBuf};

use clap::Args;

use hyperxl_core::deploy::apply;
use hyperxl_core::deploy::file::Deployment;
use hyperxl_core::vm::machine::{guest_dir, Guest};

// Arguments of `hyperxl up`.
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

// Arguments of `hyperxl down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The deployment file.
    #[arg(short = 'f', long = "file", default_value = "hyperxl.toml")]
    pub file: PathBuf,
    /// Remove the deployment's volumes too (its named and anonymous ones).
    #[arg(short = 'v', long = "volumes")]
    pub volumes: bool,
}

// Arguments of `hyperxl supervise`.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// The deployment file.
    #[arg(short = 'f', long = "file", default_value = "hyperxl.toml")]
    pub file: PathBuf,
}

fn guest_files() -> Guest {
    Guest::in_dir(&guest_dir())
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

/// Stops and removes the deployment's VMs in reverse dependency order: the VMs recorded
/// with its label; the file gives only the name and the order (env files unread).
pub fn down(state_dir: &Path, args: DownArgs) -> anyhow::Result<u8> {
    let dep = Deployment::load_for_teardown(&args.file)?;
    let lock = apply::lock_deployment(state_dir, &dep.name)?;
    apply::down(state_dir, &dep, &mut std::io::stdout(), &lock)?;
    if args.volumes {
        apply::remove_volumes(state_dir, &dep.name, &mut std::io::stdout())?;
    }
    Ok(0)
}

/// The background supervisor `up -d` starts.
pub fn supervise(state_dir: &Path, args: FileArgs) -> anyhow::Result<u8> {
    let dep = Deployment::load(&args.file)?;
    let lock = apply::lock_deployment(state_dir, &dep.name)?;
    // The file as it is now: an `up` may have changed it while this one waited.
    let dep = Deployment::load(&args.file)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyperxl_core::deploy::apply::{LABEL_DEPLOYMENT, LABEL_VM};
    use hyperxl_core::vm::state::{Status, VmState, VmStore};

    #[test]
    fn defect12_down_works_from_recorded_state_when_an_env_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let file = dir.path().join("shop.toml");
        std::fs::write(&file, "[vm.db]\nimage='x'\nenv_file=['db.env']\n").unwrap();
        let vms = VmStore::open(&state_dir).unwrap();
        let mut db = VmState::new("aa01".into(), "shop-db".into(), "x".into());
        db.status = Status::Exited;
        db.monitor_pid = None;
        db.labels.insert(LABEL_DEPLOYMENT.into(), "shop".into());
        db.labels.insert(LABEL_VM.into(), "db".into());
        vms.create(&db).unwrap();
        // db.env was deleted after `up`.
        down(
            &state_dir,
            DownArgs {
                file,
                volumes: false,
            },
        )
        .unwrap();
        assert!(vms.list().unwrap().is_empty());
    }
}
