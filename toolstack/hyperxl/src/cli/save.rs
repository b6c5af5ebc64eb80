//! `hyperxl save`: write stored images to an OCI image layout tar.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

// Arguments of `hyperxl save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The tar file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Image references or ID prefixes.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(state_dir: &Path, args: SaveArgs) -> anyhow::Result<u8> {
    let store = super::image::open_store(state_dir)?;
    let mut records = Vec::new();
    for q in &args.images {
        records.extend(store.find(q)?);
    }
    hyperxl_image::save::save(&store, &records, &args.output)
        .with_context(|| format!("saving to {}", args.output.display()))?;
    Ok(0)
}
