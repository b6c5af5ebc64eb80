//! Pass 2: write the final tree as ONE sanitised tar stream.
//!
//! Compressed layers cannot be read at random offsets, so the stream is ordered for
//! reading each layer once, front to back: first every directory, symlink, device and
//! fifo (all held in memory, in path order, so parents come first), then regular files
//! in layer and entry order with their data copied straight from the layer stream, each
//! further path sharing that data following as a hard link. `mksquashfs -tar` applies a
//! directory's metadata whenever its entry comes and links hard links to the first path.
//! Every header is written fresh from the tree (never copied from the layer), so nothing
//! the tree did not validate reaches the disk builder.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

use super::index::{Kind, Node, Source, Tree};
use super::{LayerInput, MergeError};
use crate::layer;

/// Counts of what was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EmitStats {
    /// Entries written.
    pub entries: u64,
    /// File data bytes written.
    pub data_bytes: u64,
}

fn header(node: &Node, etype: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(etype);
    h.set_mode(node.mode);
    h.set_uid(node.uid);
    h.set_gid(node.gid);
    h.set_mtime(node.mtime);
    h.set_size(size);
    h
}

/// Writes the node's extended attributes as a PAX header for the entry that follows.
fn xattrs<W: Write>(tar: &mut tar::Builder<W>, node: &Node) -> Result<(), MergeError> {
    if node.xattrs.is_empty() {
        return Ok(());
    }
    let keys: Vec<(String, &[u8])> = node
        .xattrs
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
        .collect();
    tar.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
        .map_err(|source| MergeError::Output { source })
}

fn p(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Writes the tree to `out` as a tar stream, reading file data from `layers`.
pub fn emit<W: Write>(tree: &Tree, layers: &[LayerInput], out: W) -> Result<EmitStats, MergeError> {
    let mut stats = EmitStats::default();
    let mut tar = tar::Builder::new(out);
    let werr = |source| MergeError::Output { source };
    // Paths per data source, in path order; the first gets the data.
    let mut by_source: HashMap<Source, Vec<&[u8]>> = HashMap::new();
    let mut per_layer = vec![0u64; layers.len()];
    for (path, node) in &tree.nodes {
        let empty: &[u8] = &[];
        if !matches!(node.kind, Kind::File { .. }) {
            xattrs(&mut tar, node)?;
        }
        match &node.kind {
            Kind::Dir { .. } => {
                let mut h = header(node, EntryType::Directory, 0);
                tar.append_data(&mut h, p(path), empty).map_err(werr)?;
            }
            Kind::Symlink(target) => {
                let mut h = header(node, EntryType::Symlink, 0);
                tar.append_link(&mut h, p(path), p(target)).map_err(werr)?;
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                let t = if matches!(node.kind, Kind::Char(..)) {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                let mut h = header(node, t, 0);
                h.set_device_major(*major).map_err(werr)?;
                h.set_device_minor(*minor).map_err(werr)?;
                tar.append_data(&mut h, p(path), empty).map_err(werr)?;
            }
            Kind::Fifo => {
                let mut h = header(node, EntryType::Fifo, 0);
                tar.append_data(&mut h, p(path), empty).map_err(werr)?;
            }
            Kind::File { source, .. } => {
                let paths = by_source.entry(*source).or_default();
                if paths.is_empty() {
                    per_layer[source.layer] += 1;
                }
                paths.push(path);
                continue;
            }
        }
        stats.entries += 1;
    }
    for (i, input) in layers.iter().enumerate() {
        if per_layer[i] == 0 {
            continue;
        }
        copy_files(
            tree,
            i,
            input,
            &by_source,
            per_layer[i],
            &mut tar,
            &mut stats,
        )?;
    }
    tar.finish().map_err(werr)?;
    Ok(stats)
}

fn copy_files<W: Write>(
    tree: &Tree,
    layer: usize,
    input: &LayerInput,
    by_source: &HashMap<Source, Vec<&[u8]>>,
    mut wanted: u64,
    tar: &mut tar::Builder<W>,
    stats: &mut EmitStats,
) -> Result<(), MergeError> {
    let tar_err = |source| MergeError::Tar { layer, source };
    let werr = |source| MergeError::Output { source };
    let (raw, _) = layer::open(&input.blob).map_err(|source| MergeError::Io { layer, source })?;
    let mut archive = tar::Archive::new(raw);
    for (index, entry) in archive.entries().map_err(tar_err)?.enumerate() {
        let entry = entry.map_err(tar_err)?;
        let source = Source {
            layer,
            entry: index as u64,
        };
        let Some(paths) = by_source.get(&source) else {
            continue;
        };
        let first = paths[0];
        let node = &tree.nodes[first];
        let Kind::File { size, .. } = node.kind else {
            unreachable!("by_source holds files only")
        };
        if entry.size() != size {
            // The blob changed under us between the passes.
            return Err(MergeError::Tar {
                layer,
                source: io::Error::other("layer changed between passes"),
            });
        }
        xattrs(tar, node)?;
        let mut h = header(node, EntryType::Regular, size);
        let mut data = entry.take(size);
        tar.append_data(&mut h, p(first), &mut data).map_err(werr)?;
        stats.entries += 1;
        stats.data_bytes += size;
        for link in &paths[1..] {
            let mut h = header(node, EntryType::Link, 0);
            tar.append_link(&mut h, p(link), p(first)).map_err(werr)?;
            stats.entries += 1;
        }
        wanted -= 1;
        if wanted == 0 {
            break;
        }
    }
    if wanted != 0 {
        return Err(MergeError::Tar {
            layer,
            source: io::Error::other("layer changed between passes"),
        });
    }
    Ok(())
}
