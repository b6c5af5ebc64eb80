//! `hyperxl load`: `docker save` archives and OCI image layouts (directory or tar, plain
//! or gzip-compressed).
//!
//! An archive is read once, front to back: small JSON members are kept in memory, every
//! other member is streamed into a staged file in the store's `tmp/` while being hashed
//! (never unpacked as a tree). Then the manifests are resolved, each blob is verified
//! against its digest (OCI: the descriptor; `docker save`: the config file name and the
//! config's `diff_ids`), the disk is built from the staged blobs, and only then is
//! anything committed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use tempfile::NamedTempFile;

use crate::digest::{Digest, DigestError};
use crate::reference::{Reference, ReferenceError};
use crate::store::{ImageRecord, LayerRecord, Staging, Store, StoreError};

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
}

/// What was loaded: one line per record.
pub type Loaded = Vec<ImageRecord>;

/// Loads every image in `input` (file or directory) into `store`; `tag` names images
/// that carry no name (or renames the only image).
pub fn load(store: &Store, input: &Path, tag: Option<&Reference>) -> Result<Loaded, LoadError> {
    let ioe = |source| LoadError::Io {
        path: input.to_path_buf(),
        source,
    };
    let mut staging = store.stage()?;
    let members = if input.is_dir() {
        Members::Dir(input.to_path_buf())
    } else {
        spool_archive(&staging, input).map_err(|e| match e {
            SpoolError::Io(source) => ioe(source),
            SpoolError::Store(s) => LoadError::Store(s),
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
    // Every image is validated (its disk built into staging) before anything is committed.
    let mut groups: Vec<Vec<ImageRecord>> = Vec::new();
    for rec in images {
        match groups.iter_mut().find(|g| g[0].id == rec.id) {
            Some(g) => g.push(rec),
            None => groups.push(vec![rec]),
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
    Archive {
        files: HashMap<String, NamedTempFile>,
    },
}

enum SpoolError {
    Io(io::Error),
    Store(StoreError),
}

/// Member names as keys: no leading `./` or `/`, `.` components dropped.
pub(crate) fn member_key(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn spool_archive(staging: &Staging<'_>, input: &Path) -> Result<Members, SpoolError> {
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
    let mut ar = tar::Archive::new(stream);
    let mut files = HashMap::new();
    for e in ar.entries().map_err(SpoolError::Io)? {
        let mut e = e.map_err(SpoolError::Io)?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let key = member_key(&String::from_utf8_lossy(&e.path_bytes()));
        // Each member becomes an opaque staged file; it is verified against its digest
        // when (and only if) a manifest uses it.
        let mut tmp = staging.store().temp_file().map_err(SpoolError::Store)?;
        io::copy(&mut e, &mut io::BufWriter::new(tmp.as_file_mut())).map_err(SpoolError::Io)?;
        files.insert(key, tmp);
    }
    Ok(Members::Archive { files })
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
                    return Err(LoadError::BadMember(name.to_string()));
                }
                let path = d.join(&key);
                // A symlink inside the layout must not pull in a file from elsewhere.
                let real = path
                    .canonicalize()
                    .map_err(|_| LoadError::MissingMember(name.to_string()))?;
                let root = d.canonicalize().map_err(|source| LoadError::Io {
                    path: d.clone(),
                    source,
                })?;
                if !real.starts_with(&root) {
                    return Err(LoadError::BadMember(name.to_string()));
                }
                let f = File::open(&real).map_err(|source| LoadError::Io { path, source })?;
                Ok(Box::new(f))
            }
            Members::Archive { files, .. } => {
                let f = files
                    .get(&key)
                    .ok_or_else(|| LoadError::MissingMember(name.to_string()))?;
                let f = f.reopen().map_err(|source| LoadError::Io {
                    path: f.path().to_path_buf(),
                    source,
                })?;
                Ok(Box::new(f))
            }
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
                what: name.to_string(),
                limit,
            }
            .into());
        }
        let v = serde_json::from_slice(&buf).map_err(|source| LoadError::Malformed {
            what: name.to_string(),
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
