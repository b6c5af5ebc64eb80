//! `hyperxl config [RUN FLAGS] IMAGE [CMD...]`: the xl.cfg equivalent to a `hyperxl run`,
//! and `hyperxl spec write DOMID FILE`, the step that gives a domain made by plain
//! `xl create -p` its container spec.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use hyperxl_contract::Spec;

use crate::cli::run::{self, RunArgs};
use hyperxl_core::vm::launch;
use hyperxl_core::vm::machine::ROOT_VDEV;
use hyperxl_core::xlcfg::{XlConfig, XlDisk};

/// The comment line of a config file that carries the spec.
pub const SPEC_LINE: &str = "# hyperxl-spec: ";

/// Prints the xl.cfg, with the spec in a comment line `hyperxl spec write` reads.
pub fn config(state_dir: &Path, args: RunArgs) -> anyhow::Result<u8> {
    let (mut opts, flags) = run::launch_inputs(&args)?;
    let networked = args.network.as_deref().is_some_and(|n| n != "none");
    if networked
        || args.ip.is_some()
        || !args.publish.is_empty()
        || args.publish_all
        || !args.dns.is_empty()
        || !args.dns_search.is_empty()
        || !args.add_host.is_empty()
    {
        bail!("hyperxl config cannot express networking (--network, -p, -P, --ip, --dns, --add-host) as xl.cfg: a network's addresses and rules are hyperxl run's; use hyperxl run");
    }
    // A domain `xl create` builds has no lease, rules or vif of hyperxl's: no network.
    opts.net.disabled = true;
    let p = launch::prepare(state_dir, &opts, &flags)?;
    if !p.storage.disks.is_empty() {
        bail!("hyperxl config cannot express volumes (-v, --storage-opt, an image's VOLUME) as xl.cfg: use hyperxl run");
    }
    let cfg = XlConfig {
        name: p.vm.domain_name(),
        pv: opts.machine.is_pv(),
        kernel: opts.guest.kernel.clone(),
        ramdisk: opts.guest.initrd.clone(),
        cmdline: launch::GUEST_CMDLINE.into(),
        memory_mib: opts.machine.memory_mib(),
        vcpus: opts.machine.vcpus(),
        disks: vec![XlDisk {
            target: p.disk_file.clone().context("the VM has no rootfs disk")?,
            vdev: ROOT_VDEV.into(),
            readonly: true,
        }],
    };
    let name = p.vm.domain_name();
    print!("{}", cfg.render()?);
    println!(
        "\n# No vif: hyperxl's networks (addresses, rules, published ports) need hyperxl run."
    );
    println!(
        "\n# Boot it: xl create -p THIS.cfg && hyperxl spec write $(xl domid {name}) THIS.cfg && xl unpause {name}"
    );
    println!("{SPEC_LINE}{}", p.spec.to_json()?);
    Ok(0)
}

// Arguments of `hyperxl spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    #[command(subcommand)]
    command: SpecCommand,
}

#[derive(Debug, Subcommand)]
enum SpecCommand {
    /// Write a spec into a (paused) domain's xenstore, readable but not writable by it.
    Write {
        /// The domain id (`xl domid NAME`).
        domid: u32,
        /// A spec as JSON, or an xl.cfg from `hyperxl config` (its `# hyperxl-spec:` line).
        file: PathBuf,
    },
}

/// Runs `hyperxl spec ...`.
pub fn spec(args: SpecArgs) -> anyhow::Result<u8> {
    match args.command {
        SpecCommand::Write { domid, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let json = match text.lines().find_map(|l| l.strip_prefix(SPEC_LINE)) {
                Some(line) => line.to_owned(),
                None if text.trim_start().starts_with('{') => text,
                None => bail!(
                    "{}: neither a JSON spec nor a config with a `{}` line",
                    file.display(),
                    SPEC_LINE.trim()
                ),
            };
            let spec = Spec::from_json(json.as_bytes())
                .with_context(|| format!("{}: invalid spec", file.display()))?;
            launch::write_spec(libxl::DomId(domid), &spec)?;
            Ok(0)
        }
    }
}
