//! `hyperxl rmi`: remove image names (blobs and disks go with `hyperxl image prune`).

use std::path::Path;

use clap::Args;

// Arguments of `hyperxl rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image references or ID prefixes.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(state_dir: &Path, args: RmiArgs) -> anyhow::Result<u8> {
    let store = super::image::open_store(state_dir)?;
    for q in &args.images {
        for rec in store.find(q)? {
            store.remove(&rec.reference)?;
            println!("Untagged: {}", rec.reference.familiar());
        }
    }
    Ok(0)
}
