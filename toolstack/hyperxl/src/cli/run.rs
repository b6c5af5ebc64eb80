//! `hyperxl run IMAGE [CMD...]`: boot an image as a Xen domain, attached, and exit with
//! the app's exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use hyperxl_contract::net::{valid_hostname, HostEntry};

use hyperxl_core::net::{publish, NetRequest};
use hyperxl_core::vm::console::LogLimits;
use hyperxl_core::vm::launch::{self, LaunchOptions};
use hyperxl_core::vm::spec::{self, RunFlags};
use hyperxl_core::vm::state::VmStore;

use super::machine::MachineArgs;

// Arguments of `hyperxl run`.
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
    /// Keep stdin open: what this process reads goes to the app's stdin (EOF closes it).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the app a terminal in the VM (with -i: this terminal in raw mode, its size
    /// followed, ^C to the app); `logs` still records its output.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Show no pull progress (it is shown only on a terminal).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Console log option, as Docker's: max-size=SIZE (per file, default 32m),
    /// max-file=N (files kept, default 2).
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    /// Show the guest kernel's and the init's own console lines too.
    #[arg(long)]
    pub debug: bool,
    /// Publish a port: [IP:][HOST:]GUEST[/tcp|/udp] (HOST omitted: any free port).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:][HOST:]GUEST[/PROTO]"
    )]
    pub publish: Vec<String>,
    /// Publish every port the image exposes, each on a free dom0 port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// The network to join ("none": only loopback; default: $HYPERXL_DEFAULT_NETWORK, else
    /// hyperxl's default network).
    #[arg(long = "network", visible_alias = "net", value_name = "NAME|none")]
    pub network: Option<String>,
    /// The VM's IPv4 address (default: the next free one of its network).
    #[arg(long = "ip")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Name server for the guest (default: dom0's, unless on loopback).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// DNS search domain for the guest.
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Add a line to the guest's /etc/hosts: NAME:IP.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// The guest's hostname (default: the VM's name).
    #[arg(long = "hostname")]
    pub hostname: Option<String>,
    /// Mount a volume: NAME:/PATH[:ro] (a named volume, made if missing), /PATH (a new
    /// anonymous volume), or /HOST/DIR:/PATH:ro (a read-only snapshot of a dom0 directory).
    #[arg(short = 'v', long = "volume", value_name = "SRC:/PATH[:ro]")]
    pub volume: Vec<String>,
    /// Mount, in Docker's long form: type=volume|bind|tmpfs,source=..,target=..[,readonly]
    /// (bind: read-only snapshots only), tmpfs-size=, tmpfs-mode=.
    #[arg(long = "mount", value_name = "type=..,target=..")]
    pub mount: Vec<String>,
    /// Mount a tmpfs: /PATH[:size=SIZE,mode=OCTAL].
    #[arg(long = "tmpfs", value_name = "/PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Make the root filesystem read-only (volumes and --tmpfs keep their own modes).
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// size=SIZE: put the writable layer on a fresh scratch disk of SIZE (made by dom0,
    /// deleted when the VM ends) instead of in guest memory.
    #[arg(long = "storage-opt", value_name = "size=SIZE")]
    pub storage_opt: Vec<String>,
    /// The image to run.
    pub image: String,
    /// Command and arguments (default: the image's Cmd).
    pub command: Vec<String>,
}

/// What `run` (and `config`) make of the flags: the VM's options and the app's flags.
pub fn launch_inputs(args: &RunArgs) -> anyhow::Result<(LaunchOptions, RunFlags)> {
    let (machine, guest) = args.machine.resolve()?;
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
        hostname: args.hostname.clone().unwrap_or_default(),
        open_stdin: args.interactive,
        terminal: args.tty,
        attached: !args.detach,
    };
    let opts = LaunchOptions {
        image: args.image.clone(),
        name: args.name.clone(),
        auto_remove: args.rm,
        machine,
        guest,
        show_init_lines: args.debug,
        log: LogLimits::from_opts(&args.log_opt)?,
        labels: Default::default(),
        net: net_request(args)?,
        storage: {
            use hyperxl_core::volume::request;
            let mut req =
                request::from_flags(&args.volume, &args.tmpfs, args.read_only, &args.storage_opt)?;
            request::add_mounts(&mut req, &args.mount)?;
            req
        },
        pull_observer: super::progress::observer(args.quiet),
    };
    Ok((opts, flags))
}

/// The network flags as one request, checked as far as they can be without state.
pub fn net_request(args: &RunArgs) -> anyhow::Result<NetRequest> {
    // Asking for ports or an address is asking for a network, whatever the default.
    let wants_network = !args.publish.is_empty() || args.publish_all || args.ip.is_some();
    let chosen = args.network.clone().or_else(|| {
        hyperxl_core::net::default_network_setting().filter(|n| !(wants_network && n == "none"))
    });
    let disabled = chosen.as_deref() == Some("none");
    let network = chosen.filter(|n| !matches!(n.as_str(), "none" | "default" | "bridge"));
    let publish = args
        .publish
        .iter()
        .map(|p| publish::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut hosts = Vec::new();
    for entry in &args.add_host {
        let bad = || anyhow::anyhow!("invalid --add-host {entry:?}: expected NAME:IPv4");
        let (name, ip) = entry.split_once(':').ok_or_else(bad)?;
        let ip = ip.parse().map_err(|_| bad())?;
        if !valid_hostname(name) {
            return Err(bad());
        }
        hosts.push(HostEntry {
            ip,
            names: vec![name.to_string()],
        });
    }
    if let Some(d) = args.dns_search.iter().find(|d| !valid_hostname(d)) {
        anyhow::bail!("invalid --dns-search {d:?}");
    }
    Ok(NetRequest {
        network,
        disabled,
        ip: args.ip,
        publish,
        publish_all: args.publish_all,
        dns: args.dns.clone(),
        dns_search: args.dns_search.clone(),
        hosts,
    })
}

/// Runs the VM; returns the app's exit code.
pub fn run(state_dir: &Path, args: RunArgs) -> anyhow::Result<u8> {
    hyperxl_core::vm::timing::start();
    if args.tty && args.interactive && !args.detach && !std::io::stdin().is_terminal() {
        anyhow::bail!("run -it: the input device is not a terminal (drop -t to pipe stdin)");
    }
    let (opts, flags) = launch_inputs(&args)?;
    let vms = VmStore::open(state_dir)?;
    // As every command: first make the records agree with Xen (a VM that ended unwatched
    // is recorded and torn down before this one starts).
    hyperxl_core::vm::host::reconcile_all(&vms, &hyperxl_core::vm::host::Host::connect())?;
    // Ctrl-C while the image is pulled just ends hyperxl (nothing exists yet to clean).
    let prepared = launch::prepare(state_dir, &opts, &flags)?;
    if !args.detach {
        // From here on, Ctrl-C while the domain is built must still stop (or never
        // start) the VM, not leave a paused domain behind.
        hyperxl_core::vm::monitor::install_stop_handlers();
    }
    if args.detach {
        let id = launch::run_detached(state_dir, &vms, prepared)?;
        println!("{id}");
        return Ok(0);
    }
    let attach = launch::Attach {
        stdin: args.interactive,
        tty: args.tty,
    };
    let code = launch::run_attached(&vms, prepared, attach)?;
    Ok(exit_status(code))
}

/// The app's exit code as a process exit status (125 if it does not fit).
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(crate::EXIT_HYPERXL_FAILED)
}
