//! Registry pull over the OCI distribution API with a blocking HTTP client.
//!
//! `ureq` (blocking, rustls) rather than `oci-client`: oci-client brings tokio, reqwest
//! and hyper into a CLI that is otherwise synchronous, and its `pull()` buffers layers in
//! memory; the part of the distribution API a pull needs (manifest GET with content
//! negotiation, blob GET, the bearer-token dance) is a few hundred lines here, streams
//! every blob straight to a staged file while hashing it, and keeps errors typed.
//!
//! Flow: manifest (OCI or Docker v2s2; an index / manifest list is resolved to the wanted
//! platform) -> layer count, declared sizes and free space checked (before any blob
//! request) -> config -> layers, in parallel, each streamed into `tmp/` and verified
//! against its digest and size, retried on transient failures -> the disk is built from
//! the staged blobs -> blobs, disk and record are committed. A pull that dies at any
//! point leaves only files in `tmp/` (removed by `prune`), never a partial blob or record.

use std::io::Read;
use std::sync::{Arc, Mutex};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::auth::{AuthError, AuthFiles};
use crate::digest::Digest;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::backoff;
pub use crate::registry::Registry;
use crate::store::{ImageRecord, LayerRecord, Store, StoreError};

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Could not reach the registry (after retries).
    #[error("{url}: {error}")]
    Http {
        /// The request URL.
        url: String,
        /// The client's error (kept as text in the message: its own source chain
        /// repeats it).
        error: Box<ureq::Error>,
    },
    /// The registry answered with an error status.
    #[error("{url}: registry answered {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body (the registry's error JSON).
        body: String,
    },
    /// 401 even after authenticating.
    #[error("{registry}: authentication required or refused (try `hyperxl login {registry}`)")]
    Unauthorized {
        /// The registry.
        registry: String,
    },
    /// The token endpoint's answer was unusable.
    #[error("{registry}: bad token response: {detail}")]
    Token {
        /// The registry.
        registry: String,
        /// What was wrong.
        detail: String,
    },
    /// Reading credentials failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A manifest that is not valid JSON of the expected shape.
    #[error("malformed {what}")]
    Malformed {
        /// What it was.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A manifest whose bytes do not hash to the digest asked for or announced.
    #[error("manifest content is {actual}, expected {expected}")]
    ManifestDigest {
        /// Expected.
        expected: Digest,
        /// Actual.
        actual: Digest,
    },
    /// A media type we do not handle (schema 1, artifacts).
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedManifest(String),
    /// An index without the wanted platform.
    #[error("no image for platform {wanted} (available: {available})")]
    NoPlatform {
        /// Wanted.
        wanted: String,
        /// Offered.
        available: String,
    },
    /// A digest string in a manifest that is not valid.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    /// Verifying or committing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest lists more layers than allowed (checked before any blob request).
    #[error("image has {count} layers, more than the limit of {limit}")]
    TooManyLayers {
        /// Layers in the manifest.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The manifest's declared sizes add up to more than allowed (checked before any
    /// blob request).
    #[error("image declares {size} bytes of layers, more than the limit of {limit} bytes (raise with --max-image-size)")]
    ImageTooLarge {
        /// Sum of the declared layer sizes.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// What a pull reports as it goes. The library draws nothing itself: the CLI turns
/// these calls into Docker-style per-layer progress on a terminal, and a caller that
/// wants silence passes no observer. Calls for different layers may come from
/// different download threads at once.
pub trait PullObserver: Send + Sync + std::fmt::Debug {
    /// The image's layers, in manifest order: digest, declared size, and whether the
    /// store already holds it (nothing is downloaded for those).
    fn layers(&self, _layers: &[(Digest, u64, bool)]) {}
    /// A layer's download (re)started: its byte count starts again at zero.
    fn layer_started(&self, _layer: &Digest) {}
    /// `n` more bytes of a layer arrived.
    fn layer_bytes(&self, _layer: &Digest, _n: u64) {}
    /// A layer is downloaded and verified against its digest.
    fn layer_done(&self, _layer: &Digest) {}
    /// Every layer is in; the read-only disk is being built from them.
    fn building_disk(&self) {}
    /// The pull ended (with success or not); nothing more will be reported.
    fn finished(&self) {}
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index.
    pub platform: Platform,
    /// Registries that may be contacted over plain HTTP (localhost always may).
    pub insecure: Vec<String>,
    /// Where credentials are.
    pub auth: AuthFiles,
    /// Parallel layer downloads.
    pub parallel: usize,
    /// Attempts per request on transient failures.
    pub attempts: u32,
    /// Told about every step of the download (none: a silent pull).
    pub observer: Option<Arc<dyn PullObserver>>,
}

impl PullOptions {
    /// Defaults for a state dir: linux/amd64, 4 parallel downloads, 4 attempts.
    pub fn new(state_dir: &std::path::Path) -> PullOptions {
        PullOptions {
            platform: Platform::default(),
            insecure: Vec::new(),
            auth: AuthFiles::for_state_dir(state_dir),
            parallel: 4,
            attempts: 4,
            observer: None,
        }
    }
}

pub(crate) fn is_index(media: &str, value: &serde_json::Value) -> bool {
    media.contains("index") || media.contains("manifest.list") || value.get("manifests").is_some()
}

/// The stored record for `r`, pulling it first when the store does not have it (what
/// `hyperxl run` does: a stored image costs one file read, no network).
pub fn pull_if_missing(
    store: &Store,
    r: &Reference,
    opts: &PullOptions,
) -> Result<ImageRecord, PullError> {
    match store.record(r) {
        Ok(rec) => Ok(rec),
        Err(StoreError::NotFound(_)) => pull(store, r, opts),
        Err(e) => Err(e.into()),
    }
}

/// Pulls `r` into `store` and returns its record.
pub fn pull(store: &Store, r: &Reference, opts: &PullOptions) -> Result<ImageRecord, PullError> {
    let result = pull_inner(store, r, opts);
    if let Some(o) = &opts.observer {
        o.finished();
    }
    result
}

fn pull_inner(store: &Store, r: &Reference, opts: &PullOptions) -> Result<ImageRecord, PullError> {
    let observer: &dyn PullObserver = opts.observer.as_deref().unwrap_or(&Silent);
    let reg = Registry::new(r, opts)?;
    let limits = store.limits().clone();
    let mut staging = store.stage()?;
    let (mut bytes, mut media, mut digest) =
        reg.manifest(&r.manifest_reference(), limits.max_json_bytes)?;
    let mut value = parse_document(&bytes)?;
    if is_index(&media, &value) {
        let want = choose_from_index(value, &opts.platform)?;
        (bytes, media, digest) = reg.manifest(&want.to_string(), limits.max_json_bytes)?;
        value = parse_document(&bytes)?;
        if is_index(&media, &value) {
            return Err(PullError::UnsupportedManifest(media));
        }
    }
    let manifest = image_manifest(value, media)?;
    check_declared(&manifest, &staging, store)?;
    staging.add_bytes(&bytes, Some(&digest), "image manifest")?;

    // Config.
    let cdigest: Digest = manifest.config().digest().to_string().parse()?;
    let cbytes = fetch_blob(
        &reg,
        &cdigest,
        Some(manifest.config().size()),
        limits.max_json_bytes,
        store,
    )?;
    let config: ImageConfiguration = {
        let (_, _, tmp) = &cbytes;
        let mut buf = Vec::new();
        std::fs::File::open(tmp.path())
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|source| StoreError::Io {
                path: tmp.path().to_path_buf(),
                source,
            })?;
        crate::config::parse(&buf).map_err(malformed("image config"))?
    };
    let (d, _, tmp) = cbytes;
    staging.adopt(d, tmp);

    // Layers, in parallel.
    let layers = layer_list(&manifest)?;
    let todo: Vec<&(Digest, u64, String)> =
        layers.iter().filter(|l| !staging.has_blob(&l.0)).collect();
    let listed: Vec<(Digest, u64, bool)> = layers
        .iter()
        .map(|l| (l.0.clone(), l.1, staging.has_blob(&l.0)))
        .collect();
    observer.layers(&listed);
    let queue = Mutex::new(todo.into_iter());
    let results = Mutex::new(Vec::new());
    let workers = opts.parallel.clamp(1, 16);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = queue.lock().expect("not poisoned").next();
                let Some((d, size, _)) = next else { break };
                let r = fetch_blob_progress(
                    &reg,
                    d,
                    Some(*size),
                    limits.max_blob_bytes,
                    store,
                    observer,
                );
                let failed = r.is_err();
                results.lock().expect("not poisoned").push(r);
                if failed {
                    break;
                }
            });
        }
    });
    for r in results.into_inner().expect("not poisoned") {
        let (d, _, tmp) = r?;
        staging.adopt(d, tmp);
    }
    let rec = ImageRecord {
        reference: r.clone(),
        id: cdigest,
        manifest: Some(digest),
        layers: layers
            .into_iter()
            .map(|(digest, size, media_type)| LayerRecord {
                digest,
                size,
                media_type,
            })
            .collect(),
        platform: format!("{}/{}", config.os(), config.architecture()),
        created: config.created().clone(),
        source: "pull".into(),
    };
    observer.building_disk();
    staging.prepare(std::slice::from_ref(&rec))?;
    staging.commit()?;
    Ok(rec)
}

/// Refuses, before the first blob request, a manifest whose layer count or declared
/// sizes are beyond the limits, or whose new blobs would not fit on the disk.
fn check_declared(
    manifest: &ImageManifest,
    staging: &crate::store::Staging<'_>,
    store: &Store,
) -> Result<(), PullError> {
    let limits = store.limits();
    let layers = manifest.layers();
    if layers.len() > limits.max_layers {
        return Err(PullError::TooManyLayers {
            count: layers.len(),
            limit: limits.max_layers,
        });
    }
    let mut total = 0u64;
    let mut new = manifest.config().size();
    for l in layers {
        if l.size() > limits.max_blob_bytes {
            return Err(StoreError::TooLarge {
                what: format!("blob {}", crate::text::sanitise(l.digest().as_ref())),
                limit: limits.max_blob_bytes,
            }
            .into());
        }
        total = total.saturating_add(l.size());
        let present = l
            .digest()
            .to_string()
            .parse::<Digest>()
            .is_ok_and(|d| staging.has_blob(&d));
        if !present {
            new = new.saturating_add(l.size());
        }
    }
    // A compressed layer is (nearly) never larger than its uncompressed stream.
    if total > limits.max_total_bytes {
        return Err(PullError::ImageTooLarge {
            size: total,
            limit: limits.max_total_bytes,
        });
    }
    store.check_space(new)?;
    Ok(())
}

fn malformed(what: &str) -> impl FnOnce(serde_json::Error) -> PullError {
    let what = what.to_string();
    move |source| PullError::Malformed { what, source }
}

/// A manifest document as fetched: parsed as JSON, schema 1 refused.
pub(crate) fn parse_document(bytes: &[u8]) -> Result<serde_json::Value, PullError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed("manifest"))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(PullError::UnsupportedManifest("schema 1".into()));
    }
    Ok(value)
}

/// The digest of the manifest an index / manifest list offers for `platform`.
pub(crate) fn choose_from_index(
    value: serde_json::Value,
    platform: &Platform,
) -> Result<Digest, PullError> {
    let index: ImageIndex = serde_json::from_value(value).map_err(malformed("image index"))?;
    let chosen = crate::platform::choose(index.manifests(), platform).ok_or_else(|| {
        PullError::NoPlatform {
            wanted: platform.to_string(),
            available: index
                .manifests()
                .iter()
                .filter_map(|m| m.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect::<Vec<_>>()
                .join(", ")
                .chars()
                .take(200)
                .map(|c| if crate::text::is_unsafe(c) { '?' } else { c })
                .collect(),
        }
    })?;
    Ok(chosen.digest().to_string().parse()?)
}

/// An image manifest (OCI or Docker v2s2) from a parsed document; `media` is the
/// Content-Type, overridden by the document's own `mediaType`.
pub(crate) fn image_manifest(
    value: serde_json::Value,
    mut media: String,
) -> Result<ImageManifest, PullError> {
    // The document's own mediaType is authoritative; some registries send plain
    // `application/json` as the Content-Type.
    if let Some(m) = value.get("mediaType").and_then(|m| m.as_str()) {
        media = m.to_string();
    }
    if !(media.is_empty()
        || media.contains("manifest.v1+json")
        || media.contains("manifest.v2+json"))
    {
        return Err(PullError::UnsupportedManifest(media));
    }
    serde_json::from_value(value).map_err(malformed("image manifest"))
}

/// A manifest's layers: digest, size and media type.
pub(crate) fn layer_list(
    manifest: &ImageManifest,
) -> Result<Vec<(Digest, u64, String)>, PullError> {
    manifest
        .layers()
        .iter()
        .map(|l| {
            Ok((
                l.digest().to_string().parse()?,
                l.size(),
                l.media_type().to_string(),
            ))
        })
        .collect()
}

type Fetched = (Digest, u64, tempfile::NamedTempFile);

fn fetch_blob(
    reg: &Registry,
    d: &Digest,
    size: Option<u64>,
    limit: u64,
    store: &Store,
) -> Result<Fetched, PullError> {
    fetch_blob_progress(reg, d, size, limit, store, &Silent)
}

/// Downloads one blob into a staged file, verified; retried from scratch on transient
/// failures (a short read, a reset connection), never on a digest mismatch.
fn fetch_blob_progress(
    reg: &Registry,
    d: &Digest,
    size: Option<u64>,
    limit: u64,
    store: &Store,
    observer: &dyn PullObserver,
) -> Result<Fetched, PullError> {
    if let Some(n) = size {
        if n > limit {
            return Err(StoreError::TooLarge {
                what: format!("blob {d}"),
                limit,
            }
            .into());
        }
    }
    let url = reg.blob_url(d);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let resp = reg.get(&url, None)?;
        if !resp.status().is_success() {
            return Err(reg.status_error(&url, resp));
        }
        observer.layer_started(d);
        let reader = Counting {
            inner: resp.into_body().into_reader(),
            layer: d,
            observer,
        };
        match store.write_temp_blob(reader, Some(d), size, limit, &format!("blob {d}")) {
            Ok((d, n, tmp)) => {
                observer.layer_done(&d);
                return Ok((d, n, tmp));
            }
            Err(StoreError::Io { .. }) | Err(StoreError::SizeMismatch { .. })
                if attempt < reg.attempts =>
            {
                backoff(attempt)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The observer of a pull nobody watches.
#[derive(Debug)]
struct Silent;

impl PullObserver for Silent {}

/// A blob's body, reporting each read to the observer.
struct Counting<'p, R> {
    inner: R,
    layer: &'p Digest,
    observer: &'p dyn PullObserver,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observer.layer_bytes(self.layer, n as u64);
        Ok(n)
    }
}
