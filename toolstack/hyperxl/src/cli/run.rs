//! `hyperxl run IMAGE [CMD...]`: boot an image as a Xen domain, attached, and exit with
//! the app's exit code.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::vm::console::LogLimits;
use crate::vm::launch::{self, LaunchOptions};
use crate::vm::spec::{self, RunFlags};
use crate::vm::state::VmStore;

/// Arguments of `hyperxl run`.
#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Set an environment variable (NAME=VALUE, or NAME to take it from here).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (one NAME=VALUE per line, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the VM.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User as Docker spells it: name, uid, uid:gid, name:group.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Name of the VM (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the VM's state when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background: print the VM's id and leave a monitor process behind.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Memory, e.g. 64m, 1g (default 128m).
    #[arg(short = 'm', long = "memory", default_value = "128m")]
    pub memory: String,
    /// Number of virtual CPUs.
    #[arg(long = "cpus", visible_alias = "vcpus", default_value_t = 1)]
    pub cpus: u32,
    /// Domain type.
    #[arg(long = "type", default_value = "pvh", value_parser = ["pvh", "pv"])]
    pub kind: String,
    /// Guest kernel (default: $HYPERXL_GUEST_DIR/vmlinuz, else /usr/lib/hyperxl/vmlinuz).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default: $HYPERXL_GUEST_DIR/initramfs.cpio).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Console log option, as Docker's: max-size=SIZE (per file, default 32m),
    /// max-file=N (files kept, default 2).
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    /// Show the guest kernel's and the init's own console lines too.
    #[arg(long)]
    pub debug: bool,
    /// The image to run.
    pub image: String,
    /// Command and arguments (default: the image's Cmd).
    pub command: Vec<String>,
}

/// Where the guest artefacts live unless `--kernel`/`--initrd` say otherwise.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("HYPERXL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/hyperxl"))
}

/// What `run` (and `config`) make of the flags: the VM's options and the app's flags.
pub fn launch_inputs(args: &RunArgs) -> anyhow::Result<(LaunchOptions, RunFlags)> {
    let memory_mib = spec::parse_memory(&args.memory)?;
    let mut cli_env = args.env.clone();
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading env file {}", file.display()))?;
        cli_env.extend(spec::parse_env_file(&text));
    }
    let flags = RunFlags {
        env: spec::resolve_env(&cli_env),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        entrypoint: args.entrypoint.clone(),
        command: args.command.clone(),
        hostname: String::new(),
    };
    let dir = guest_dir();
    let opts = LaunchOptions {
        image: args.image.clone(),
        name: args.name.clone(),
        auto_remove: args.rm,
        memory_mib,
        vcpus: args.cpus,
        pv: args.kind == "pv",
        kernel: args.kernel.clone().unwrap_or_else(|| dir.join("vmlinuz")),
        initrd: args
            .initrd
            .clone()
            .unwrap_or_else(|| dir.join("initramfs.cpio")),
        show_init_lines: args.debug,
        log: LogLimits::from_opts(&args.log_opt)?,
        labels: Default::default(),
    };
    Ok((opts, flags))
}

/// Runs the VM; returns the app's exit code.
pub fn run(state_dir: &Path, args: RunArgs) -> anyhow::Result<u8> {
    crate::vm::timing::start();
    let (opts, flags) = launch_inputs(&args)?;
    let vms = VmStore::open(state_dir)?;
    // As every command: first make the records agree with Xen (a VM that ended unwatched
    // is recorded and torn down before this one starts).
    crate::vm::host::reconcile_all(&vms, &crate::vm::host::Host::connect())?;
    // Ctrl-C while the image is pulled just ends hyperxl (nothing exists yet to clean).
    let prepared = launch::prepare(state_dir, &opts, &flags)?;
    if !args.detach {
        // From here on, Ctrl-C while the domain is built must still stop (or never
        // start) the VM, not leave a paused domain behind.
        crate::vm::monitor::install_stop_handlers();
    }
    if args.detach {
        let id = launch::run_detached(state_dir, &vms, prepared)?;
        println!("{id}");
        return Ok(0);
    }
    let code = launch::run_attached(&vms, prepared)?;
    Ok(exit_status(code))
}

/// The app's exit code as a process exit status (125 if it does not fit).
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(crate::EXIT_HYPERXL_FAILED)
}
