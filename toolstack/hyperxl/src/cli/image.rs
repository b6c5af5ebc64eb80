//! `hyperxl image inspect|prune`, and what the image subcommands share (store opening,
//! limit flags).

use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use hyperxl_image::{DevicePolicy, Limits, Store};

// Arguments of `hyperxl image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Show an image's record and config as JSON.
    Inspect {
        /// Image reference or ID prefix.
        image: String,
    },
    /// Remove blobs and disks no image refers to, and leftovers of interrupted pulls.
    Prune,
    /// Print the path of an image's rootfs disk, building it if it is not cached.
    Disk {
        /// Image reference.
        image: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

// Limits against hostile images, shared by `pull` and `load`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest uncompressed layer, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_layer_size: Option<u64>,
    /// Largest uncompressed image (all layers), in bytes.
    #[arg(long, value_name = "BYTES")]
    max_image_size: Option<u64>,
    /// Largest compressed blob, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_blob_size: Option<u64>,
    /// Most tar entries across all layers.
    #[arg(long, value_name = "N")]
    max_entries: Option<u64>,
    /// Refuse images that contain device nodes.
    #[arg(long)]
    no_devices: bool,
}

impl LimitArgs {
    /// The limits, defaults overridden by the flags given.
    pub fn limits(&self) -> Limits {
        let mut l = Limits::default();
        if let Some(v) = self.max_layer_size {
            l.max_layer_bytes = v;
        }
        if let Some(v) = self.max_image_size {
            l.max_total_bytes = v;
        }
        if let Some(v) = self.max_blob_size {
            l.max_blob_bytes = v;
        }
        if let Some(v) = self.max_entries {
            l.max_entries = v;
        }
        if self.no_devices {
            l.devices = DevicePolicy::Reject;
        }
        l
    }
}

/// Opens the image store under the state dir.
pub fn open_store(state_dir: &Path) -> anyhow::Result<Store> {
    Store::open(state_dir)
        .with_context(|| format!("opening image store in {}", state_dir.display()))
}

pub fn run(state_dir: &Path, args: ImageArgs) -> anyhow::Result<u8> {
    let store = open_store(state_dir)?;
    match args.command {
        ImageCommand::Inspect { image } => {
            let mut out = Vec::new();
            for rec in store.find(&image)? {
                let config: serde_json::Value = store.read_json_blob(&rec.id, "image config")?;
                let disk = store.disk_path(&rec.id);
                out.push(serde_json::json!({
                    "Reference": rec.reference.to_string(),
                    "Id": rec.id.to_string(),
                    "ManifestDigest": rec.manifest.as_ref().map(|d| d.to_string()),
                    "Platform": rec.platform,
                    "Created": rec.created,
                    "Size": rec.size(),
                    "Source": rec.source,
                    "Layers": rec.layers,
                    "Disk": disk.exists().then(|| disk.display().to_string()),
                    "Config": config,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Disk { image, limits } => {
            let store = store.with_limits(limits.limits());
            let recs = store.find(&image)?;
            let disk = store
                .ensure_disk(&recs[0].reference)
                .with_context(|| format!("building the disk of {image}"))?;
            println!("{}", disk.display());
        }
        ImageCommand::Prune => {
            let s = store.prune()?;
            println!(
                "removed {} blobs, {} disks, {} temporary files; {} bytes freed",
                s.blobs, s.disks, s.temp_files, s.bytes
            );
        }
    }
    Ok(0)
}
