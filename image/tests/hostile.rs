//! The hostile-image corpus: every case must fail with its specific error, write nothing
//! outside the store, and leave the store exactly as it was.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use hyperxl_image::disk::DiskError;
use hyperxl_image::load::{self, LoadError};
use hyperxl_image::targuard::HeaderError;
use hyperxl_image::{DevicePolicy, Limits, MergeError, Store, StoreError};
use tar::EntryType;

/// Where an escaping entry would land if anything unpacked it.
fn sentinel() -> String {
    format!("/tmp/hyperxl-pwned-{}", std::process::id())
}

fn merge_err(e: &LoadError) -> Option<&MergeError> {
    match e {
        LoadError::Store(StoreError::Disk(DiskError::Merge(m))) => Some(m),
        _ => None,
    }
}

fn store_err(e: &LoadError) -> Option<&StoreError> {
    match e {
        LoadError::Store(s) => Some(s),
        _ => None,
    }
}

/// Loads `files` (an OCI layout written as a directory) and returns the error, after
/// checking the store and the scratch dir are unchanged and no sentinel appeared.
fn refused(files: &BTreeMap<String, Vec<u8>>, limits: Limits) -> LoadError {
    refused_as(files, limits, false)
}

fn refused_as(files: &BTreeMap<String, Vec<u8>>, limits: Limits, as_tar: bool) -> LoadError {
    refused_with(files, limits, as_tar, || {})
}

/// As [`refused_as`], calling `before_load` (e.g. [`limit_memory`]) right before the
/// hostile load, after the store and the input were set up.
fn refused_with(
    files: &BTreeMap<String, Vec<u8>>,
    limits: Limits,
    as_tar: bool,
    before_load: impl FnOnce(),
) -> LoadError {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // A store that already holds an image: it must survive untouched.
    let good = TestImage::new(standard_layers());
    let gdir = tmp.path().join("good");
    write_dir(&gdir, &good.oci_files("good"));
    load::load(&Store::open(&state).unwrap(), &gdir, None).unwrap();
    let store = Store::open(&state).unwrap().with_limits(limits);
    let input = if as_tar {
        let p = tmp.path().join("in.tar");
        write_tar(&p, files);
        p
    } else {
        let p = tmp.path().join("in");
        write_dir(&p, files);
        p
    };
    let before = snapshot(tmp.path());
    before_load();
    let err = load::load(&store, &input, None).expect_err("hostile image was accepted");
    assert_eq!(
        snapshot(tmp.path()),
        before,
        "store or scratch dir changed: {err}"
    );
    assert!(!Path::new(&sentinel()).exists(), "something escaped");
    // The good image is still served from the cache.
    store.ensure_disk(&"good".parse().unwrap()).unwrap();
    err
}

fn layout(layers: Vec<Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    TestImage::new(layers).oci_files("evil")
}

fn one(layer: Vec<u8>) -> BTreeMap<String, Vec<u8>> {
    layout(vec![layer])
}

macro_rules! assert_merge {
    ($files:expr, $limits:expr, $pat:pat) => {{
        let e = refused(&$files, $limits);
        assert!(
            matches!(merge_err(&e), Some($pat)),
            "unexpected error: {e:?}"
        );
        e
    }};
    ($files:expr, $pat:pat) => {
        assert_merge!($files, Limits::default(), $pat)
    };
}

macro_rules! assert_store {
    ($files:expr, $limits:expr, $pat:pat) => {{
        let e = refused(&$files, $limits);
        assert!(
            matches!(store_err(&e), Some($pat)),
            "unexpected error: {e:?}"
        );
        e
    }};
}

#[test]
fn absolute_path() {
    let s = sentinel();
    assert_merge!(
        one(Layer::new().file(&s, b"x").tar()),
        MergeError::AbsolutePath { .. }
    );
}

#[test]
fn dotdot_traversal() {
    let name = format!("../../../../../..{}", sentinel());
    assert_merge!(
        one(Layer::new().file(&name, b"x").tar()),
        MergeError::PathTraversal { .. }
    );
}

#[test]
fn dotdot_in_the_middle() {
    assert_merge!(
        one(Layer::new().dir("a/", 0o755).file("a/../../x", b"x").tar()),
        MergeError::PathTraversal { .. }
    );
}

#[test]
fn write_through_symlink_from_lower_layer() {
    let l1 = Layer::new().symlink("evil", "/tmp").tar();
    let l2 = Layer::new().file("evil/pwned", b"x").tar();
    assert_merge!(layout(vec![l1, l2]), MergeError::WriteThroughSymlink { .. });
}

#[test]
fn write_through_symlink_same_layer() {
    assert_merge!(
        one(Layer::new().symlink("d", "a").dir("d/sub/", 0o755).tar()),
        MergeError::WriteThroughSymlink { .. }
    );
}

#[test]
fn whiteout_through_symlink() {
    let l1 = Layer::new().symlink("etc", "/host-etc").tar();
    let l2 = Layer::new().whiteout("etc", "passwd").tar();
    assert_merge!(layout(vec![l1, l2]), MergeError::WriteThroughSymlink { .. });
}

#[test]
fn symlink_climbing_out() {
    assert_merge!(
        one(Layer::new()
            .dir("a/", 0o755)
            .symlink("a/l", "../../etc/shadow")
            .tar()),
        MergeError::SymlinkEscapes { .. }
    );
}

#[test]
fn absolute_symlink_with_dotdot() {
    assert_merge!(
        one(Layer::new().symlink("l", "/../../etc").tar()),
        MergeError::SymlinkEscapes { .. }
    );
}

#[test]
fn hardlink_outside_relative() {
    assert_merge!(
        one(Layer::new().hardlink("h", "../etc/passwd").tar()),
        MergeError::HardlinkOutside { .. }
    );
}

#[test]
fn hardlink_outside_absolute() {
    assert_merge!(
        one(Layer::new().hardlink("h", "/etc/shadow").tar()),
        MergeError::HardlinkOutside { .. }
    );
}

#[test]
fn hardlink_to_missing_target() {
    assert_merge!(
        one(Layer::new().hardlink("h", "nothing").tar()),
        MergeError::HardlinkTargetMissing { .. }
    );
}

#[test]
fn hardlink_to_directory() {
    assert_merge!(
        one(Layer::new().dir("d/", 0o755).hardlink("h", "d").tar()),
        MergeError::HardlinkNotFile { .. }
    );
}

#[test]
fn hardlink_to_whited_out_file() {
    let l1 = Layer::new().file("f", b"x").tar();
    let l2 = Layer::new().whiteout("", "f").hardlink("h", "f").tar();
    assert_merge!(
        layout(vec![l1, l2]),
        MergeError::HardlinkTargetMissing { .. }
    );
}

#[test]
fn whiteout_of_dotdot() {
    assert_merge!(
        one(Layer::new().dir("a/", 0o755).file("a/.wh...", b"").tar()),
        MergeError::BadWhiteout { .. }
    );
}

#[test]
fn whiteout_of_root() {
    assert_merge!(
        one(Layer::new().file(".wh..", b"").tar()),
        MergeError::BadWhiteout { .. }
    );
}

#[test]
fn whiteout_of_nothing() {
    assert_merge!(
        one(Layer::new().file(".wh.", b"").tar()),
        MergeError::BadWhiteout { .. }
    );
}

#[test]
fn duplicate_entry() {
    assert_merge!(
        one(Layer::new().file("f", b"a").file("./f", b"b").tar()),
        MergeError::DuplicateEntry { .. }
    );
}

#[test]
fn device_node_refused_by_policy() {
    let limits = Limits {
        devices: DevicePolicy::Reject,
        ..Limits::default()
    };
    assert_merge!(
        one(Layer::new().chardev("mem", 1, 1).tar()),
        limits,
        MergeError::DeviceNotAllowed { .. }
    );
}

#[test]
fn entry_below_a_file() {
    assert_merge!(
        one(Layer::new().file("f", b"x").file("f/x", b"y").tar()),
        MergeError::NotADirectory { .. }
    );
}

#[test]
fn root_replaced_by_a_file() {
    assert_merge!(
        one(Layer::new().file("./", b"x").tar()),
        MergeError::BadRoot { .. }
    );
}

#[test]
fn unknown_entry_type() {
    assert_merge!(
        one(Layer::new().entry_type("s", EntryType::new(b'Z')).tar()),
        MergeError::UnsupportedEntry { .. }
    );
}

#[test]
fn decompression_bomb_one_layer() {
    let big = vec![0u8; 8 << 20];
    let layer = Layer::new().file("zeros", &big).tar();
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        ..Limits::default()
    };
    let files = one(layer);
    // 8 MiB of zeros gzip to a few KiB.
    assert!(files.values().all(|b| b.len() < 200 << 10));
    assert_merge!(files, limits, MergeError::LayerTooLarge { .. });
}

#[test]
fn decompression_bomb_across_layers() {
    let l1 = Layer::new().file("a", &vec![0u8; 600 << 10]).tar();
    let l2 = Layer::new().file("b", &vec![0u8; 600 << 10]).tar();
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    assert_merge!(
        layout(vec![l1, l2]),
        limits,
        MergeError::TotalTooLarge { .. }
    );
}

#[test]
fn too_many_entries() {
    let mut l = Layer::new();
    for i in 0..100 {
        l.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_entries: 50,
        ..Limits::default()
    };
    assert_merge!(
        one(l.tar()),
        limits,
        MergeError::TooManyEntries { limit: 50 }
    );
}

#[test]
fn path_too_long() {
    let limits = Limits {
        max_path_len: 20,
        ..Limits::default()
    };
    assert_merge!(
        one(Layer::new().file(&"x".repeat(40), b"").tar()),
        limits,
        MergeError::PathTooLong { .. }
    );
}

#[test]
fn too_many_layers() {
    let layers = (0..5)
        .map(|i| Layer::new().file(&format!("f{i}"), b"").tar())
        .collect();
    let limits = Limits {
        max_layers: 4,
        ..Limits::default()
    };
    assert_merge!(
        layout(layers),
        limits,
        MergeError::TooManyLayers { count: 5, limit: 4 }
    );
}

#[test]
fn garbage_layer() {
    let mut files = one(vec![0x55; 4096]);
    // keep the layout consistent: the garbage is its own diff_id
    files = files.into_iter().collect();
    assert_merge!(files, MergeError::Tar { .. });
}

#[test]
fn diff_id_mismatch() {
    let img = TestImage::new(vec![Layer::new().file("a", b"a").tar()]);
    let mut other = img.clone();
    other.layers = vec![Layer::new().file("a", b"b").tar()];
    // config claims layer "b" but the manifest carries layer "a"
    let config = other.config();
    let blobs = img.layer_blobs();
    let files = custom_layout(&config, &blobs, None);
    assert_merge!(files, MergeError::DiffIdMismatch { .. });
}

/// An OCI layout from raw parts; `manifest` overrides the generated one.
fn custom_layout(
    config: &[u8],
    blobs: &[(Vec<u8>, &str)],
    manifest: Option<Vec<u8>>,
) -> BTreeMap<String, Vec<u8>> {
    let manifest = manifest.unwrap_or_else(|| TestImage::manifest(config, blobs));
    let mut files = BTreeMap::new();
    files.insert(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "evil"}}]});
    files.insert("index.json".into(), serde_json::to_vec(&index).unwrap());
    for b in [config.to_vec(), manifest]
        .into_iter()
        .chain(blobs.iter().map(|b| b.0.clone()))
    {
        files.insert(format!("blobs/sha256/{}", &sha(&b)[7..]), b);
    }
    files
}

fn simple() -> TestImage {
    TestImage::new(vec![Layer::new().file("a", &[7u8; 4096]).tar()])
}

#[test]
fn tampered_layer_blob() {
    let img = simple();
    let mut files = img.oci_files("evil");
    let (blob, _) = &img.layer_blobs()[0];
    let key = format!("blobs/sha256/{}", &sha(blob)[7..]);
    let mut evil = blob.clone();
    let n = evil.len();
    evil[n / 2] ^= 0xff;
    files.insert(key, evil);
    assert_store!(files, Limits::default(), StoreError::DigestMismatch { .. });
}

#[test]
fn truncated_layer_blob() {
    let img = simple();
    let mut files = img.oci_files("evil");
    let (blob, _) = &img.layer_blobs()[0];
    let key = format!("blobs/sha256/{}", &sha(blob)[7..]);
    files.insert(key, blob[..blob.len() / 2].to_vec());
    assert_store!(files, Limits::default(), StoreError::SizeMismatch { .. });
}

#[test]
fn tampered_in_a_tar_archive() {
    let img = simple();
    let mut files = img.oci_files("evil");
    let config = img.config();
    let key = format!("blobs/sha256/{}", &sha(&config)[7..]);
    let evil = String::from_utf8(config)
        .unwrap()
        .replace("\"amd64\"", "\"arm64\"");
    files.insert(key, evil.into_bytes());
    let e = refused_as(&files, Limits::default(), true);
    assert!(
        matches!(store_err(&e), Some(StoreError::DigestMismatch { .. })),
        "{e:?}"
    );
}

#[test]
fn wrong_size_in_descriptor() {
    let img = simple();
    let config = img.config();
    let blobs = img.layer_blobs();
    let mut m: serde_json::Value =
        serde_json::from_slice(&TestImage::manifest(&config, &blobs)).unwrap();
    m["layers"][0]["size"] = serde_json::json!(blobs[0].0.len() + 1);
    let files = custom_layout(&config, &blobs, Some(serde_json::to_vec(&m).unwrap()));
    assert_store!(files, Limits::default(), StoreError::SizeMismatch { .. });
}

#[test]
fn missing_layer_blob() {
    let img = simple();
    let mut files = img.oci_files("evil");
    let (blob, _) = &img.layer_blobs()[0];
    files.remove(&format!("blobs/sha256/{}", &sha(blob)[7..]));
    let e = refused(&files, Limits::default());
    assert!(matches!(e, LoadError::MissingMember(_)), "{e:?}");
}

#[test]
fn malformed_manifest() {
    let img = simple();
    let config = img.config();
    let blobs = img.layer_blobs();
    let files = custom_layout(
        &config,
        &blobs,
        Some(br#"{"schemaVersion": 2, "layers": "nope"}"#.to_vec()),
    );
    let e = refused(&files, Limits::default());
    assert!(matches!(e, LoadError::Malformed { .. }), "{e:?}");
}

#[test]
fn malformed_config() {
    let img = simple();
    let blobs = img.layer_blobs();
    let files = custom_layout(
        br#"{"architecture": "amd64", "os": "linux", "rootfs": 3}"#,
        &blobs,
        None,
    );
    let e = refused(&files, Limits::default());
    assert!(matches!(e, LoadError::Malformed { .. }), "{e:?}");
}

#[test]
fn config_diff_ids_do_not_match_layer_count() {
    let img = simple();
    let mut two = img.clone();
    two.layers.push(Layer::new().file("b", b"b").tar());
    let files = custom_layout(&two.config(), &img.layer_blobs(), None);
    assert_store!(
        files,
        Limits::default(),
        StoreError::LayerCountMismatch {
            diff_ids: 2,
            layers: 1
        }
    );
}

#[test]
fn oversized_json() {
    let limits = Limits {
        max_json_bytes: 100,
        ..Limits::default()
    };
    assert_store!(
        simple().oci_files("evil"),
        limits,
        StoreError::TooLarge { .. }
    );
}

#[test]
fn oversized_blob() {
    let limits = Limits {
        max_blob_bytes: 10,
        ..Limits::default()
    };
    assert_store!(
        simple().oci_files("evil"),
        limits,
        StoreError::TooLarge { .. }
    );
}

#[test]
fn bad_digest_in_manifest() {
    let img = simple();
    let config = img.config();
    let blobs = img.layer_blobs();
    let mut m: serde_json::Value =
        serde_json::from_slice(&TestImage::manifest(&config, &blobs)).unwrap();
    m["layers"][0]["digest"] = serde_json::json!("sha256:../../../../etc/passwd");
    let files = custom_layout(&config, &blobs, Some(serde_json::to_vec(&m).unwrap()));
    let e = refused(&files, Limits::default());
    // oci-spec refuses the descriptor, or our digest parser does
    assert!(
        matches!(e, LoadError::Malformed { .. } | LoadError::Digest(_)),
        "{e:?}"
    );
}

#[test]
fn docker_save_config_name_mismatch() {
    let img = simple();
    let mut files = img.docker_save_files("evil:1");
    let key = files
        .keys()
        .find(|k| k.ends_with(".json") && *k != "manifest.json")
        .unwrap()
        .clone();
    let cfg = files.remove(&key).unwrap();
    let evil = String::from_utf8(cfg)
        .unwrap()
        .replace("/bin/sh", "/bin/xx");
    files.insert(key, evil.into_bytes());
    let e = refused_as(&files, Limits::default(), true);
    assert!(
        matches!(store_err(&e), Some(StoreError::DigestMismatch { .. })),
        "{e:?}"
    );
}

#[test]
fn docker_save_layer_tampered() {
    let img = simple();
    let mut files = img.docker_save_files("evil:1");
    let key = files
        .keys()
        .find(|k| k.ends_with("layer.tar"))
        .unwrap()
        .clone();
    let other = Layer::new().file("a", &[8u8; 4096]).tar();
    files.insert(key, other);
    let e = refused_as(&files, Limits::default(), true);
    assert!(
        matches!(merge_err(&e), Some(MergeError::DiffIdMismatch { .. })),
        "{e:?}"
    );
}

#[test]
fn symlinked_blob_in_layout_dir() {
    let img = simple();
    let files = img.oci_files("evil");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let store = Store::open(&state).unwrap();
    let dir = tmp.path().join("in");
    write_dir(&dir, &files);
    let (blob, _) = &img.layer_blobs()[0];
    let p = dir.join(format!("blobs/sha256/{}", &sha(blob)[7..]));
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &p).unwrap();
    let before = snapshot(&state);
    let e = load::load(&store, &dir, None).unwrap_err();
    assert!(matches!(e, LoadError::BadMember(_)), "{e:?}");
    assert_eq!(snapshot(&state), before);
}

#[test]
fn not_an_image() {
    let mut files = BTreeMap::new();
    files.insert("hello.txt".to_string(), b"hi".to_vec());
    let e = refused(&files, Limits::default());
    assert!(matches!(e, LoadError::UnknownFormat(_)), "{e:?}");
}

#[test]
fn xattr_flood() {
    let names: Vec<String> = (0..100)
        .map(|i| format!("SCHILY.xattr.user.a{i}"))
        .collect();
    let recs: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"v"[..])).collect();
    assert_merge!(
        one(Layer::new().pax(&recs).file("f", b"").tar()),
        MergeError::TooManyXattrs { .. }
    );
}

#[test]
fn blob_longer_than_its_descriptor() {
    let img = simple();
    let config = img.config();
    let blobs = img.layer_blobs();
    let mut m: serde_json::Value =
        serde_json::from_slice(&TestImage::manifest(&config, &blobs)).unwrap();
    m["layers"][0]["size"] = serde_json::json!(10);
    let files = custom_layout(&config, &blobs, Some(serde_json::to_vec(&m).unwrap()));
    let e = refused(&files, Limits::default());
    assert!(
        matches!(
            store_err(&e),
            Some(StoreError::SizeMismatch {
                expected: 10,
                actual: 11,
                ..
            })
        ),
        "{e:?}"
    );
}

/// The error and all its causes, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Terminal escapes, a newline and a bidi override, as an attacker would name a file.
const HOSTILE_TEXT: &str = "\x1b]0;owned\x07\x1b[2J\nx\u{202e}gpj.exe";

fn assert_printable(e: &dyn std::error::Error) {
    let msg = chain(e);
    assert!(
        !msg.chars().any(hyperxl_image::text::is_unsafe),
        "unsanitised error: {msg:?}"
    );
}

#[test]
fn defect13_hostile_member_name_in_error_is_sanitised() {
    let img = simple();
    let mut files = img.docker_save_files("evil:1");
    let name = format!("{HOSTILE_TEXT}.json");
    files.insert(name.clone(), b"not json".to_vec());
    let layers: Vec<String> = files
        .keys()
        .filter(|k| k.ends_with("layer.tar"))
        .cloned()
        .collect();
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec(
            &serde_json::json!([{"Config": name, "RepoTags": ["evil:1"], "Layers": layers}]),
        )
        .unwrap(),
    );
    let e = refused_as(&files, Limits::default(), true);
    assert!(matches!(e, LoadError::Malformed { .. }), "{e:?}");
    assert_printable(&e);
    assert!(e.to_string().contains("?]0;owned??[2J?x?gpj.exe"), "{e}");
}

#[test]
fn defect13_hostile_names_in_merge_errors_are_sanitised() {
    let e = assert_merge!(
        one(Layer::new().hardlink(HOSTILE_TEXT, HOSTILE_TEXT).tar()),
        MergeError::HardlinkTargetMissing { .. }
    );
    assert_printable(&e);
}

/// Address space for the memory cases: far below what the bombs would need.
const MEMORY: u64 = 512 << 20;

/// An OCI layout whose one layer is `blob` as given (already compressed); the config's
/// diff_id is of no matter, the layer is refused before its end.
fn layout_with_blob(blob: Vec<u8>) -> BTreeMap<String, Vec<u8>> {
    let config = TestImage::new(vec![b"unused".to_vec()]).config();
    custom_layout(
        &config,
        &[(blob, "application/vnd.oci.image.layer.v1.tar+gzip")],
        None,
    )
}

/// A metadata record declaring 3 GiB, followed by 1 GiB of real zeros: enough to
/// exhaust the child's address space if anything reads the record into memory.
fn record_bomb(t: EntryType) -> BTreeMap<String, Vec<u8>> {
    let mut blob = gzip(&raw_header(t, "././@LongLink", 3 << 30));
    blob.extend(gzip_zeros_mib(1024));
    assert!(blob.len() < 4 << 20);
    layout_with_blob(blob)
}

fn assert_record_refused(t: EntryType, test: &str, kind: &str) {
    if !in_limited_child(test) {
        return;
    }
    let e = refused_with(&record_bomb(t), Limits::default(), false, || {
        limit_memory(MEMORY)
    });
    match merge_err(&e) {
        Some(MergeError::Header {
            source: HeaderError::TooLarge { kind: k, size, .. },
            ..
        }) => assert_eq!((*k, *size), (kind, 3 << 30)),
        _ => panic!("unexpected error: {e:?}"),
    }
}

#[test]
fn defect2_pax_header_bomb_is_refused_before_read() {
    assert_record_refused(
        EntryType::XHeader,
        "defect2_pax_header_bomb_is_refused_before_read",
        "PAX",
    );
}

#[test]
fn defect2_gnu_long_name_bomb_is_refused_before_read() {
    assert_record_refused(
        EntryType::GNULongName,
        "defect2_gnu_long_name_bomb_is_refused_before_read",
        "GNU long-name",
    );
}

#[test]
fn defect2_gnu_long_link_bomb_is_refused_before_read() {
    assert_record_refused(
        EntryType::GNULongLink,
        "defect2_gnu_long_link_bomb_is_refused_before_read",
        "GNU long-link",
    );
}

#[test]
fn defect2_pax_bomb_in_the_outer_archive_is_refused_before_read() {
    // The same bomb as a member header of the `docker save` archive itself.
    if !in_limited_child("defect2_pax_bomb_in_the_outer_archive_is_refused_before_read") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("state")).unwrap();
    let input = tmp.path().join("in.tar.gz");
    let mut data = gzip(&raw_header(EntryType::XHeader, "././@PaxHeader", 3 << 30));
    data.extend(gzip_zeros_mib(1024));
    std::fs::write(&input, data).unwrap();
    limit_memory(MEMORY);
    let e = load::load(&store, &input, None).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Header {
                source: HeaderError::TooLarge { kind: "PAX", .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn defect2_tree_memory_is_bounded() {
    // Many entries with ~4000-byte names: every name is held in the tree. The tree's
    // budget (here 16 MiB) stops the layer long before memory runs out.
    if !in_limited_child("defect2_tree_memory_is_bounded") {
        return;
    }
    let dir: String = (0..15)
        .map(|i| format!("{i:0>255}"))
        .collect::<Vec<_>>()
        .join("/");
    let mut l = Layer::new();
    for i in 0..8000 {
        l.long(&format!("{dir}/{i:0>150}"), None, b"");
    }
    let limits = Limits {
        max_tree_bytes: 16 << 20,
        ..Limits::default()
    };
    let files = one(l.tar());
    let e = refused_with(&files, limits, false, || limit_memory(MEMORY));
    assert!(
        matches!(
            merge_err(&e),
            Some(MergeError::TreeTooLarge { limit }) if *limit == 16 << 20
        ),
        "{e:?}"
    );
}

#[test]
fn defect2_default_limits_bound_the_tree() {
    let l = Limits::default();
    assert_eq!(l.max_tree_bytes, 512 << 20);
    assert_eq!(l.max_name_record_bytes, 64 << 10);
    assert_eq!(l.max_pax_bytes, 1 << 20);
}

#[test]
fn name_with_nul_is_refused() {
    assert_merge!(
        one(Layer::new().pax(&[("path", b"a\0b")]).file("x", b"").tar()),
        MergeError::InvalidName { .. }
    );
}

#[test]
fn component_longer_than_255_is_refused() {
    let name = format!("d/{}", "x".repeat(256));
    assert_merge!(
        one(Layer::new().long(&name, None, b"x").tar()),
        MergeError::InvalidName { .. }
    );
}

#[test]
fn hardlink_target_with_long_component_is_refused() {
    let target = "y".repeat(300);
    assert_merge!(
        one(Layer::new()
            .file("f", b"x")
            .pax(&[("linkpath", target.as_bytes())])
            .hardlink("h", "f")
            .tar()),
        MergeError::InvalidName { .. }
    );
}

#[test]
fn gnu_sparse_file_is_refused() {
    let mut tar = raw_header(EntryType::GNUSparse, "holes", 0);
    tar.extend([0u8; 1024]);
    assert_merge!(
        one(tar),
        MergeError::UnsupportedEntry {
            kind: "sparse file",
            ..
        }
    );
}

#[test]
fn pax_sparse_file_is_refused() {
    assert_merge!(
        one(Layer::new()
            .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
            .file("holes", b"")
            .tar()),
        MergeError::UnsupportedEntry {
            kind: "sparse file",
            ..
        }
    );
}

/// Loads `files` (an OCI layout directory) and returns the store and the built disk.
fn accepted(files: &BTreeMap<String, Vec<u8>>) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("state")).unwrap();
    let input = tmp.path().join("in");
    write_dir(&input, files);
    let recs = load::load(&store, &input, None).unwrap();
    let disk = store.ensure_disk(&recs[0].reference).unwrap();
    (tmp, disk)
}

#[test]
fn opaque_whiteout_at_the_root_hides_every_lower_layer() {
    let l1 = Layer::new()
        .file("a", b"a")
        .dir("d/", 0o755)
        .file("d/b", b"b")
        .tar();
    let l2 = Layer::new().file(".wh..wh..opq", b"").file("c", b"c").tar();
    let (_t, disk) = accepted(&layout(vec![l1, l2]));
    assert_eq!(
        list_disk(&disk),
        vec!["drwxr-xr-x 0/0 /", "-rw-r--r-- 0/0 /c"]
    );
}

#[test]
fn hardlink_chain_survives_an_opaque_whiteout_of_its_first_path() {
    // d/f's data stays reachable through h1 and h2 after d is made opaque.
    let l1 = Layer::new()
        .dir("d/", 0o755)
        .file("d/f", b"data")
        .hardlink("h1", "d/f")
        .tar();
    let l2 = Layer::new()
        .dir("d/", 0o755)
        .opaque("d")
        .hardlink("h2", "h1")
        .tar();
    let (_t, disk) = accepted(&layout(vec![l1, l2]));
    assert_eq!(
        list_disk(&disk),
        vec![
            "drwxr-xr-x 0/0 /",
            "drwxr-xr-x 0/0 /d",
            "-rw-r--r-- 0/0 /h1",
            "-rw-r--r-- 0/0 /h2",
        ]
    );
    assert_eq!(cat(&disk, "h2"), b"data");
}

#[test]
fn hardlink_to_a_path_hidden_by_an_opaque_whiteout() {
    let l1 = Layer::new().dir("d/", 0o755).file("d/f", b"x").tar();
    let l2 = Layer::new().opaque("d").hardlink("h", "d/f").tar();
    assert_merge!(
        layout(vec![l1, l2]),
        MergeError::HardlinkTargetMissing { .. }
    );
}

#[test]
fn control_characters_in_names_are_kept_as_data() {
    // Legal on Linux, so carried to the disk; only error messages sanitise them.
    let name = "ctl\x1b[31m\nline\u{202e}";
    let (_t, disk) = accepted(&one(Layer::new().file(name, b"x").tar()));
    assert_eq!(cat(&disk, name), b"x");
}
