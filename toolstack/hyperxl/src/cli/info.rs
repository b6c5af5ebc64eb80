//! `hyperxl info`: what this host offers.

use std::path::Path;

use clap::Args;

/// Arguments of `hyperxl info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Xen's privileged-command device; present only in a Xen domain with privcmd loaded.
const PRIVCMD: &str = "/dev/xen/privcmd";

pub fn run(state_dir: &Path, args: InfoArgs) -> anyhow::Result<u8> {
    let xen = Path::new(PRIVCMD).exists();
    match args.format.as_str() {
        "json" => println!(
            "{{\"xen\":{xen},\"state_dir\":{:?}}}",
            state_dir.display().to_string()
        ),
        "table" => {
            println!(
                "xen:        {}",
                if xen {
                    "yes"
                } else {
                    "no (no /dev/xen/privcmd)"
                }
            );
            println!("state dir:  {}", state_dir.display());
        }
        other => anyhow::bail!("unknown --format {other:?} (expected table or json)"),
    }
    Ok(0)
}
