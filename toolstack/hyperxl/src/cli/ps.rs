//! `hyperxl ps`: list VMs (running ones unless `-a`), as a table or JSON.

use std::path::Path;

use clap::Args;

use crate::vm::host::{reconcile_all, Host};
use crate::vm::reconcile::unwatched;
use crate::vm::state::{Status, VmStore};

/// Arguments of `hyperxl ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all VMs, not only running ones.
    #[arg(short, long)]
    pub all: bool,
    /// Only the VMs of this deployment (`hyperxl up`).
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,
    /// Only VMs with this label (KEY=VALUE), e.g. `hyperxl.deployment=shop`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

/// Prints the VMs.
pub fn run(state_dir: &Path, args: PsArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let mut filters: Vec<(&str, &str)> = args
        .filter
        .iter()
        .map(|f| f.split_once('=').unwrap_or((f.as_str(), "")))
        .collect();
    if let Some(d) = &args.deployment {
        filters.push((crate::deploy::apply::LABEL_DEPLOYMENT, d));
    }
    let list: Vec<_> = reconcile_all(&vms, &Host::connect())?
        .into_iter()
        .filter(|v| args.all || v.status != Status::Exited)
        .filter(|v| {
            filters
                .iter()
                .all(|(k, val)| v.labels.get(*k).is_some_and(|x| x == val))
        })
        .collect();
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<16}  {:<20}  {:<20}  {:<5}  {:<20}  COMMAND",
        "VM ID", "NAME", "IMAGE", "DOMID", "STATUS"
    );
    for v in list {
        let status = match (v.status, v.exit_code) {
            (Status::Exited, Some(code)) => format!("exited ({code})"),
            (Status::Exited, None) => "exited (?)".to_string(),
            // Its watcher was killed: the domain runs on, nobody records its end yet.
            (Status::Running, _) if unwatched(&v) => "running (unwatched)".to_string(),
            (Status::Running, _) => "running".to_string(),
            (Status::Created, _) if unwatched(&v) => "created (unwatched)".to_string(),
            (Status::Created, _) => "created".to_string(),
        };
        let domid = v.domid.map_or("-".to_string(), |d| d.to_string());
        println!(
            "{:<16}  {:<20}  {:<20}  {:<5}  {:<20}  {}",
            v.id,
            v.name,
            v.image,
            domid,
            status,
            v.command.join(" ")
        );
    }
    Ok(0)
}
