//! `hyperxl completion SHELL`: the completion script for a shell, as `docker completion`
//! and `kubectl completion` print theirs. The package installs the same scripts in each
//! shell's completion directory; this command serves a hand-built install.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

// Arguments of `hyperxl completion`.
#[derive(Debug, Args)]
#[command(after_help = "Load it in the current bash: source <(hyperxl completion bash)")]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

pub fn run(args: CompletionArgs) -> anyhow::Result<u8> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "hyperxl", &mut std::io::stdout());
    Ok(0)
}
