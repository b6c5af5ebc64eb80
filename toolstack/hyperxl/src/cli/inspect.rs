//! `hyperxl inspect VM...`: everything recorded about VMs, as a JSON array.

use std::path::Path;

use clap::Args;
use serde_json::Value;

use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Prints the state, the spec handed to the guest and where the logs are.
pub fn run(state_dir: &Path, args: InspectArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    reconcile_all(&vms, &Host::connect())?;
    let mut out = Vec::new();
    for which in &args.vms {
        let vm = vms.find(which)?;
        let dir = vms.dir(&vm.id);
        let mut v = serde_json::to_value(&vm)?;
        let spec = std::fs::read(dir.join("spec.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert("spec".into(), spec);
            map.insert(
                "console_log".into(),
                Value::String(dir.join("console.log").display().to_string()),
            );
        }
        out.push(v);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
