//! `hyperxl version`: this build's version, the Xen it talks to, and the guest
//! artefacts it would boot.

use clap::Args;

// Arguments of `hyperxl version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// The Xen version through libxl, or why there is none (not a Xen dom0).
pub fn xen_version() -> Result<libxl::HostInfo, String> {
    if !std::path::Path::new(libxl::PRIVCMD).exists() {
        return Err(format!("not on a Xen dom0 (no {})", libxl::PRIVCMD));
    }
    let ctx = libxl::Context::new().map_err(|e| e.to_string())?;
    ctx.host_info().map_err(|e| e.to_string())
}

pub fn run(args: VersionArgs) -> anyhow::Result<u8> {
    let xen = xen_version();
    let guest = hyperxl_core::vm::machine::guest_dir();
    let artefacts: Vec<(&str, bool)> = ["vmlinuz", "initramfs.cpio"]
        .into_iter()
        .map(|f| (f, guest.join(f).is_file()))
        .collect();
    match args.format.as_str() {
        "json" => println!(
            "{}",
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "xen": xen.as_ref().ok().map(|h| h.xen_version.clone()),
                "guest_dir": guest,
                "guest_artefacts": artefacts.iter().map(|(f, ok)| (f.to_string(), *ok)).collect::<std::collections::BTreeMap<_, _>>(),
            })
        ),
        "table" => {
            println!("hyperxl:  {}", env!("CARGO_PKG_VERSION"));
            match &xen {
                Ok(h) => println!("Xen:      {} (libxl)", h.xen_version),
                Err(why) => println!("Xen:      none: {why}"),
            }
            let missing: Vec<&str> = artefacts.iter().filter(|a| !a.1).map(|a| a.0).collect();
            if missing.is_empty() {
                println!("guest:    {} (vmlinuz, initramfs.cpio)", guest.display());
            } else {
                println!(
                    "guest:    {} (missing: {})",
                    guest.display(),
                    missing.join(", ")
                );
            }
        }
        other => anyhow::bail!("unknown --format {other:?} (expected table or json)"),
    }
    Ok(0)
}
