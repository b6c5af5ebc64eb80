//! Command-line interface: one module per subcommand, each a few lines that call the
//! libraries. Global options (state dir, verbosity) live on [`Cli`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod attach;
mod completion;
mod config;
mod cp;
mod exec;
mod image;
mod images;
mod info;
mod inspect;
mod kill;
mod load;
mod login;
mod logs;
mod machine;
mod monitor;
mod network;
mod pause;
mod pool;
mod port;
mod progress;
mod ps;
mod pull;
mod rm;
mod rmi;
mod run;
mod save;
mod stop;
mod system;
mod top;
mod up;
mod version;
mod volume;
mod wait;

/// A size as Docker prints them (`512B`, `1.5MB`, `2.0GB`), in steps of `base`: 1000 for
/// images (as `docker images`), 1024 for volumes (their sizes are set in binary units).
fn human_size(bytes: u64, base: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let step = base as f64;
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= step && unit < UNITS.len() - 1 {
        v /= step;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

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
///
/// Deferred: clap builds a subcommand's arguments (and its own subcommands) only when
/// it is the one invoked, instead of the whole tree at every start (a fifth of
/// `hyperxl --version`'s page faults, each a trap to Xen in a PV dom0). The deferred
/// arguments are added after the variant's doc became the subcommand's `about`, so a
/// `///` doc on an `Args` struct (or one it flattens) would replace it: those carry `//`
/// comments, and `tests::deferred_subcommands_keep_their_about` checks.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run an image as a Xen VM; attached, exits with the app's exit code.
    Run(run::RunArgs),
    /// Run a command in a running VM.
    Exec(exec::ExecArgs),
    /// Connect to a running VM's app (its terminal, or its output and stdin).
    Attach(attach::AttachArgs),
    /// Copy files between a running VM and this host.
    Cp(cp::CpArgs),
    /// Show the processes running in a VM.
    Top(top::TopArgs),
    /// List VMs.
    Ps(ps::PsArgs),
    /// Stop running VMs gracefully (destroyed after a timeout).
    Stop(stop::StopArgs),
    /// Destroy running VMs at once, or send their apps another signal (-s).
    Kill(kill::KillArgs),
    /// Pause running VMs (their vCPUs stop being scheduled).
    Pause(pause::PauseArgs),
    /// Let paused VMs run again.
    Unpause(pause::PauseArgs),
    /// Remove VMs.
    Rm(rm::RmArgs),
    /// Show a VM's console log.
    Logs(logs::LogsArgs),
    /// Wait for VMs to exit and print their exit codes.
    Wait(wait::WaitArgs),
    /// Show everything recorded about VMs, as JSON.
    Inspect(inspect::InspectArgs),
    /// Start or update the VMs of a deployment file, in dependency order.
    Up(up::UpArgs),
    /// Stop and remove the VMs of a deployment file, in reverse order.
    Down(up::DownArgs),
    /// Print the xl.cfg equivalent to a `run` (same arguments; no network or volumes).
    Config(run::RunArgs),
    /// Container specs for domains made with plain `xl create`.
    Spec(config::SpecArgs),
    /// Apply a deployment's restart policies (started by `up -d`).
    #[command(hide = true)]
    Supervise(up::FileArgs),
    /// Watch a VM started with `run -d` (started by hyperxl itself).
    #[command(hide = true)]
    Monitor(monitor::MonitorArgs),
    /// Show what this host offers and holds: Xen, memory, VMs, networks, storage.
    Info(info::InfoArgs),
    /// Pull an image from a registry.
    Pull(pull::PullArgs),
    /// Save registry credentials.
    Login(login::LoginArgs),
    /// Forget registry credentials.
    Logout(login::LogoutArgs),
    /// Import images from a `docker save` archive or an OCI layout.
    Load(load::LoadArgs),
    /// Write images to an OCI layout tar.
    Save(save::SaveArgs),
    /// List stored images.
    Images(images::ImagesArgs),
    /// Remove image names.
    Rmi(rmi::RmiArgs),
    /// Inspect and prune images.
    Image(image::ImageArgs),
    /// List a VM's published ports.
    Port(port::PortArgs),
    /// Manage networks.
    Network(network::NetworkArgs),
    /// Manage volumes.
    Volume(volume::VolumeArgs),
    /// Keep VMs booted ahead of time, so `run` starts in a ready one.
    Pool(pool::PoolArgs),
    /// Disk usage (`system df`) and cleanup (`system prune`).
    System(system::SystemArgs),
    /// Show the versions of hyperxl and Xen.
    Version(version::VersionArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completion(completion::CompletionArgs),
}

impl Command {
    /// Whether this command watches a VM to its end (and must outlive its stdout).
    pub fn owns_a_vm(&self) -> bool {
        matches!(
            self,
            Command::Run(_)
                | Command::Monitor(_)
                | Command::Up(_)
                | Command::Supervise(_)
                // export/import boot a helper VM and clean up a stream file.
                | Command::Volume(_)
                // exec removes its session from xenstore and restores the terminal.
                | Command::Exec(_)
                | Command::Cp(_)
                | Command::Attach(_)
                | Command::Top(_)
                // fill boots and drain destroys VMs, cleaning up after a failure.
                | Command::Pool(_)
        )
    }
}

/// Runs the chosen subcommand; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => run::run(&cli.state_dir, args),
        Command::Exec(args) => exec::run(&cli.state_dir, args),
        Command::Cp(args) => cp::run(&cli.state_dir, args),
        Command::Attach(args) => attach::run(&cli.state_dir, args),
        Command::Top(args) => top::run(&cli.state_dir, args),
        Command::Ps(args) => ps::run(&cli.state_dir, args),
        Command::Rm(args) => rm::run(&cli.state_dir, args),
        Command::Stop(args) => stop::run(&cli.state_dir, args),
        Command::Kill(args) => kill::run(&cli.state_dir, args),
        Command::Pause(args) => pause::run(&cli.state_dir, args, true),
        Command::Unpause(args) => pause::run(&cli.state_dir, args, false),
        Command::Logs(args) => logs::run(&cli.state_dir, args),
        Command::Wait(args) => wait::run(&cli.state_dir, args),
        Command::Inspect(args) => inspect::run(&cli.state_dir, args),
        Command::Monitor(args) => monitor::run(&cli.state_dir, args),
        Command::Up(args) => up::up(&cli.state_dir, args),
        Command::Down(args) => up::down(&cli.state_dir, args),
        Command::Supervise(args) => up::supervise(&cli.state_dir, args),
        Command::Config(args) => config::config(&cli.state_dir, args),
        Command::Spec(args) => config::spec(args),
        Command::Info(args) => info::run(&cli.state_dir, args),
        Command::Pull(args) => pull::run(&cli.state_dir, args),
        Command::Login(args) => login::run(&cli.state_dir, args),
        Command::Logout(args) => login::logout(&cli.state_dir, args),
        Command::Load(args) => load::run(&cli.state_dir, args),
        Command::Save(args) => save::run(&cli.state_dir, args),
        Command::Images(args) => images::run(&cli.state_dir, args),
        Command::Rmi(args) => rmi::run(&cli.state_dir, args),
        Command::Image(args) => image::run(&cli.state_dir, args),
        Command::Port(args) => port::run(&cli.state_dir, args),
        Command::Network(args) => network::run(&cli.state_dir, args),
        Command::Volume(args) => volume::run(&cli.state_dir, args),
        Command::Pool(args) => pool::run(&cli.state_dir, args),
        Command::System(args) => system::run(&cli.state_dir, args),
        Command::Version(args) => version::run(args),
        Command::Completion(args) => completion::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks, over every subcommand, deferred ones included.
    #[test]
    fn the_cli_passes_clap_debug_asserts() {
        super::Cli::command().debug_assert();
    }

    /// Building a deferred subcommand (adding its arguments) must not change the help
    /// text its variant gave it: a `///` on an `Args` struct would (see [`super::Command`]).
    #[test]
    fn deferred_subcommands_keep_their_about() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut usize) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                let about = (
                    sub.get_about().map(ToString::to_string),
                    sub.get_long_about().map(ToString::to_string),
                );
                // Rendering its help builds this subcommand alone (runs its deferred
                // arguments), leaving its own subcommands unbuilt for the next level.
                let mut built = sub.clone();
                let _ = built.render_help();
                let after = (
                    built.get_about().map(ToString::to_string),
                    built.get_long_about().map(ToString::to_string),
                );
                assert_eq!(
                    after, about,
                    "`{name}`: its arguments replaced its help text"
                );
                *seen += 1;
                walk(&built, &name, seen);
            }
        }
        let mut seen = 0;
        walk(&super::Cli::command(), "hyperxl", &mut seen);
        // Every top-level and nested subcommand was looked at (pool fill, network ls, ...).
        assert!(seen > 50, "only {seen} subcommands");
    }
}
