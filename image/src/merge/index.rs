//! Pass 1: read every layer's tar stream once and build the final tree in memory.
//!
//! The tree maps normalised paths to nodes (metadata plus, for regular files, where the
//! data lives: layer and entry index). Layers are applied in order with overlay semantics:
//! `.wh.NAME` removes NAME (and below) from lower layers, `.wh..wh..opq` empties a
//! directory of lower-layer content, a non-directory replaces a directory with all its
//! content, a directory over a directory only updates metadata. While reading, every
//! layer's uncompressed bytes are hashed and checked against the config's `diff_ids`.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::rc::Rc;

use tar::EntryType;

use super::path::{self, PathProblem};
use super::{LayerInput, MergeError};
use crate::digest::HashingReader;
use crate::layer::{self, Limited};
use crate::limits::{DevicePolicy, Limits};
use crate::targuard::{Guard, HeaderError};

/// Where a regular file's data is: the layer and the entry's index in its tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    /// Layer index (0 = lowest).
    pub layer: usize,
    /// Entry index within that layer's stream.
    pub entry: u64,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory; `implicit` when no layer had an entry for it (only children).
    Dir {
        /// Created only because a child needed it.
        implicit: bool,
    },
    /// A regular file; nodes sharing a `source` are hard links of one another.
    File {
        /// Where the data is.
        source: Source,
        /// Its size.
        size: u64,
    },
    /// A symbolic link.
    Symlink(Vec<u8>),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One node of the final tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time (seconds).
    pub mtime: u64,
    /// Extended attributes (`user.*` and `security.*` only), name -> value.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The layer that wrote it.
    pub layer: usize,
}

/// The final tree plus the counts the emitter needs.
#[derive(Debug, Default)]
pub struct Tree {
    /// Normalised path -> node. Byte order puts a directory before its contents.
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Entries read across all layers.
    pub entries: u64,
    /// Uncompressed bytes read across all layers.
    pub bytes: u64,
    /// Estimated memory held by `nodes` (see [`Limits::max_tree_bytes`]).
    pub memory: u64,
}

/// What one node costs besides its path and variable data: the map's slot and node
/// allocations, the key's and the node's own allocations, allocator overhead.
const NODE_OVERHEAD: u64 = 160;
/// What one extended attribute costs besides its name and value.
const XATTR_OVERHEAD: u64 = 48;
/// What one entry costs in a layer's duplicate check (a 128-bit keyed hash in a set).
const SEEN_COST: u64 = 32;

fn cost(path: &[u8], node: &Node) -> u64 {
    let target = match &node.kind {
        Kind::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    let xattrs: u64 = node
        .xattrs
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64 + XATTR_OVERHEAD)
        .sum();
    NODE_OVERHEAD + path.len() as u64 + target + xattrs
}

/// Inserts or replaces a node, keeping `memory` up to date.
fn put(tree: &mut Tree, path: Vec<u8>, node: Node) {
    let c = cost(&path, &node);
    if let Some(old) = tree.nodes.get(&path) {
        tree.memory -= cost(&path, old);
    }
    tree.nodes.insert(path, node);
    tree.memory += c;
}

/// Removes a node, keeping `memory` up to date.
fn take(tree: &mut Tree, path: &[u8]) {
    if let Some(old) = tree.nodes.remove(path) {
        tree.memory -= cost(path, &old);
    }
}

/// The paths one layer has written, as 128-bit keyed hashes: 16 bytes an entry instead
/// of a copy of every path. The keys are random per process, so an image cannot be
/// built to collide.
struct Seen {
    keys: (RandomState, RandomState),
    set: HashSet<(u64, u64)>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            keys: (RandomState::new(), RandomState::new()),
            set: HashSet::new(),
        }
    }

    /// Records `path`; false if it was already there.
    fn insert(&mut self, path: &[u8]) -> bool {
        let h = (self.keys.0.hash_one(path), self.keys.1.hash_one(path));
        self.set.insert(h)
    }

    fn memory(&self) -> u64 {
        self.set.len() as u64 * SEEN_COST
    }
}

const OPAQUE: &[u8] = b".wh..wh..opq";
/// Most extended attributes on one entry, and most bytes of their names and values.
const MAX_XATTRS: usize = 64;
const MAX_XATTR_BYTES: usize = 64 << 10;
const WHITEOUT: &[u8] = b".wh.";

/// Reads all layers and returns the final tree.
pub fn build(layers: &[LayerInput], limits: &Limits) -> Result<Tree, MergeError> {
    if layers.len() > limits.max_layers {
        return Err(MergeError::TooManyLayers {
            count: layers.len(),
            limit: limits.max_layers,
        });
    }
    let mut tree = Tree::default();
    for (i, input) in layers.iter().enumerate() {
        read_layer(&mut tree, i, input, limits)?;
    }
    Ok(tree)
}

fn read_layer(
    tree: &mut Tree,
    layer: usize,
    input: &LayerInput,
    limits: &Limits,
) -> Result<(), MergeError> {
    let io_err = |source| MergeError::Io { layer, source };
    let (raw, _) = layer::open(&input.blob).map_err(io_err)?;
    let hit = Rc::new(Cell::new(false));
    let budget = limits
        .max_layer_bytes
        .min(limits.max_total_bytes.saturating_sub(tree.bytes));
    let mut hashed = HashingReader::new(Limited::new(raw, budget, hit.clone()));
    let result = apply_entries(tree, layer, &mut hashed, limits);
    let limit_err = || {
        if budget < limits.max_layer_bytes {
            MergeError::TotalTooLarge {
                limit: limits.max_total_bytes,
            }
        } else {
            MergeError::LayerTooLarge {
                layer,
                limit: limits.max_layer_bytes,
            }
        }
    };
    match result {
        Err(_) if hit.get() => return Err(limit_err()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    // Hash the rest (end-of-archive blocks, padding) so the diff_id covers every byte.
    if let Err(e) = io::copy(&mut hashed, &mut io::sink()) {
        return Err(if hit.get() {
            limit_err()
        } else {
            MergeError::Tar { layer, source: e }
        });
    }
    let (actual, count) = hashed.finish();
    tree.bytes += count;
    if actual != input.diff_id {
        return Err(MergeError::DiffIdMismatch {
            layer,
            expected: input.diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// A name from the layer, made safe for an error message.
fn lossy(p: &[u8]) -> String {
    crate::text::sanitise_bytes(p)
}

fn apply_entries<R: Read>(
    tree: &mut Tree,
    layer: usize,
    stream: R,
    limits: &Limits,
) -> Result<(), MergeError> {
    let tar_err = |source| tar_error(layer, source);
    let mut archive = tar::Archive::new(Guard::new(stream, limits.records()));
    let mut seen = Seen::new();
    for (index, entry) in archive.entries().map_err(tar_err)?.enumerate() {
        let mut entry = entry.map_err(tar_err)?;
        tree.entries += 1;
        if tree.entries > limits.max_entries {
            return Err(MergeError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        // Every entry adds at most one path's worth of nodes (its own and implicit
        // parents), so checking here bounds the tree to the limit plus one entry.
        if tree.memory + seen.memory() > limits.max_tree_bytes {
            return Err(MergeError::TreeTooLarge {
                limit: limits.max_tree_bytes,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let path = path::normalise(&raw, limits.max_path_len).map_err(|p| match p {
            PathProblem::Absolute => MergeError::AbsolutePath {
                layer,
                path: lossy(&raw),
            },
            PathProblem::Traversal => MergeError::PathTraversal {
                layer,
                path: lossy(&raw),
            },
            PathProblem::TooLong => MergeError::PathTooLong {
                layer,
                path: lossy(&raw[..64.min(raw.len())]),
            },
            PathProblem::Nul | PathProblem::ComponentTooLong => invalid_name(layer, &raw, p),
        })?;
        if !seen.insert(&path) {
            return Err(MergeError::DuplicateEntry {
                layer,
                path: lossy(&path),
            });
        }
        let pax = read_pax(&mut entry, layer, &path)?;
        let header = entry.header();
        let etype = header.entry_type();
        if path.is_empty() {
            // The root: its mode is fixed by the disk builder; anything but a directory
            // is hostile.
            if etype.is_dir() {
                continue;
            }
            return Err(MergeError::BadRoot { layer });
        }
        let name = path::base(&path);
        if name.starts_with(WHITEOUT) {
            apply_whiteout(tree, layer, &path, name)?;
            continue;
        }
        check_parents(tree, layer, &path, true)?;
        let meta = |kind| Node {
            kind,
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: pax.uid.or_else(|| header.uid().ok()).unwrap_or(0),
            gid: pax.gid.or_else(|| header.gid().ok()).unwrap_or(0),
            mtime: pax.mtime.or_else(|| header.mtime().ok()).unwrap_or(0),
            xattrs: pax.xattrs.clone(),
            layer,
        };
        let bad = |what: &'static str| MergeError::UnsupportedEntry {
            layer,
            path: lossy(&path),
            kind: what,
        };
        let node = match etype {
            EntryType::Regular | EntryType::Continuous => meta(Kind::File {
                source: Source {
                    layer,
                    entry: index as u64,
                },
                size: entry.size(),
            }),
            EntryType::Directory => meta(Kind::Dir { implicit: false }),
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without target"))?
                    .into_owned();
                if target.is_empty() || target.len() > limits.max_path_len || target.contains(&0) {
                    return Err(MergeError::BadSymlink {
                        layer,
                        path: lossy(&path),
                    });
                }
                if !path::symlink_stays_inside(&path, &target) {
                    return Err(MergeError::SymlinkEscapes {
                        layer,
                        path: lossy(&path),
                        target: lossy(&target),
                    });
                }
                meta(Kind::Symlink(target))
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hard link without target"))?
                    .into_owned();
                let outside = || MergeError::HardlinkOutside {
                    layer,
                    path: lossy(&path),
                    target: lossy(&raw_target),
                };
                let target =
                    path::normalise(&raw_target, limits.max_path_len).map_err(|p| match p {
                        PathProblem::Nul | PathProblem::ComponentTooLong => {
                            invalid_name(layer, &raw_target, p)
                        }
                        _ => outside(),
                    })?;
                if target.is_empty() {
                    return Err(outside());
                }
                match tree.nodes.get(&target) {
                    Some(t) if matches!(t.kind, Kind::File { .. }) => {
                        let mut n = t.clone();
                        n.layer = layer;
                        n
                    }
                    Some(_) => {
                        return Err(MergeError::HardlinkNotFile {
                            layer,
                            path: lossy(&path),
                            target: lossy(&target),
                        })
                    }
                    None => {
                        return Err(MergeError::HardlinkTargetMissing {
                            layer,
                            path: lossy(&path),
                            target: lossy(&target),
                        })
                    }
                }
            }
            EntryType::Char | EntryType::Block => {
                match limits.devices {
                    DevicePolicy::Allow => {}
                    DevicePolicy::Skip => continue,
                    DevicePolicy::Reject => {
                        return Err(MergeError::DeviceNotAllowed {
                            layer,
                            path: lossy(&path),
                        })
                    }
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if etype == EntryType::Char {
                    meta(Kind::Char(major, minor))
                } else {
                    meta(Kind::Block(major, minor))
                }
            }
            EntryType::Fifo => meta(Kind::Fifo),
            EntryType::XGlobalHeader => continue,
            EntryType::GNUSparse => return Err(bad("sparse file")),
            _ => return Err(bad("unknown entry type")),
        };
        insert(tree, path, node);
    }
    Ok(())
}

/// Every ancestor must be a directory (or missing: then it is created implicitly when
/// `create`). A
/// symlink as an ancestor would make the entry land wherever the link points: refused.
fn check_parents(
    tree: &mut Tree,
    layer: usize,
    path: &[u8],
    create: bool,
) -> Result<(), MergeError> {
    for anc in path::ancestors(path) {
        match tree.nodes.get(anc).map(|n| &n.kind) {
            Some(Kind::Dir { .. }) => {}
            Some(Kind::Symlink(_)) => {
                return Err(MergeError::WriteThroughSymlink {
                    layer,
                    path: lossy(path),
                    symlink: lossy(anc),
                })
            }
            Some(_) => {
                return Err(MergeError::NotADirectory {
                    layer,
                    path: lossy(path),
                    parent: lossy(anc),
                })
            }
            None if !create => {}
            None => {
                put(
                    tree,
                    anc.to_vec(),
                    Node {
                        kind: Kind::Dir { implicit: true },
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: 0,
                        xattrs: Vec::new(),
                        layer,
                    },
                );
            }
        }
    }
    Ok(())
}

fn apply_whiteout(
    tree: &mut Tree,
    layer: usize,
    path: &[u8],
    name: &[u8],
) -> Result<(), MergeError> {
    let dir = path::parent(path);
    // A whiteout must not reach through a symlink either, but creates no directories.
    check_parents(tree, layer, path, false)?;
    if name == OPAQUE {
        remove_below(tree, dir, layer);
        return Ok(());
    }
    let target = &name[WHITEOUT.len()..];
    if target.is_empty() || target == b"." || target == b".." {
        return Err(MergeError::BadWhiteout {
            layer,
            path: lossy(path),
        });
    }
    if target.starts_with(WHITEOUT) {
        // Other aufs metadata (`.wh..wh.plnk` and the like): not content, dropped.
        return Ok(());
    }
    let victim = path::join(dir, target);
    if tree.nodes.get(&victim).is_some_and(|n| n.layer < layer) {
        take(tree, &victim);
        remove_below(tree, &victim, layer);
    }
    Ok(())
}

/// Removes everything below `dir` that a lower layer wrote.
fn remove_below(tree: &mut Tree, dir: &[u8], layer: usize) {
    let mut lo = dir.to_vec();
    if !lo.is_empty() {
        lo.push(b'/');
    }
    let doomed: Vec<Vec<u8>> = tree
        .nodes
        .range(lo.clone()..)
        .take_while(|(k, _)| k.starts_with(&lo))
        .filter(|(_, n)| n.layer < layer)
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        take(tree, &k);
    }
}

fn insert(tree: &mut Tree, path: Vec<u8>, node: Node) {
    let is_dir = matches!(node.kind, Kind::Dir { .. });
    match tree.nodes.get(&path) {
        // A non-directory over a directory replaces the whole subtree below it.
        Some(old) if matches!(old.kind, Kind::Dir { .. }) && !is_dir => {
            remove_below(tree, &path, usize::MAX);
        }
        _ => {}
    }
    put(tree, path, node);
}

fn invalid_name(layer: usize, raw: &[u8], p: PathProblem) -> MergeError {
    MergeError::InvalidName {
        layer,
        path: lossy(&raw[..raw.len().min(300)]),
        problem: match p {
            PathProblem::Nul => "NUL byte in name",
            _ => "a component is longer than 255 bytes",
        },
    }
}

/// A tar parser error, or the guard's refusal that caused it.
fn tar_error(layer: usize, source: io::Error) -> MergeError {
    match HeaderError::from_io(&source) {
        Some(HeaderError::Sparse { name }) => MergeError::UnsupportedEntry {
            layer,
            path: name.clone(),
            kind: "sparse file",
        },
        Some(h) => MergeError::Header {
            layer,
            source: h.clone(),
        },
        None => MergeError::Tar { layer, source },
    }
}

/// What PAX records of one entry can override or add.
#[derive(Default)]
struct Pax {
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<u64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Reads `uid`, `gid`, `mtime` and `SCHILY.xattr.*` records. Only `user.*` and
/// `security.*` attributes are kept (they mean something inside the guest: file
/// capabilities, SELinux labels); `trusted.*` and the rest are dropped.
fn read_pax<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    layer: usize,
    path: &[u8],
) -> Result<Pax, MergeError> {
    let mut pax = Pax::default();
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|source| MergeError::Tar { layer, source })?
    else {
        return Ok(pax);
    };
    let mut bytes = 0;
    for ext in exts {
        let ext = ext.map_err(|source| MergeError::Tar { layer, source })?;
        let Ok(key) = ext.key() else { continue };
        if key.starts_with("GNU.sparse.") {
            // PAX-format sparse files: `tar` would hand us the sparse map as data.
            return Err(MergeError::UnsupportedEntry {
                layer,
                path: lossy(path),
                kind: "sparse file",
            });
        }
        let number = || {
            ext.value()
                .ok()
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        match key {
            "uid" => pax.uid = number(),
            "gid" => pax.gid = number(),
            "mtime" => pax.mtime = number(),
            _ => {
                let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                    continue;
                };
                if !(name.starts_with("user.") || name.starts_with("security."))
                    || name.contains('\0')
                {
                    continue;
                }
                bytes += name.len() + ext.value_bytes().len();
                if pax.xattrs.len() >= MAX_XATTRS || bytes > MAX_XATTR_BYTES {
                    return Err(MergeError::TooManyXattrs {
                        layer,
                        path: lossy(path),
                    });
                }
                pax.xattrs
                    .push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(pax)
}
