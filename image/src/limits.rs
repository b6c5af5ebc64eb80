//! Limits against hostile images. Every limit has a default that fits real images with
//! room to spare and can be raised (the CLI's `--max-*` flags).

use serde::{Deserialize, Serialize};

/// What to do with character/block device nodes in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DevicePolicy {
    /// Keep them: a device node inside the guest's disk names a device of the guest's
    /// own kernel, never one of dom0's, so it is harmless to the host.
    #[default]
    Allow,
    /// Refuse the image.
    Reject,
    /// Leave them out of the disk.
    Skip,
}

/// Size and count limits applied while importing, pulling and merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest blob (compressed layer) accepted from a file or a registry.
    pub max_blob_bytes: u64,
    /// Largest manifest, index or config (they are parsed in memory).
    pub max_json_bytes: u64,
    /// Largest uncompressed size of one layer's tar stream.
    pub max_layer_bytes: u64,
    /// Largest uncompressed size of all layers together.
    pub max_total_bytes: u64,
    /// Most tar entries across all layers.
    pub max_entries: u64,
    /// Most layers in one image.
    pub max_layers: usize,
    /// Longest path (bytes) of an entry or a link target.
    pub max_path_len: usize,
    /// Largest body of a GNU long-name or long-link record. Checked on the raw tar
    /// header, before the record is read (see [`crate::targuard`]).
    pub max_name_record_bytes: u64,
    /// Largest body of a PAX extended header, checked the same way.
    pub max_pax_bytes: u64,
    /// Most memory the merged tree may hold while layers are read: paths, link targets,
    /// extended attributes and a fixed per-entry overhead, plus the per-layer duplicate
    /// check. The tree is the one structure that grows with the image's entry count.
    pub max_tree_bytes: u64,
    /// Device nodes.
    pub devices: DevicePolicy,
}

const GIB: u64 = 1 << 30;

impl Limits {
    /// The tar metadata record limits ([`crate::targuard`]) of these limits.
    pub fn records(&self) -> crate::targuard::RecordLimits {
        crate::targuard::RecordLimits {
            name: self.max_name_record_bytes,
            pax: self.max_pax_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blob_bytes: 8 * GIB,
            max_json_bytes: 4 << 20,
            max_layer_bytes: 16 * GIB,
            max_total_bytes: 32 * GIB,
            max_entries: 2_000_000,
            max_layers: 256,
            max_path_len: 4096,
            max_name_record_bytes: 64 << 10,
            max_pax_bytes: 1 << 20,
            max_tree_bytes: 512 << 20,
            devices: DevicePolicy::Allow,
        }
    }
}
