//! `hyperxl load`: import a `docker save` archive or an OCI image layout.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use hyperxl_image::Reference;

// Arguments of `hyperxl load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive (tar, tar.gz) or OCI layout directory.
    #[arg(short, long)]
    input: PathBuf,
    /// Name for images the archive does not name (or to rename its only image).
    #[arg(short, long)]
    tag: Option<Reference>,
    /// Show no progress (it is shown only when stderr is a terminal).
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    limits: super::image::LimitArgs,
}

pub fn run(state_dir: &Path, args: LoadArgs) -> anyhow::Result<u8> {
    let store = super::image::open_store(state_dir)?.with_limits(args.limits.limits());
    let spinner = super::progress::spinner(args.quiet, "Loading the image and building its disk");
    let loaded = hyperxl_image::load::load(&store, &args.input, args.tag.as_ref());
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let loaded = loaded.with_context(|| format!("loading {}", args.input.display()))?;
    for rec in loaded {
        println!("Loaded image: {} ({})", rec.reference.familiar(), rec.id);
    }
    Ok(0)
}
