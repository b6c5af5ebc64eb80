//! `hyperxl ps`: list VMs (running ones unless `-a`), as a table or JSON.

use std::path::Path;

use clap::Args;

use crate::vm::reconcile::reconcile;
use crate::vm::state::{Status, VmStore};

/// Arguments of `hyperxl ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all VMs, not only running ones.
    #[arg(short, long)]
    pub all: bool,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

/// A question "does domain N exist?" answered by one libxl context for all VMs
/// (false for every domain where Xen is unavailable).
pub fn domain_checker() -> impl Fn(u32) -> bool {
    let ctx = libxl::Context::new().ok();
    move |domid| {
        ctx.as_ref()
            .and_then(|c| c.domain_info(libxl::DomId(domid)).ok().flatten())
            .is_some()
    }
}

/// Prints the VMs.
pub fn run(state_dir: &Path, args: PsArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let list: Vec<_> = reconcile(&vms, domain_checker())?
        .into_iter()
        .filter(|v| args.all || v.status != Status::Exited)
        .collect();
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<16}  {:<20}  {:<20}  {:<5}  {:<14}  COMMAND",
        "VM ID", "NAME", "IMAGE", "DOMID", "STATUS"
    );
    for v in list {
        let status = match (v.status, v.exit_code) {
            (Status::Exited, Some(code)) => format!("exited ({code})"),
            (Status::Exited, None) => "exited (?)".to_string(),
            (Status::Running, _) => "running".to_string(),
            (Status::Created, _) => "created".to_string(),
        };
        let domid = v.domid.map_or("-".to_string(), |d| d.to_string());
        println!(
            "{:<16}  {:<20}  {:<20}  {:<5}  {:<14}  {}",
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
