//! `hyperxl save`: stored images out as one OCI image layout tar, which `hyperxl load`,
//! `skopeo` (`oci-archive:`) and `docker load` (25+) read.
//!
//! Images that came with a manifest are written with that exact manifest, so digests are
//! kept; images loaded from a `docker save` archive get an OCI manifest made from their
//! record (uncompressed layers).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::Digest;
use crate::store::{ImageRecord, Store, StoreError};

/// Why a save failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Writing the archive failed.
    #[error("{path}")]
    Io {
        /// The archive.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading the store failed (missing blob...).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes `images` to `out` (a tar file, replaced atomically).
pub fn save(store: &Store, images: &[ImageRecord], out: &Path) -> Result<(), SaveError> {
    let ioe = |source| SaveError::Io {
        path: out.to_path_buf(),
        source,
    };
    let _lock = store.lock_shared()?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(ioe)?;
    let mut tar = tar::Builder::new(io::BufWriter::new(tmp.reopen().map_err(ioe)?));
    let mut written = std::collections::HashSet::new();
    let mut manifests = Vec::new();
    add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(ioe)?;
    for rec in images {
        let (mdigest, mbytes) = manifest_of(store, rec)?;
        let blobs = std::iter::once(&rec.id).chain(rec.layers.iter().map(|l| &l.digest));
        for d in blobs {
            if written.insert(d.clone()) {
                let path = store.blob_path(d);
                let mut f = File::open(&path).map_err(|_| StoreError::MissingBlob(d.clone()))?;
                let mut h = tar::Header::new_gnu();
                h.set_size(f.metadata().map_err(ioe)?.len());
                h.set_mode(0o644);
                tar.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f)
                    .map_err(ioe)?;
            }
        }
        if written.insert(mdigest.clone()) {
            add_bytes(
                &mut tar,
                &format!("blobs/sha256/{}", mdigest.hex()),
                &mbytes,
            )
            .map_err(ioe)?;
        }
        manifests.push(json!({
            "mediaType": media_type_of(&mbytes),
            "digest": mdigest.to_string(),
            "size": mbytes.len(),
            "annotations": {
                "io.containerd.image.name": rec.reference.to_string(),
                "org.opencontainers.image.ref.name": rec.reference.tag().unwrap_or("latest"),
            },
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    add_bytes(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).expect("serialises"),
    )
    .map_err(ioe)?;
    let mut w = tar.into_inner().map_err(ioe)?;
    w.flush().map_err(ioe)?;
    w.into_inner()
        .map_err(|e| ioe(e.into_error()))?
        .sync_all()
        .map_err(ioe)?;
    tmp.persist(out).map_err(|e| ioe(e.error))?;
    Ok(())
}

fn add_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, name, data)
}

fn media_type_of(manifest: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into())
}

/// The stored manifest, or one made from the record.
fn manifest_of(store: &Store, rec: &ImageRecord) -> Result<(Digest, Vec<u8>), StoreError> {
    if let Some(d) = &rec.manifest {
        let path = store.blob_path(d);
        let bytes = std::fs::read(&path).map_err(|_| StoreError::MissingBlob(d.clone()))?;
        return Ok((d.clone(), bytes));
    }
    let config_size = std::fs::metadata(store.blob_path(&rec.id))
        .map_err(|_| StoreError::MissingBlob(rec.id.clone()))?
        .len();
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": rec.id.to_string(), "size": config_size},
        "layers": rec.layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    }))
    .expect("serialises");
    Ok((Digest::of_bytes(&bytes), bytes))
}
