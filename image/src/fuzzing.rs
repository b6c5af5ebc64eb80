//! Entry points for the fuzz targets in `tests/fuzz`: the same code `load` and `pull`
//! run on untrusted layers and JSON, minus the store, the network and `mksquashfs`.
//! Not a stable API. Each returns whether its input was accepted; errors are expected,
//! panics are bugs.

use std::io;

use crate::digest::{Digest, HashingReader};
use crate::layer::{self, Limited};
use crate::limits::Limits;
use crate::merge::{self, LayerInput};
use crate::platform::Platform;
use crate::reference::Reference;

/// Separates layers in one fuzz input (`merge_layers` splits on it).
pub const LAYER_SEPARATOR: &[u8] = b"HXLAYER!";

/// Limits small enough for a fuzzer (a gzip bomb stops at a few MiB, not GiBs).
pub fn limits() -> Limits {
    Limits {
        max_layer_bytes: 8 << 20,
        max_total_bytes: 16 << 20,
        max_entries: 10_000,
        ..Limits::default()
    }
}

/// Splits `data` on [`LAYER_SEPARATOR`] into at most 4 layer blobs (plain tar, gzip or
/// zstd: sniffed as for a real layer), writes them to files in a temp dir, and runs
/// them through the merge as `ensure_disk` does: pass 1 ([`merge::index`]) then pass 2
/// ([`merge::emit`]) into a sink instead of `mksquashfs`. Each layer's `diff_id` is
/// computed from its own uncompressed stream, so inputs reach the tree logic rather
/// than stopping at a digest mismatch.
pub fn merge_layers(data: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = limits();
    let mut layers = Vec::new();
    for (i, blob) in split(data, LAYER_SEPARATOR).into_iter().take(4).enumerate() {
        let path = dir.path().join(format!("layer{i}"));
        std::fs::write(&path, blob).expect("write layer");
        let Ok(diff_id) = uncompressed_digest(&path, limits.max_layer_bytes) else {
            return false;
        };
        layers.push(LayerInput {
            blob: path,
            diff_id,
        });
    }
    let Ok(tree) = merge::index(&layers, &limits) else {
        return false;
    };
    merge::emit(&tree, &layers, io::sink()).is_ok()
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    // The first-byte test keeps libFuzzer's memcmp hook off every window: this runs
    // over every input byte, and the hook made it dominate the profile.
    while let Some(i) = rest
        .windows(sep.len())
        .position(|w| w[0] == sep[0] && w == sep)
    {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

fn uncompressed_digest(path: &std::path::Path, limit: u64) -> io::Result<Digest> {
    let (raw, _) = layer::open(path)?;
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut r = HashingReader::new(Limited::new(raw, limit, hit));
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish().0)
}

/// Parses an image reference and checks that its printed form parses back to the same
/// reference (records store the printed form). Panics if it does not.
pub fn reference(s: &str) -> bool {
    let Ok(r) = s.parse::<Reference>() else {
        return false;
    };
    let printed = r.to_string();
    let again: Reference = printed
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again.to_string(), printed, "{s:?} does not round-trip");
    let _ = (r.familiar(), r.name(), r.manifest_reference(), r.api_host());
    true
}

/// A manifest document from a registry, interpreted as `pull` does with Content-Type
/// `media`: an index resolves to the linux/amd64 manifest's digest; a manifest yields its
/// config digest and layers.
pub fn registry_manifest(bytes: &[u8], media: &str) -> bool {
    use crate::pull::{choose_from_index, image_manifest, is_index, layer_list, parse_document};
    let Ok(value) = parse_document(bytes) else {
        return false;
    };
    if is_index(media, &value) {
        return choose_from_index(value, &Platform::default()).is_ok();
    }
    let Ok(manifest) = image_manifest(value, media.to_string()) else {
        return false;
    };
    manifest
        .config()
        .digest()
        .to_string()
        .parse::<Digest>()
        .is_ok()
        && layer_list(&manifest).is_ok()
}

/// An OCI layout's `index.json` (or a nested index blob), read as `load` does: every
/// descriptor's digest and name, and the platform choice of a nested index.
pub fn layout_index(bytes: &[u8]) -> bool {
    use crate::load::{descriptor_name, is_index, pick_from_index};
    let Ok(index) = serde_json::from_slice::<oci_spec::image::ImageIndex>(bytes) else {
        return false;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    let mut ok = true;
    for desc in index.manifests() {
        let Ok(digest) = desc.digest().to_string().parse::<Digest>() else {
            ok = false;
            continue;
        };
        ok &= descriptor_name(desc).is_ok();
        if is_index(desc, &value) {
            ok &= pick_from_index(value.clone(), &digest).is_ok();
        }
    }
    ok
}

/// A `docker save` archive's `manifest.json`, read as `load` does: config names,
/// layer member names, and image names from `RepoTags`.
pub fn docker_save_manifest(bytes: &[u8]) -> bool {
    use crate::load::{config_name_digest, docker_names, image_name, member_key};
    let Ok(entries) = serde_json::from_slice::<Vec<crate::load::DockerSaveEntry>>(bytes) else {
        return false;
    };
    let mut ok = true;
    for e in &entries {
        let id = config_name_digest(&e.config).unwrap_or_else(|| Digest::of_bytes(b""));
        for l in &e.layers {
            let _ = member_key(l);
        }
        for n in docker_names(e, None) {
            ok &= image_name(n, None, &id).is_ok();
        }
    }
    ok
}

/// An image config, parsed as `load`, `pull` and the store do: the lenient parse, the
/// platform string, and every `rootfs.diff_ids` entry as a digest.
pub fn image_config(bytes: &[u8]) -> bool {
    let Ok(config) = crate::config::parse(bytes) else {
        return false;
    };
    let _ = crate::load::platform(&config);
    let _ = config
        .config()
        .as_ref()
        .map(|c| (c.entrypoint(), c.cmd(), c.env()));
    config
        .rootfs()
        .diff_ids()
        .iter()
        .all(|d| d.parse::<Digest>().is_ok())
}
