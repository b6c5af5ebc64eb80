//! `hyperxl`: run container images as Xen virtual machines.
//!
//! The command-line front end of `hyperxl-core`. The binary (`main.rs`) only calls
//! [`main`]. Argument parsing and printing live in `cli`, one file per subcommand; each
//! handler calls into `hyperxl-core` (the VM lifecycle, networks, volumes, deployments)
//! and the lower libraries (`hyperxl-image`, `libxl`, `xenstore-wire`). Exit codes follow
//! `docker run`: 125 when hyperxl itself failed, otherwise the app's own code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Exit status when hyperxl itself failed (as `docker run`).
pub const EXIT_HYPERXL_FAILED: u8 = 125;

/// The whole command-line interface as clap sees it: for man pages and completions
/// generated at packaging time (`examples/gen-docs.rs`).
pub fn command() -> clap::Command {
    <cli::Cli as clap::CommandFactory>::command()
}

/// The `hyperxl` command: parses the arguments, runs the subcommand, and returns the
/// process exit code.
pub fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !args.command.owns_a_vm() {
        // `hyperxl ps | head` ends quietly, as other Unix tools do; a process that owns
        // a VM keeps running when its stdout goes away, so it can still tear it down.
        // SAFETY: SIG_DFL installs no handler; nothing else has touched SIGPIPE yet.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    match cli::dispatch(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // One line: the context chain, outermost first.
            eprintln!("hyperxl: {err:#}");
            ExitCode::from(EXIT_HYPERXL_FAILED)
        }
    }
}
