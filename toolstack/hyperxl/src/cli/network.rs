//! `hyperxl network create|ls|inspect|rm`: user networks, each its own bridge and
//! subnet; VMs on different networks cannot reach each other.

use std::path::Path;

use clap::{Args, Subcommand};

use hyperxl_core::net;
use hyperxl_core::net::store::{NetStore, DEFAULT_NETWORK};
use hyperxl_core::net::subnet::Subnet;
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl network`.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// Define a network (its bridge is made when a VM first joins it).
    Create {
        /// Its subnet (default: the first free 10.89.N.0/24).
        #[arg(long)]
        subnet: Option<Subnet>,
        /// Its name (1-12 of a-z, 0-9, '_', '-').
        name: String,
    },
    /// List networks.
    #[command(visible_alias = "list")]
    Ls,
    /// Show networks and their leases, as JSON.
    Inspect {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks no VM is attached to, with their bridges and rules.
    #[command(visible_alias = "remove")]
    Rm {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs `hyperxl network ...`.
pub fn run(state_dir: &Path, args: NetworkArgs) -> anyhow::Result<u8> {
    let store = NetStore::open(state_dir)?;
    match args.command {
        NetworkCommand::Create { subnet, name } => {
            let _lock = store.lock()?;
            let def = store.create(&name, subnet)?;
            println!("{}", def.name);
        }
        NetworkCommand::Ls => {
            let _lock = store.lock()?;
            store.default_network()?;
            println!("{:<12}  {:<12}  {:<18}  VMS", "NAME", "BRIDGE", "SUBNET");
            for def in store.list()? {
                let n = store.leases(&def.name)?.len();
                println!(
                    "{:<12}  {:<12}  {:<18}  {n}",
                    def.name,
                    def.bridge,
                    def.subnet.to_string()
                );
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in names {
                let def = store.load(&name)?;
                let leases: Vec<serde_json::Value> = store
                    .leases(&name)?
                    .into_iter()
                    .map(|(ip, id)| serde_json::json!({ "ip": ip, "vm": id }))
                    .collect();
                out.push(serde_json::json!({
                    "name": def.name, "bridge": def.bridge, "subnet": def.subnet,
                    "gateway": def.gateway(), "leases": leases,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { names } => {
            // Leases of VMs that ended unwatched do not keep a network alive.
            let vms = VmStore::open(state_dir)?;
            let live = reconcile_all(&vms, &Host::connect())?;
            net::sweep(&vms, &live);
            for name in names {
                if name == DEFAULT_NETWORK {
                    anyhow::bail!("network {name} is hyperxl's default and cannot be removed");
                }
                net::remove_network(state_dir, &name)?;
                println!("{name}");
            }
        }
    }
    Ok(0)
}
