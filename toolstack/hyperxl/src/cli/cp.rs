//! `hyperxl cp`: copy files between a running VM and this host, as `docker cp`.

use std::path::Path;

use anyhow::bail;
use clap::Args;

use hyperxl_core::vm::copy::{self, Endpoint};

// Arguments of `hyperxl cp`.
#[derive(Debug, Args)]
#[command(after_help = "\
One of SRC and DEST is VM:PATH (a path in the VM, from its /); the other is a path here.
A directory is copied with everything under it; SRC ending in /. copies its contents.
DEST is created if missing; an existing directory DEST receives SRC under its own name.
Symlinks are copied as symlinks. A local '-' is a tar stream on stdin or stdout.
Works on any image: the VM's init packs and unpacks the stream itself, no tar needed.
What a VM sends cannot write outside DEST here, and loses set-uid/set-gid bits.")]
pub struct CpArgs {
    /// Where from: VM:PATH, a local path, or - (a tar stream on stdin).
    pub src: String,
    /// Where to: VM:PATH, a local path, or - (a tar stream on stdout).
    pub dest: String,
}

pub fn run(state_dir: &Path, args: CpArgs) -> anyhow::Result<u8> {
    match (Endpoint::parse(&args.src), Endpoint::parse(&args.dest)) {
        (Endpoint::Vm { vm, path }, Endpoint::Local(dest)) => {
            copy::copy_from(state_dir, &vm, &path, &dest)?
        }
        (Endpoint::Local(src), Endpoint::Vm { vm, path }) => {
            copy::copy_to(state_dir, &src, &vm, &path)?
        }
        (Endpoint::Vm { .. }, Endpoint::Vm { .. }) => {
            bail!("copying between two VMs is not supported: copy through this host")
        }
        (Endpoint::Local(_), Endpoint::Local(_)) => {
            bail!("one of SRC and DEST must be VM:PATH (write a local path with ':' as ./a:b)")
        }
    }
    Ok(0)
}
