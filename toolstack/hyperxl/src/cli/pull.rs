//! `hyperxl pull`: fetch an image from a registry into the store and build its disk.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use hyperxl_image::platform::Platform;
use hyperxl_image::pull::{self, PullOptions};
use hyperxl_image::Reference;

// Arguments of `hyperxl pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. `busybox`, `registry:5000/team/app:1`, `name@sha256:...`.
    image: Reference,
    /// Platform to pick from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    platform: Platform,
    /// Registry that may be contacted over plain HTTP (repeatable; localhost always may).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure: Vec<String>,
    /// Parallel layer downloads.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Show no progress (it is shown only when stderr is a terminal) and no digest.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    limits: super::image::LimitArgs,
}

pub fn run(state_dir: &Path, args: PullArgs) -> anyhow::Result<u8> {
    let store = super::image::open_store(state_dir)?.with_limits(args.limits.limits());
    let mut opts = PullOptions::new(state_dir);
    opts.platform = args.platform;
    opts.insecure = args.insecure;
    opts.parallel = args.parallel;
    opts.observer = super::progress::observer(args.quiet);
    let rec = pull::pull(&store, &args.image, &opts)
        .with_context(|| format!("pulling {}", args.image.familiar()))?;
    if !args.quiet {
        eprintln!(
            "Digest: {}",
            rec.manifest
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
    }
    println!("{}", rec.reference.familiar());
    Ok(0)
}
