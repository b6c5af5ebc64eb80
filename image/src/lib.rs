//! OCI/Docker images: references, registry pull, store, layer merge, rootfs disks.
//!
//! Images are untrusted input handled in dom0. Every blob is verified against its
//! digest before use, every layer against its config `diff_id`, and layer contents are
//! never unpacked onto dom0's filesystem: they are merged in memory into one tar stream
//! that `mksquashfs` turns into the guest's read-only root disk.
//!
//! ```no_run
//! use hyperxl_image::pull::{pull_if_missing, PullOptions};
//! use hyperxl_image::{Reference, Store};
//! let state_dir = std::path::Path::new("/var/lib/hyperxl");
//! let store = Store::open(state_dir)?;
//! let image: Reference = "busybox".parse()?;
//! pull_if_missing(&store, &image, &PullOptions::new(state_dir))?; // no network if stored
//! let disk = store.ensure_disk(&image)?;          // cached by config digest
//! let config = store.image_config(&image)?;       // Entrypoint, Cmd, Env, ...
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules: [`reference`](mod@reference) (names), [`digest`], [`store`] (blobs, records, disks, locking,
//! prune), [`load`] (`docker save` / OCI layouts), [`pull`] + [`auth`] (registries),
//! [`merge`] (layers to one sanitised tar stream), [`disk`] (`mksquashfs -tar`),
//! [`limits`] (hostile-input limits), [`targuard`] (tar metadata records
//! bounded before they are read), [`run`] (the one external-command runner), [`text`]
//! (untrusted text made safe for error messages), [`fuzzing`] (entry points for the fuzz
//! targets).

pub mod auth;
pub mod config;
pub mod digest;
pub mod disk;
pub mod fuzzing;
pub mod layer;
pub mod limits;
pub mod load;
pub mod merge;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod run;
pub mod save;
pub mod store;
pub use hyperxl_tarcopy::guard as targuard;
pub use hyperxl_tarcopy::text;

pub use digest::{Digest, DigestError};
pub use disk::DiskError;
pub use limits::{DevicePolicy, Limits};
pub use load::LoadError;
pub use merge::{LayerInput, MergeError};
pub use pull::{PullError, PullOptions};
pub use reference::{Reference, ReferenceError};
pub use store::{ImageRecord, LayerRecord, PruneStats, Staging, Store, StoreError};
