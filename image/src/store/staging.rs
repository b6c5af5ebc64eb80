//! Staging an import: verified blobs wait in `tmp/` until every image was accepted, then
//! they are renamed into place, records last. A disk is built (in `tmp/`) and moved to
//! `disks/` as soon as its image is prepared: a disk without a record is harmless (it
//! is keyed by the image digest, and `prune` removes it if no record ever comes), and
//! `tmp/` never holds the disks of a whole multi-image archive at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use tempfile::NamedTempFile;

use super::{io_err, persist, ImageRecord, Store, StoreError, StoreLock};
use crate::digest::Digest;
use crate::disk;

/// An import in progress: blobs verified into `tmp/`, committed all at once.
pub struct Staging<'s> {
    store: &'s Store,
    lock: StoreLock,
    blobs: BTreeMap<Digest, NamedTempFile>,
    records: Vec<ImageRecord>,
}

impl<'s> Staging<'s> {
    pub(super) fn new(store: &'s Store) -> Result<Staging<'s>, StoreError> {
        // Leftovers of killed imports go first, when no one else is using the store.
        store.sweep_tmp()?;
        Ok(Staging {
            lock: store.lock_shared()?,
            store,
            blobs: BTreeMap::new(),
            records: Vec::new(),
        })
    }

    /// The store this stages into.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Whether the blob is already in the store or staged.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blobs.contains_key(d) || self.store.blob_path(d).exists()
    }

    /// Where a staged or stored blob can be read.
    pub fn blob_path(&self, d: &Digest) -> Option<PathBuf> {
        if let Some(t) = self.blobs.get(d) {
            return Some(t.path().to_path_buf());
        }
        let p = self.store.blob_path(d);
        p.exists().then_some(p)
    }

    /// Streams `r` into a staged blob, verifying `expected` (digest and size) when given,
    /// refusing more than `limit` bytes. Returns the digest and size.
    pub fn add_blob(
        &mut self,
        r: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        limit: u64,
        what: &str,
    ) -> Result<(Digest, u64), StoreError> {
        let (digest, size, tmp) =
            self.store
                .write_temp_blob(r, expected, expected_size, limit, what)?;
        self.adopt(digest.clone(), tmp);
        Ok((digest, size))
    }

    /// Adds a blob verified by [`Store::write_temp_blob`].
    pub fn adopt(&mut self, digest: Digest, tmp: NamedTempFile) {
        if !self.has_blob(&digest) {
            self.blobs.insert(digest, tmp);
        }
    }

    /// Stages a small blob held in memory.
    pub fn add_bytes(
        &mut self,
        data: &[u8],
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Digest, StoreError> {
        let limit = self.store.limits.max_json_bytes.max(data.len() as u64);
        let (d, _) = self.add_blob(data, expected, None, limit, what)?;
        Ok(d)
    }

    fn check_blobs(&self, records: &[ImageRecord]) -> Result<(), StoreError> {
        for rec in records {
            for d in rec.blobs() {
                if !self.has_blob(d) {
                    return Err(StoreError::MissingBlob(d.clone()));
                }
            }
        }
        Ok(())
    }

    /// Checks one image (all `records` name the same image ID) without building its
    /// disk: every blob present, every layer accepted by the merge (pass 1 only). Used
    /// on every image of a multi-image archive before the first disk is built.
    pub fn validate(&self, records: &[ImageRecord]) -> Result<(), StoreError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        self.check_blobs(records)?;
        if !self.store.disk_path(&first.id).exists() {
            let layers = self.store.layer_inputs(first, &|d| self.blob_path(d))?;
            crate::merge::index(&layers, &self.store.limits)
                .map_err(|e| StoreError::Disk(e.into()))?;
        }
        Ok(())
    }

    /// Validates one image (all `records` name the same image ID) by building its disk
    /// from the staged blobs (the build refuses the image before writing anything) and
    /// moves the disk into `disks/`; the records wait for [`Self::commit`].
    pub fn prepare(&mut self, records: &[ImageRecord]) -> Result<(), StoreError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        self.check_blobs(records)?;
        let dest = self.store.disk_path(&first.id);
        if !dest.exists() {
            let layers = self.store.layer_inputs(first, &|d| self.blob_path(d))?;
            let tmp = self.store.temp_file()?;
            disk::build_squashfs(
                &layers,
                &self.store.limits,
                self.store.compressor,
                tmp.path(),
            )?;
            persist(tmp, &dest)?;
        }
        self.records.extend(records.iter().cloned());
        Ok(())
    }

    /// Moves the staged blobs into the store, then writes the prepared records.
    pub fn commit(mut self) -> Result<(), StoreError> {
        for (d, tmp) in std::mem::take(&mut self.blobs) {
            persist(tmp, &self.store.blob_path(&d))?;
        }
        for rec in &self.records {
            let mut tmp = self.store.temp_file()?;
            let json = serde_json::to_vec_pretty(rec).expect("records serialise");
            let path = self.store.record_path(&rec.reference);
            tmp.write_all(&json).map_err(io_err(&path))?;
            persist(tmp, &path)?;
        }
        drop(self.lock);
        Ok(())
    }
}
