//! `pv-boot`: builds the guest initramfs and checks HyperKernel.
//!
//! ```text
//! pv-boot initramfs --init target/.../hyperstart-pv -o initramfs.cpio
//! pv-boot check-kernel vmlinux      # fails unless it has PV and PVH entry notes
//! ```

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Guest boot artefacts for hyperxl.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the initramfs (cpio newc) holding INIT as /init.
    Initramfs {
        /// The static init binary (hyperstart-pv).
        #[arg(long)]
        init: PathBuf,
        /// Where to write the archive (replaced atomically).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Checks that a kernel ELF (vmlinux) can boot as a Xen PV and PVH guest.
    CheckKernel {
        /// The kernel's vmlinux.
        vmlinux: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Initramfs { init, output } => {
            let bin = fs::read(&init).with_context(|| format!("reading {}", init.display()))?;
            let archive = pv_boot::initramfs::build(&bin)?;
            let tmp = output.with_extension("tmp");
            fs::write(&tmp, &archive).with_context(|| format!("writing {}", tmp.display()))?;
            fs::rename(&tmp, &output)
                .with_context(|| format!("renaming to {}", output.display()))?;
            println!("{} ({} bytes)", output.display(), archive.len());
        }
        Cmd::CheckKernel { vmlinux } => {
            let elf =
                fs::read(&vmlinux).with_context(|| format!("reading {}", vmlinux.display()))?;
            let entries = pv_boot::elfnote::xen_entries(&elf)
                .with_context(|| format!("reading ELF notes of {}", vmlinux.display()))?;
            match (entries.pv, entries.pvh) {
                (Some(pv), Some(pvh)) => println!("PV entry {pv:#x}, PVH entry {pvh:#x}"),
                (None, _) => bail!(
                    "{}: no XEN_ELFNOTE_ENTRY: cannot boot as PV",
                    vmlinux.display()
                ),
                (_, None) => bail!(
                    "{}: no XEN_ELFNOTE_PHYS32_ENTRY: cannot boot as PVH",
                    vmlinux.display()
                ),
            }
        }
    }
    Ok(())
}
