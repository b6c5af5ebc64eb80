//! `hyperxl load`: `docker save` archives and OCI image layouts (directory or tar, plain
//! or gzip-compressed).
//!
//! An archive file is read in passes: the first keeps small JSON members in memory, the
//! next ones stream only the members the manifests reference into staged files in the
//! store's `tmp/` (never unpacked as a tree; an unreferenced member is never written, and
//! free space is checked before each one). A pipe, which cannot be read twice, is spooled
//! in one pass. Then the manifests are resolved, each blob is verified
//! against its digest (OCI: the descriptor; `docker save`: the config file name and the
//! config's `diff_ids`), the disk is built from the staged blobs, and only then is
//! anything committed.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use tempfile::NamedTempFile;

use crate::digest::{Digest, DigestError};
use crate::layer::Limited;
use crate::limits::Limits;
use crate::reference::{Reference, ReferenceError};
use crate::store::{ImageRecord, LayerRecord, Staging, Store, StoreError};
use crate::targuard::{Guard, HeaderError};
use crate::text::sanitise;

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the input failed.
    #[error("{path}")]
    Io {
        /// The input.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Neither `manifest.json` (docker save) nor `index.json` + `oci-layout` (OCI).
    #[error("{0}: not a docker-save archive or an OCI image layout")]
    UnknownFormat(PathBuf),
    /// A member the manifest names is not in the archive.
    #[error("archive member {0:?} is missing")]
    MissingMember(String),
    /// A JSON document that does not parse.
    #[error("malformed {what}")]
    Malformed {
        /// What it was.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A digest in a descriptor or file name that is not valid.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A tag that is not a valid reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// An image without a usable name and no `-t` given.
    #[error("image {0} has no name; give one with -t NAME")]
    NoName(Digest),
    /// The archive holds no image.
    #[error("archive holds no image")]
    Empty,
    /// An index nested deeper than allowed.
    #[error("image index nested too deep")]
    IndexTooDeep,
    /// A member path that escapes the layout directory.
    #[error("member {0:?} escapes the image layout")]
    BadMember(String),
    /// Verifying or committing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A tar metadata record of the archive refused before it was read.
    #[error("{path}")]
    Header {
        /// The input.
        path: PathBuf,
        /// What was refused.
        source: HeaderError,
    },
    /// The (decompressed) archive is larger than any image it may hold.
    #[error("{path}: archive exceeds the limit of {limit} bytes (raise with --max-image-size)")]
    ArchiveTooLarge {
        /// The input.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
}

/// What was loaded: one line per record.
pub type Loaded = Vec<ImageRecord>;

/// Loads every image in `input` (file or directory) into `store`; `tag` names images
/// that carry no name (or renames the only image).
pub fn load(store: &Store, input: &Path, tag: Option<&Reference>) -> Result<Loaded, LoadError> {
    let ioe = |source: io::Error| match HeaderError::from_io(&source) {
        Some(h) => LoadError::Header {
            path: input.to_path_buf(),
            source: h.clone(),
        },
        None => LoadError::Io {
            path: input.to_path_buf(),
            source,
        },
    };
    let mut staging = store.stage()?;
    let members = if input.is_dir() {
        Members::Dir(input.to_path_buf())
    } else {
        spool_archive(&staging, input).map_err(|e| match e {
            SpoolError::Io(source) => ioe(source),
            SpoolError::Store(s) => LoadError::Store(s),
            SpoolError::TooLarge(limit) => LoadError::ArchiveTooLarge {
                path: input.to_path_buf(),
                limit,
            },
        })?
    };
    let images = if members.exists("oci-layout") && members.exists("index.json") {
        oci_images(&members, &mut staging, tag)?
    } else if members.exists("manifest.json") {
        docker_images(&members, &mut staging, tag)?
    } else {
        return Err(LoadError::UnknownFormat(input.to_path_buf()));
    };
    if images.is_empty() {
        return Err(LoadError::Empty);
    }
    // Every image is validated before anything is committed; then the disks are built one
    // at a time, each moved out of `tmp/` as soon as it is done.
    let mut groups: Vec<Vec<ImageRecord>> = Vec::new();
    for rec in images {
        match groups.iter_mut().find(|g| g[0].id == rec.id) {
            Some(g) => g.push(rec),
            None => groups.push(vec![rec]),
        }
    }
    if groups.len() > 1 {
        // Refuse any image before the first disk is built.
        for g in &groups {
            staging.validate(g)?;
        }
    }
    for g in &groups {
        staging.prepare(g)?;
    }
    staging.commit()?;
    let out = groups.into_iter().flatten().collect();
    Ok(out)
}

enum Members {
    Dir(PathBuf),
    Archive { files: HashMap<String, Member> },
}

enum SpoolError {
    Io(io::Error),
    Store(StoreError),
    TooLarge(u64),
}

/// Most bytes a (decompressed) archive may hold: every layer of an image at the image
/// limit, plus room for JSON documents and tar framing.
fn archive_limit(limits: &Limits) -> u64 {
    limits.max_total_bytes.saturating_add(64 << 20)
}

/// Member names as keys: no leading `./` or `/`, `.` components dropped.
pub(crate) fn member_key(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// An archive member kept for the import: small JSON documents in memory, referenced
/// blobs spooled to `tmp/`.
enum Member {
    Bytes(Vec<u8>),
    File(NamedTempFile),
}

/// What one pass over the archive does with a member (its key and size).
enum Keep {
    Skip,
    Memory,
    Spool,
}

/// Most bytes of small members kept in memory by the first pass over an archive.
const MEMORY_CAP: u64 = 64 << 20;
/// Most passes over an archive (references nested through spooled JSON documents).
const MAX_PASSES: usize = MAX_INDEX_DEPTH + 3;

/// Reads a `docker save` or OCI archive. A regular file is read in passes: the first
/// keeps only small (JSON-sized) members in memory, then the manifests are followed to
/// the members they reference, and only those are spooled to `tmp/` (a member nobody
/// references is never written, wherever it sits in the archive). Input that cannot be
/// read twice (a pipe) is spooled whole in one pass. Free space is checked before each
/// spool.
fn spool_archive(staging: &Staging<'_>, input: &Path) -> Result<Members, SpoolError> {
    let mut files = HashMap::new();
    let regular = std::fs::metadata(input).map_err(SpoolError::Io)?.is_file();
    let limits = staging.store().limits().clone();
    if !regular {
        archive_pass(staging, input, &mut files, |_, _, _| Keep::Spool)?;
        return Ok(Members::Archive { files });
    }
    let mut in_memory = 0u64;
    archive_pass(staging, input, &mut files, |key, size, _| {
        let small = size <= limits.max_json_bytes && in_memory + size <= MEMORY_CAP;
        let metadata = key.ends_with(".json")
            || key.starts_with("blobs/")
            || matches!(key, "oci-layout" | "repositories");
        if small && metadata {
            in_memory += size;
            Keep::Memory
        } else {
            Keep::Skip
        }
    })?;
    for _ in 0..MAX_PASSES {
        let wanted = referenced(&files, limits.max_json_bytes);
        let missing: std::collections::HashSet<String> = wanted
            .into_iter()
            .filter(|k| !files.contains_key(k))
            .collect();
        if missing.is_empty() {
            break;
        }
        let before = files.len();
        archive_pass(staging, input, &mut files, |key, _, have| {
            if missing.contains(key) && !have {
                Keep::Spool
            } else {
                Keep::Skip
            }
        })?;
        if files.len() == before {
            // Referenced but absent: reported as a missing member later.
            break;
        }
    }
    Ok(Members::Archive { files })
}

/// Member keys that the archive's manifests reference, as far as the members at hand
/// tell: `manifest.json`'s configs and layers, and every blob reachable from
/// `index.json` through descriptors (`manifests`, `config`, `layers`).
fn referenced(files: &HashMap<String, Member>, max_json: u64) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let doc = |key: &str| -> Option<serde_json::Value> {
        let bytes = match files.get(key)? {
            Member::Bytes(b) => b.clone(),
            Member::File(f) => {
                let mut b = Vec::new();
                f.reopen()
                    .ok()?
                    .take(max_json + 1)
                    .read_to_end(&mut b)
                    .ok()?;
                if b.len() as u64 > max_json {
                    return None;
                }
                b
            }
        };
        serde_json::from_slice(&bytes).ok()
    };
    if let Some(serde_json::Value::Array(entries)) = doc("manifest.json") {
        for e in entries {
            let names = e.get("Config").into_iter().chain(
                e.get("Layers")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten(),
            );
            out.extend(names.filter_map(|n| n.as_str()).map(member_key));
        }
    }
    let mut todo: Vec<serde_json::Value> = doc("index.json").into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = todo.pop() {
        let descriptors = ["manifests", "layers"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(|m| m.as_array()))
            .flatten()
            .chain(v.get("config"));
        for d in descriptors {
            let Some(digest) = d
                .get("digest")
                .and_then(|x| x.as_str())
                .and_then(|x| x.parse::<Digest>().ok())
            else {
                continue;
            };
            let key = format!("blobs/sha256/{}", digest.hex());
            if seen.insert(key.clone()) {
                if let Some(next) = doc(&key) {
                    todo.push(next);
                }
                out.insert(key);
            }
        }
    }
    out
}

/// One pass over the archive; `keep(key, size, already_have)` decides per regular
/// member.
fn archive_pass(
    staging: &Staging<'_>,
    input: &Path,
    files: &mut HashMap<String, Member>,
    mut keep: impl FnMut(&str, u64, bool) -> Keep,
) -> Result<(), SpoolError> {
    let mut r = BufReader::new(File::open(input).map_err(SpoolError::Io)?);
    let gz = r
        .fill_buf()
        .map_err(SpoolError::Io)?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let limits = staging.store().limits();
    let hit = Rc::new(Cell::new(false));
    let limit = archive_limit(limits);
    let stream = Limited::new(stream, limit, hit.clone());
    let mut ar = tar::Archive::new(Guard::new(stream, limits.records()));
    let err = |e| {
        if hit.get() {
            SpoolError::TooLarge(limit)
        } else {
            SpoolError::Io(e)
        }
    };
    for e in ar.entries().map_err(err)? {
        let mut e = e.map_err(err)?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let key = member_key(&String::from_utf8_lossy(&e.path_bytes()));
        let size = e.size();
        match keep(&key, size, files.contains_key(&key)) {
            Keep::Skip => {}
            Keep::Memory => {
                let mut buf = Vec::with_capacity(size as usize);
                e.read_to_end(&mut buf).map_err(err)?;
                files.insert(key, Member::Bytes(buf));
            }
            Keep::Spool => {
                // An opaque staged file, verified against its digest when a manifest
                // uses it.
                staging
                    .store()
                    .check_space(size)
                    .map_err(SpoolError::Store)?;
                let mut tmp = staging.store().temp_file().map_err(SpoolError::Store)?;
                io::copy(&mut e, &mut io::BufWriter::new(tmp.as_file_mut())).map_err(err)?;
                files.insert(key, Member::File(tmp));
            }
        }
    }
    Ok(())
}

impl Members {
    fn exists(&self, name: &str) -> bool {
        match self {
            Members::Dir(d) => d.join(name).is_file(),
            Members::Archive { files, .. } => files.contains_key(name),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read>, LoadError> {
        let key = member_key(name);
        match self {
            Members::Dir(d) => {
                if key.split('/').any(|c| c == "..") || name.starts_with('/') {
                    return Err(LoadError::BadMember(sanitise(name)));
                }
                let path = d.join(&key);
                // A symlink inside the layout must not pull in a file from elsewhere.
                let real = path
                    .canonicalize()
                    .map_err(|_| LoadError::MissingMember(sanitise(name)))?;
                let root = d.canonicalize().map_err(|source| LoadError::Io {
                    path: d.clone(),
                    source,
                })?;
                if !real.starts_with(&root) {
                    return Err(LoadError::BadMember(sanitise(name)));
                }
                let f = File::open(&real).map_err(|source| LoadError::Io { path, source })?;
                Ok(Box::new(f))
            }
            Members::Archive { files, .. } => match files.get(&key) {
                None => Err(LoadError::MissingMember(sanitise(name))),
                Some(Member::Bytes(b)) => Ok(Box::new(io::Cursor::new(b.clone()))),
                Some(Member::File(f)) => {
                    let r = f.reopen().map_err(|source| LoadError::Io {
                        path: f.path().to_path_buf(),
                        source,
                    })?;
                    Ok(Box::new(r))
                }
            },
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<(T, Vec<u8>), LoadError> {
        let mut buf = Vec::new();
        self.open(name)?
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|source| LoadError::Io {
                path: name.into(),
                source,
            })?;
        if buf.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                what: sanitise(name),
                limit,
            }
            .into());
        }
        let v = serde_json::from_slice(&buf).map_err(|source| LoadError::Malformed {
            what: sanitise(name),
            source,
        })?;
        Ok((v, buf))
    }
}

pub(crate) fn platform(config: &ImageConfiguration) -> String {
    format!("{}/{}", config.os(), config.architecture())
}

fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, LoadError> {
    crate::config::parse(bytes).map_err(|source| LoadError::Malformed {
        what: "image config".into(),
        source,
    })
}

const MAX_INDEX_DEPTH: usize = 4;

fn oci_images(
    m: &Members,
    staging: &mut Staging<'_>,
    tag: Option<&Reference>,
) -> Result<Vec<ImageRecord>, LoadError> {
    let limit = staging.store().limits().max_json_bytes;
    let (index, _) = m.read_json::<ImageIndex>("index.json", limit)?;
    let mut out = Vec::new();
    let mut todo: Vec<(oci_spec::image::Descriptor, usize, Option<String>)> = index
        .manifests()
        .iter()
        .map(|d| (d.clone(), 0, None))
        .collect();
    while let Some((desc, depth, inherited)) = todo.pop() {
        let digest: Digest = desc.digest().to_string().parse()?;
        let blob = format!("blobs/sha256/{}", digest.hex());
        let (value, bytes) = m.read_json::<serde_json::Value>(&blob, limit)?;
        let name = descriptor_name(&desc)?.or(inherited);
        if is_index(&desc, &value) {
            if depth >= MAX_INDEX_DEPTH {
                return Err(LoadError::IndexTooDeep);
            }
            staging.add_bytes(&bytes, Some(&digest), "image index")?;
            if let Some(d) = pick_from_index(value, &digest)? {
                todo.push((d, depth + 1, name));
            }
            continue;
        }
        let manifest: ImageManifest =
            serde_json::from_value(value).map_err(|source| LoadError::Malformed {
                what: format!("image manifest {digest}"),
                source,
            })?;
        staging.add_bytes(&bytes, Some(&digest), "image manifest")?;
        let rec = import_manifest(m, staging, &manifest, Some(digest), name, tag)?;
        out.push(rec);
    }
    Ok(out)
}

/// The name a layout's descriptor gives its image: containerd (and `docker save` >= 25)
/// put the full name in `io.containerd.image.name` (checked as a reference); the OCI
/// `ref.name` is often a bare tag.
pub(crate) fn descriptor_name(
    desc: &oci_spec::image::Descriptor,
) -> Result<Option<String>, LoadError> {
    let annotations = desc.annotations().clone().unwrap_or_default();
    Ok(match annotations.get("io.containerd.image.name") {
        Some(n) => Some(n.parse::<Reference>()?.to_string()),
        None => annotations
            .get("org.opencontainers.image.ref.name")
            .cloned(),
    })
}

/// Whether the document a descriptor points at is an index rather than a manifest.
pub(crate) fn is_index(desc: &oci_spec::image::Descriptor, value: &serde_json::Value) -> bool {
    let media = desc.media_type().to_string();
    media.contains("index") || media.contains("manifest.list") || value.get("manifests").is_some()
}

/// The descriptor a nested index (blob `digest`) offers for linux/amd64, or its only
/// one; `None` when it has neither.
pub(crate) fn pick_from_index(
    value: serde_json::Value,
    digest: &Digest,
) -> Result<Option<oci_spec::image::Descriptor>, LoadError> {
    let idx: ImageIndex = serde_json::from_value(value).map_err(|source| LoadError::Malformed {
        what: format!("image index {digest}"),
        source,
    })?;
    // A layout may carry several platforms: take linux/amd64 (or the only one).
    Ok(crate::platform::choose(idx.manifests(), &crate::platform::Platform::default()).cloned())
}

pub(crate) fn image_name(
    name: Option<String>,
    tag: Option<&Reference>,
    id: &Digest,
) -> Result<Reference, LoadError> {
    if let Some(t) = tag {
        return Ok(t.clone());
    }
    match name {
        // A bare tag ("latest") is not a name.
        Some(n) if n.contains('/') || n.contains(':') => Ok(n.parse()?),
        _ => Err(LoadError::NoName(id.clone())),
    }
}

/// Verifies and stages the config and layers of one OCI manifest.
fn import_manifest(
    m: &Members,
    staging: &mut Staging<'_>,
    manifest: &ImageManifest,
    manifest_digest: Option<Digest>,
    name: Option<String>,
    tag: Option<&Reference>,
) -> Result<ImageRecord, LoadError> {
    let limits = staging.store().limits().clone();
    let cdesc = manifest.config();
    let cdigest: Digest = cdesc.digest().to_string().parse()?;
    let (config, cbytes) = m.read_json::<serde_json::Value>(
        &format!("blobs/sha256/{}", cdigest.hex()),
        limits.max_json_bytes,
    )?;
    drop(config);
    staging.add_bytes(&cbytes, Some(&cdigest), "image config")?;
    let config = parse_config(&cbytes)?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let d: Digest = l.digest().to_string().parse()?;
        let r = m.open(&format!("blobs/sha256/{}", d.hex()))?;
        let (_, size) =
            staging.add_blob(r, Some(&d), Some(l.size()), limits.max_blob_bytes, "layer")?;
        layers.push(LayerRecord {
            digest: d,
            size,
            media_type: l.media_type().to_string(),
        });
    }
    Ok(ImageRecord {
        reference: image_name(name, tag, &cdigest)?,
        id: cdigest,
        manifest: manifest_digest,
        layers,
        platform: platform(&config),
        created: config.created().clone(),
        source: "load".into(),
    })
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerSaveEntry {
    pub(crate) config: String,
    #[serde(default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    pub(crate) layers: Vec<String>,
}

/// The digest a `docker save` config member's name announces (`<hex>.json` or
/// `blobs/sha256/<hex>`), if it is one.
pub(crate) fn config_name_digest(config: &str) -> Option<Digest> {
    let stem = member_key(config);
    let stem = stem.rsplit('/').next().unwrap_or_default();
    Digest::from_hex(stem.trim_end_matches(".json")).ok()
}

/// The names one `docker save` entry gives its image (`None`: unnamed, or `-t` given).
pub(crate) fn docker_names(e: &DockerSaveEntry, tag: Option<&Reference>) -> Vec<Option<String>> {
    match (&e.repo_tags, tag) {
        (_, Some(_)) => vec![None],
        (Some(t), None) if !t.is_empty() => t.iter().cloned().map(Some).collect(),
        _ => vec![None],
    }
}

fn docker_images(
    m: &Members,
    staging: &mut Staging<'_>,
    tag: Option<&Reference>,
) -> Result<Vec<ImageRecord>, LoadError> {
    let limits = staging.store().limits().clone();
    let (entries, _) =
        m.read_json::<Vec<DockerSaveEntry>>("manifest.json", limits.max_json_bytes)?;
    let mut out = Vec::new();
    for e in entries {
        let expected = config_name_digest(&e.config);
        let (_, cbytes) = m.read_json::<serde_json::Value>(&e.config, limits.max_json_bytes)?;
        let cdigest = staging.add_bytes(&cbytes, expected.as_ref(), "image config")?;
        let config = parse_config(&cbytes)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let r = m.open(l)?;
            let (d, size) = staging.add_blob(r, None, None, limits.max_blob_bytes, "layer")?;
            layers.push(LayerRecord {
                digest: d,
                size,
                media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            });
        }
        for n in docker_names(&e, tag) {
            out.push(ImageRecord {
                reference: image_name(n, tag, &cdigest)?,
                id: cdigest.clone(),
                manifest: None,
                layers: layers.clone(),
                platform: platform(&config),
                created: config.created().clone(),
                source: "load".into(),
            });
        }
    }
    Ok(out)
}
