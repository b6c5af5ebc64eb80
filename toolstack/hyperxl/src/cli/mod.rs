//! Command-line interface: one module per subcommand, each a few lines that call the
//! libraries. Global options (state dir, verbosity) live on [`Cli`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod info;

/// Run container images as Xen virtual machines.
#[derive(Debug, Parser)]
#[command(name = "hyperxl", version, about, long_about = None)]
pub struct Cli {
    /// Where images, disks and VM state live.
    #[arg(
        long,
        global = true,
        env = "HYPERXL_STATE_DIR",
        default_value = "/var/lib/hyperxl"
    )]
    pub state_dir: PathBuf,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `hyperxl` subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what this host offers: Xen presence, state dir.
    Info(info::InfoArgs),
}

/// Runs the chosen subcommand; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Info(args) => info::run(&cli.state_dir, args),
    }
}
