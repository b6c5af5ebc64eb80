//! The content-addressed store under `STATE_DIR/images`.
//!
//! ```text
//! images/lock                       flock: shared while importing/building, exclusive for prune
//! images/blobs/sha256/<hex>         verified blobs (manifests, configs, layers)
//! images/refs/<sha256(name)>.json   one image record per reference, replaced atomically
//! images/disks/<config hex>.squashfs  the rootfs disk, keyed by the image (config) digest
//! images/disks/<config hex>.lock    flock held while that disk is built
//! images/tmp/                       staging; anything here is garbage once no lock is held
//! ```
//!
//! Every file appears by rename after it is complete and fsynced: a blob only after its
//! digest was verified, a disk only after mksquashfs succeeded, a record only after its
//! blobs and disk are in place. A killed process leaves at most files in `tmp/`, which
//! `prune` removes, and so does the next import that finds the store lock free
//! ([`Store::sweep_tmp`]). Imports stage new blobs in `tmp/` and validate every image
//! before committing anything, so a refused image leaves the store exactly as it was;
//! each validated image's disk is then built in `tmp/` and moved into `disks/` at once,
//! so `tmp/` never holds more than one disk. Downloads and spools check free space
//! ([`Store::check_space`]) before they start.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use crate::digest::{Digest, HashingWriter};
use crate::disk::{self, Compressor, DiskError};
use crate::limits::Limits;
use crate::merge::LayerInput;
use crate::reference::Reference;

mod staging;
pub use staging::Staging;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Taking the store lock failed.
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
    /// No image by that name.
    #[error("no such image: {0}")]
    NotFound(String),
    /// An ID prefix that matches several images.
    #[error("{0} matches more than one image")]
    Ambiguous(String),
    /// A blob the image needs is not in the store.
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// A blob's content does not hash to its digest.
    #[error("blob content is {actual}, expected {expected}")]
    DigestMismatch {
        /// The digest it should have.
        expected: Digest,
        /// What it hashed to.
        actual: Digest,
    },
    /// A blob's size is not the size its descriptor says.
    #[error("blob {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size from the descriptor.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// A blob larger than the limit.
    #[error("{what} is larger than the limit of {limit} bytes (raise with --max-blob-size)")]
    TooLarge {
        /// What it was.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A JSON document (config, record) that does not parse.
    #[error("malformed {what}")]
    Malformed {
        /// What it was.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A config whose `diff_ids` do not match the layers.
    #[error("image config lists {diff_ids} layers but the manifest has {layers}")]
    LayerCountMismatch {
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// A `diff_ids` entry that is not a valid digest.
    #[error("image config: bad diff_id")]
    BadDiffId(#[from] crate::digest::DigestError),
    /// Building the disk failed.
    #[error("building rootfs disk")]
    Disk(#[from] DiskError),
    /// Not enough free space for what is about to be written.
    #[error(
        "{path}: {needed} bytes needed but only {available} free (keeping {reserve} in reserve)"
    )]
    NoSpace {
        /// The directory written to.
        path: PathBuf,
        /// Bytes about to be written.
        needed: u64,
        /// Bytes free for unprivileged writers.
        available: u64,
        /// Bytes always left free.
        reserve: u64,
    },
    /// Checking free space failed.
    #[error("checking free space in {path}")]
    Statvfs {
        /// The directory.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
}

/// Free space an import always leaves on the store's filesystem.
pub const SPACE_RESERVE: u64 = 64 << 20;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One layer of an image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The blob's digest (compressed, as in the manifest).
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// What the store knows about one named image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference it is stored under.
    pub reference: Reference,
    /// The image ID: the config digest (also the disk's key).
    pub id: Digest,
    /// The manifest digest, when the image came with one (pulls, OCI layouts).
    pub manifest: Option<Digest>,
    /// The layers, lowest first.
    pub layers: Vec<LayerRecord>,
    /// `os/architecture` from the config.
    pub platform: String,
    /// Creation time from the config (RFC 3339), if any.
    pub created: Option<String>,
    /// Where it came from: `pull`, `load`.
    pub source: String,
}

impl ImageRecord {
    /// Sum of the layer blob sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.id)
            .chain(self.manifest.iter())
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// What `prune` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    /// Unreferenced blobs removed.
    pub blobs: u64,
    /// Unreferenced disks removed.
    pub disks: u64,
    /// Leftover staging files removed.
    pub temp_files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// A held store lock; released on drop.
pub struct StoreLock {
    _lock: Flock<File>,
}

/// The image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
    compressor: Compressor,
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir/images`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let root = state_dir.join("images");
        for d in ["blobs/sha256", "refs", "disks", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let store = Store {
            root,
            limits: Limits::default(),
            compressor: Compressor::default(),
        };
        drop(store.lock_shared()?);
        Ok(store)
    }

    /// Replaces the limits used for imports and disk builds.
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store's root directory (`STATE_DIR/images`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Where an image's disk lives (whether or not it exists).
    pub fn disk_path(&self, id: &Digest) -> PathBuf {
        self.root
            .join("disks")
            .join(format!("{}.squashfs", id.hex()))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn record_path(&self, r: &Reference) -> PathBuf {
        let key = Digest::of_bytes(r.to_string().as_bytes());
        self.root.join("refs").join(format!("{}.json", key.hex()))
    }

    fn lock(&self, arg: FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = Flock::lock(f, arg).map_err(|(_, source)| StoreError::Lock { path, source })?;
        Ok(StoreLock { _lock: lock })
    }

    /// Takes the shared lock: blobs, disks and staging files stay while it is held.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock(FlockArg::LockShared)
    }

    /// Removes every leftover file in `tmp/` if no other process holds the store lock
    /// (then none of them belongs to a live import or build); does nothing otherwise.
    /// Returns how many entries were removed.
    pub fn sweep_tmp(&self) -> Result<u64, StoreError> {
        let _lock = match self.lock(FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(StoreError::Lock {
                source: nix::Error::EWOULDBLOCK,
                ..
            }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let dir = self.tmp_dir();
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = e.map_err(io_err(&dir))?.path();
            let r = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match r {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(n)
    }

    /// Fails unless `needed` bytes fit in `tmp/`'s filesystem with [`SPACE_RESERVE`] to
    /// spare (checked before a download or a spool starts, so a hostile size is refused
    /// before the disk fills).
    pub fn check_space(&self, needed: u64) -> Result<(), StoreError> {
        let dir = self.tmp_dir();
        let st = nix::sys::statvfs::statvfs(&dir).map_err(|source| StoreError::Statvfs {
            path: dir.clone(),
            source,
        })?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let available =
            u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        if needed.saturating_add(SPACE_RESERVE) > available {
            return Err(StoreError::NoSpace {
                path: dir,
                needed,
                available,
                reserve: SPACE_RESERVE,
            });
        }
        Ok(())
    }

    /// Reads a record.
    pub fn record(&self, r: &Reference) -> Result<ImageRecord, StoreError> {
        let path = self.record_path(r);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(r.familiar()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&data).map_err(|source| StoreError::Malformed {
            what: format!("image record {}", path.display()),
            source,
        })
    }

    /// Every record, sorted by reference.
    pub fn records(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = e.map_err(io_err(&dir))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let data = match fs::read(&path) {
                Ok(d) => d,
                // Removed by a concurrent rmi.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let rec: ImageRecord =
                serde_json::from_slice(&data).map_err(|source| StoreError::Malformed {
                    what: format!("image record {}", path.display()),
                    source,
                })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Finds images the way `docker` does: a reference (`busybox`, `x@sha256:...` by
    /// manifest or ID) or an ID prefix of at least 4 hex digits (all tags of it).
    pub fn find(&self, query: &str) -> Result<Vec<ImageRecord>, StoreError> {
        let q = query.strip_prefix("sha256:").unwrap_or(query);
        let is_id = q.len() >= 4 && q.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if let Ok(r) = query.parse::<Reference>() {
            match self.record(&r) {
                Ok(rec) => return Ok(vec![rec]),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if let Some(d) = r.digest() {
                let hits: Vec<_> = self
                    .records()?
                    .into_iter()
                    .filter(|x| {
                        x.reference.name() == r.name()
                            && (x.manifest.as_ref() == Some(d) || &x.id == d)
                    })
                    .collect();
                if !hits.is_empty() {
                    return Ok(hits);
                }
            }
        }
        if is_id {
            let hits: Vec<_> = self
                .records()?
                .into_iter()
                .filter(|x| x.id.hex().starts_with(q))
                .collect();
            let ids: HashSet<_> = hits.iter().map(|h| h.id.clone()).collect();
            if ids.len() > 1 {
                return Err(StoreError::Ambiguous(query.to_string()));
            }
            if !hits.is_empty() {
                return Ok(hits);
            }
        }
        Err(StoreError::NotFound(query.to_string()))
    }

    /// Removes the record for `r` (blobs and disk stay until `prune`).
    pub fn remove(&self, r: &Reference) -> Result<ImageRecord, StoreError> {
        let _lock = self.lock_shared()?;
        let rec = self.record(r)?;
        let path = self.record_path(r);
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(rec)
    }

    /// Reads and parses a JSON blob (config, manifest) with the JSON size limit.
    pub fn read_json_blob<T: serde::de::DeserializeOwned>(
        &self,
        d: &Digest,
        what: &str,
    ) -> Result<T, StoreError> {
        read_json(&self.blob_path(d), d, what, self.limits.max_json_bytes)
    }

    /// The image config (Entrypoint, Cmd, Env, WorkingDir, User, ...) of a stored image.
    pub fn image_config(&self, r: &Reference) -> Result<ImageConfiguration, StoreError> {
        let rec = self.record(r)?;
        read_config(
            &self.blob_path(&rec.id),
            &rec.id,
            self.limits.max_json_bytes,
        )
    }

    /// The rootfs disk of a stored image, built if it is not cached yet. A cache hit reads
    /// one record and checks one file.
    pub fn ensure_disk(&self, r: &Reference) -> Result<PathBuf, StoreError> {
        let rec = self.record(r)?;
        let disk = self.disk_path(&rec.id);
        if disk.exists() {
            return Ok(disk);
        }
        let _lock = self.lock_shared()?;
        let layers = self.layer_inputs(&rec, &|d| {
            let p = self.blob_path(d);
            p.exists().then_some(p)
        })?;
        self.build_disk(&rec.id, &layers)
    }

    /// Layer inputs for `rec`, blobs found through `find` (the store, or staging).
    fn layer_inputs(
        &self,
        rec: &ImageRecord,
        find: &dyn Fn(&Digest) -> Option<PathBuf>,
    ) -> Result<Vec<LayerInput>, StoreError> {
        let config_path = find(&rec.id).ok_or_else(|| StoreError::MissingBlob(rec.id.clone()))?;
        let config = read_config(&config_path, &rec.id, self.limits.max_json_bytes)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != rec.layers.len() {
            return Err(StoreError::LayerCountMismatch {
                diff_ids: diff_ids.len(),
                layers: rec.layers.len(),
            });
        }
        rec.layers
            .iter()
            .zip(diff_ids)
            .map(|(l, diff_id)| {
                Ok(LayerInput {
                    blob: find(&l.digest)
                        .ok_or_else(|| StoreError::MissingBlob(l.digest.clone()))?,
                    diff_id: diff_id.parse()?,
                })
            })
            .collect()
    }

    /// Builds the disk for image `id` unless another process did; the caller holds the
    /// shared lock.
    fn build_disk(&self, id: &Digest, layers: &[LayerInput]) -> Result<PathBuf, StoreError> {
        let disk = self.disk_path(id);
        let lock_path = self.root.join("disks").join(format!("{}.lock", id.hex()));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let _building =
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, source)| StoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        if disk.exists() {
            return Ok(disk);
        }
        let tmp = self.temp_file()?;
        disk::build_squashfs(layers, &self.limits, self.compressor, tmp.path())?;
        persist(tmp, &disk)?;
        Ok(disk)
    }

    pub(crate) fn temp_file(&self) -> Result<NamedTempFile, StoreError> {
        let dir = self.tmp_dir();
        NamedTempFile::new_in(&dir).map_err(io_err(&dir))
    }

    /// Streams `r` into a new file in `tmp/`, verifying `expected` (digest and size) when
    /// given and refusing more than `limit` bytes. Thread-safe; hand the result to
    /// [`Staging::adopt`].
    pub fn write_temp_blob(
        &self,
        r: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        limit: u64,
        what: &str,
    ) -> Result<(Digest, u64, NamedTempFile), StoreError> {
        if let Some(n) = expected_size {
            if n > limit {
                return Err(StoreError::TooLarge {
                    what: what.to_string(),
                    limit,
                });
            }
            self.check_space(n)?;
        }
        let tmp = self.temp_file()?;
        let path = tmp.path().to_path_buf();
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp));
        // Never read more than the descriptor announced (plus one byte to notice).
        let cap = expected_size.map_or(limit, |n| n.min(limit));
        let copied = io::copy(&mut r.take(cap.saturating_add(1)), &mut w).map_err(io_err(&path))?;
        if copied > limit {
            return Err(StoreError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        let (buf, digest, size) = w.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?;
        if let Some(n) = expected_size {
            if n != size {
                return Err(StoreError::SizeMismatch {
                    digest,
                    expected: n,
                    actual: size,
                });
            }
        }
        if let Some(exp) = expected {
            if *exp != digest {
                return Err(StoreError::DigestMismatch {
                    expected: exp.clone(),
                    actual: digest,
                });
            }
        }
        Ok((digest, size, tmp))
    }

    /// Starts an import: new blobs are staged, nothing is visible until
    /// [`Staging::commit`].
    pub fn stage(&self) -> Result<Staging<'_>, StoreError> {
        Staging::new(self)
    }

    /// Removes blobs and disks no record refers to, and leftover staging files.
    pub fn prune(&self) -> Result<PruneStats, StoreError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let records = self.records()?;
        let blobs: HashSet<String> = records
            .iter()
            .flat_map(|r| r.blobs())
            .map(|d| d.hex().to_string())
            .collect();
        let ids: HashSet<&str> = records.iter().map(|r| r.id.hex()).collect();
        let mut stats = PruneStats::default();
        let mut remove = |path: &Path, counter: &mut u64| -> Result<(), StoreError> {
            let len = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(path).map_err(io_err(path))?;
            *counter += 1;
            stats.bytes += len;
            Ok(())
        };
        let mut count = (0, 0, 0);
        for (dir, keep) in [("blobs/sha256", 0), ("disks", 1), ("tmp", 2)] {
            let dir = self.root.join(dir);
            for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = e.map_err(io_err(&dir))?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let stem = name.split('.').next().unwrap_or_default();
                let (keep_it, counter) = match keep {
                    0 => (blobs.contains(&*name), &mut count.0),
                    1 => (ids.contains(stem), &mut count.1),
                    _ => (false, &mut count.2),
                };
                if !keep_it {
                    if keep == 1 && name.ends_with(".lock") {
                        // A build lock: not a disk, not counted.
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if path.is_dir() {
                        fs::remove_dir_all(&path).map_err(io_err(&path))?;
                        *counter += 1;
                    } else {
                        remove(&path, counter)?;
                    }
                }
            }
        }
        stats.blobs = count.0;
        stats.disks = count.1;
        stats.temp_files = count.2;
        Ok(stats)
    }
}

/// Renames a finished temp file into place after fsyncing it, then fsyncs the directory.
fn persist(tmp: NamedTempFile, dest: &Path) -> Result<(), StoreError> {
    tmp.as_file().sync_all().map_err(io_err(dest))?;
    tmp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    if let Some(dir) = dest.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

fn read_limited(path: &Path, d: &Digest, what: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StoreError::MissingBlob(d.clone()),
        _ => io_err(path)(e),
    })?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    if data.len() as u64 > limit {
        return Err(StoreError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    Ok(data)
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    d: &Digest,
    what: &str,
    limit: u64,
) -> Result<T, StoreError> {
    let data = read_limited(path, d, what, limit)?;
    serde_json::from_slice(&data).map_err(|source| StoreError::Malformed {
        what: what.to_string(),
        source,
    })
}

fn read_config(path: &Path, d: &Digest, limit: u64) -> Result<ImageConfiguration, StoreError> {
    let data = read_limited(path, d, "image config", limit)?;
    crate::config::parse(&data).map_err(|source| StoreError::Malformed {
        what: "image config".into(),
        source,
    })
}
