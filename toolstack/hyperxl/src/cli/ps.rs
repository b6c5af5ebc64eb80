//! `hyperxl ps`: list VMs (running ones unless `-a`), as a table or JSON.

use std::path::Path;

use anyhow::bail;
use clap::Args;

use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::reconcile::unwatched;
use hyperxl_core::vm::state::{Status, VmState, VmStore};

// Arguments of `hyperxl ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all VMs, not only running ones.
    #[arg(short, long)]
    pub all: bool,
    /// Only the VMs of this deployment (`hyperxl up`).
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,
    /// Filter as Docker does: `label=KEY[=VALUE]`, `name=PART`, `id=PREFIX`,
    /// `status=created|running|exited`, or `pool` for the VMs `hyperxl pool` keeps
    /// booted (hidden otherwise); repeat to combine.
    #[arg(short = 'f', long, value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Only print VM ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

/// Prints the VMs.
pub fn run(state_dir: &Path, args: PsArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let mut filters = args
        .filter
        .iter()
        .map(|f| Filter::parse(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(d) = &args.deployment {
        filters.push(Filter::Label(
            hyperxl_core::deploy::apply::LABEL_DEPLOYMENT.into(),
            Some(d.clone()),
        ));
    }
    let show_pooled = filters
        .iter()
        .any(|f| matches!(f, Filter::Label(k, _) if k == hyperxl_core::vm::pool::LABEL_POOL));
    // Asking for a status shows exited VMs too, as with Docker.
    let all = args.all || filters.iter().any(|f| matches!(f, Filter::Status(_)));
    let host = Host::connect();
    let list: Vec<_> = reconcile_all(&vms, &host)?
        .into_iter()
        .filter(|v| all || v.status != Status::Exited)
        // Pooled VMs are nobody's yet: shown only when asked for by their label.
        .filter(|v| show_pooled || !hyperxl_core::vm::pool::is_pooled(v))
        .filter(|v| filters.iter().all(|f| f.matches(v)))
        .collect();
    if args.quiet {
        for v in list {
            println!("{}", v.id);
        }
        return Ok(0);
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<16}  {:<20}  {:<20}  {:<5}  {:<20}  {:<15}  {:<24}  COMMAND",
        "VM ID", "NAME", "IMAGE", "DOMID", "STATUS", "IP", "PORTS"
    );
    for v in list {
        let status = match (v.status, v.exit_code) {
            (Status::Exited, Some(code)) => format!("exited ({code})"),
            (Status::Exited, None) => "exited (?)".to_string(),
            // Its watcher was killed: the domain runs on, nobody records its end yet.
            (Status::Running, _) if unwatched(&v) => "running (unwatched)".to_string(),
            (Status::Running, _) if is_paused(&host, &v) => "paused".to_string(),
            (Status::Running, _) => "running".to_string(),
            (Status::Created, _) if unwatched(&v) => "created (unwatched)".to_string(),
            (Status::Created, _) => "created".to_string(),
        };
        let domid = v.domid.map_or("-".to_string(), |d| d.to_string());
        // Address and ports only while they are the VM's (freed when it ends).
        let net = v.network.as_ref().filter(|_| v.status.can_stop());
        let ip = net.map_or("-".to_string(), |n| n.ip.to_string());
        let ports = net
            .map(|n| {
                n.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16}  {:<20}  {:<20}  {:<5}  {:<20}  {:<15}  {:<24}  {}",
            v.id,
            v.name,
            v.image,
            domid,
            status,
            ip,
            ports,
            v.command.join(" ")
        );
    }
    Ok(0)
}

/// One `--filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    Label(String, Option<String>),
    Name(String),
    Id(String),
    Status(Status),
}

impl Filter {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if s == "pool" {
            // The VMs `hyperxl pool` keeps booted, hidden otherwise.
            return Ok(Filter::Label(
                hyperxl_core::vm::pool::LABEL_POOL.into(),
                None,
            ));
        }
        let Some((key, value)) = s.split_once('=') else {
            bail!("invalid filter {s:?}: use KEY=VALUE (label, name, id, status) or pool");
        };
        Ok(match key {
            "label" => match value.split_once('=') {
                Some((k, v)) => Filter::Label(k.into(), Some(v.into())),
                None => Filter::Label(value.into(), None),
            },
            "name" => Filter::Name(value.into()),
            "id" => Filter::Id(value.into()),
            "status" => Filter::Status(match value {
                "created" => Status::Created,
                "running" => Status::Running,
                "exited" => Status::Exited,
                _ => bail!("invalid status filter {value:?}: created, running or exited"),
            }),
            _ => bail!("unknown filter {key:?}: label, name, id or status"),
        })
    }

    fn matches(&self, vm: &VmState) -> bool {
        match self {
            Filter::Label(k, v) => vm
                .labels
                .get(k)
                .is_some_and(|x| v.as_ref().is_none_or(|v| x == v)),
            Filter::Name(part) => vm.name.contains(part.as_str()),
            Filter::Id(prefix) => vm.id.starts_with(prefix.as_str()),
            Filter::Status(s) => vm.status == *s,
        }
    }
}

/// Whether Xen says the VM's domain is paused (`hyperxl pause`).
fn is_paused(host: &Host, vm: &hyperxl_core::vm::state::VmState) -> bool {
    vm.domid
        .and_then(|d| host.info(d, &vm.domain_name()))
        .is_some_and(|info| info.paused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_as_docker_spells_them() {
        assert_eq!(
            Filter::parse("label=tier=db").unwrap(),
            Filter::Label("tier".into(), Some("db".into()))
        );
        assert_eq!(
            Filter::parse("label=tier").unwrap(),
            Filter::Label("tier".into(), None)
        );
        assert_eq!(
            Filter::parse("status=exited").unwrap(),
            Filter::Status(Status::Exited)
        );
        for bad in ["tier=db", "status=gone", "nokey"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_match() {
        let mut vm = VmState::new("abcd".into(), "shop-web".into(), "demo".into());
        vm.labels.insert("tier".into(), "front".into());
        for yes in [
            "label=tier",
            "label=tier=front",
            "name=web",
            "id=ab",
            "status=created",
        ] {
            assert!(Filter::parse(yes).unwrap().matches(&vm), "{yes}");
        }
        for no in [
            "label=tier=db",
            "label=x",
            "name=db",
            "id=b",
            "status=running",
        ] {
            assert!(!Filter::parse(no).unwrap().matches(&vm), "{no}");
        }
    }
}
