//! `hyperxl images`: list stored images.

use std::path::Path;

use clap::Args;

// Arguments of `hyperxl images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

pub fn run(state_dir: &Path, args: ImagesArgs) -> anyhow::Result<u8> {
    let store = super::image::open_store(state_dir)?;
    let records = store.records()?;
    match args.format.as_str() {
        "json" => {
            let rows: Vec<_> = records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "Repository": r.reference.name(),
                        "Tag": r.reference.tag(),
                        "Reference": r.reference.to_string(),
                        "Id": r.id.to_string(),
                        "ManifestDigest": r.manifest.as_ref().map(|d| d.to_string()),
                        "Platform": r.platform,
                        "Created": r.created,
                        "Size": r.size(),
                        "DiskCached": store.disk_path(&r.id).exists(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        "table" => {
            println!(
                "{:<40} {:<16} {:<14} {:>10}  DISK",
                "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
            );
            for r in &records {
                let familiar = r.reference.familiar();
                let repo = match r.reference.tag() {
                    Some(t) => familiar.strip_suffix(&format!(":{t}")).unwrap_or(&familiar),
                    None => familiar.split('@').next().unwrap_or(&familiar),
                };
                println!(
                    "{:<40} {:<16} {:<14} {:>10}  {}",
                    repo,
                    r.reference.tag().unwrap_or("<none>"),
                    &r.id.hex()[..12],
                    human(r.size()),
                    if store.disk_path(&r.id).exists() {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
        }
        other => anyhow::bail!("unknown --format {other:?} (expected table or json)"),
    }
    Ok(0)
}

fn human(n: u64) -> String {
    super::human_size(n, 1000)
}
