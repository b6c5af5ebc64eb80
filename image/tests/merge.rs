//! Overlay semantics of the merge, checked on the in-memory tree (pass 1) and on the
//! emitted tar stream (pass 2), without building a disk.

mod common;

use common::*;
use hyperxl_image::merge::{self, Kind, LayerInput};
use hyperxl_image::Limits;

fn inputs(dir: &std::path::Path, layers: &[Vec<u8>], gz: bool) -> Vec<LayerInput> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("l{i}"));
            std::fs::write(&p, if gz { gzip(l) } else { l.clone() }).unwrap();
            LayerInput {
                blob: p,
                diff_id: sha(l).parse().unwrap(),
            }
        })
        .collect()
}

fn tree_paths(layers: Vec<Vec<u8>>) -> Vec<String> {
    let d = tempfile::tempdir().unwrap();
    let t = merge::index(&inputs(d.path(), &layers, false), &Limits::default()).unwrap();
    t.nodes
        .keys()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect()
}

#[test]
fn whiteout_in_same_layer_spares_that_layer() {
    let l1 = Layer::new().file("a", b"1").tar();
    let l2 = Layer::new()
        .file("b", b"2")
        .whiteout("", "b")
        .whiteout("", "a")
        .tar();
    assert_eq!(tree_paths(vec![l1, l2]), vec!["b"]);
}

#[test]
fn file_over_directory_replaces_subtree() {
    let l1 = Layer::new()
        .dir("d/", 0o755)
        .file("d/x", b"x")
        .dir("d/s/", 0o755)
        .file("d/s/y", b"y")
        .tar();
    let l2 = Layer::new().file("d", b"now a file").tar();
    assert_eq!(tree_paths(vec![l1, l2]), vec!["d"]);
}

#[test]
fn directory_over_directory_keeps_children() {
    let l1 = Layer::new().dir("d/", 0o755).file("d/x", b"x").tar();
    let l2 = Layer::new().dir("d/", 0o700).file("d/y", b"y").tar();
    assert_eq!(tree_paths(vec![l1, l2]), vec!["d", "d/x", "d/y"]);
}

#[test]
fn opaque_dir_keeps_same_layer_and_siblings() {
    let l1 = Layer::new()
        .dir("d/", 0o755)
        .file("d/x", b"x")
        .file("dx", b"sibling")
        .dir("d2/", 0o755)
        .file("d2/z", b"")
        .tar();
    let l2 = Layer::new()
        .dir("d/", 0o755)
        .file("d/y", b"y")
        .opaque("d")
        .tar();
    assert_eq!(
        tree_paths(vec![l1, l2]),
        vec!["d", "d/y", "d2", "d2/z", "dx"]
    );
}

#[test]
fn implicit_parents_are_created() {
    assert_eq!(
        tree_paths(vec![Layer::new().file("a/b/c", b"").tar()]),
        vec!["a", "a/b", "a/b/c"]
    );
}

#[test]
fn whiteout_creates_no_directories() {
    let l1 = Layer::new().file("f", b"").tar();
    let l2 = Layer::new().whiteout("x/y", "z").tar();
    assert_eq!(tree_paths(vec![l1, l2]), vec!["f"]);
}

#[test]
fn hardlink_keeps_old_content_when_target_is_replaced() {
    let l1 = Layer::new().file("a", b"old").hardlink("b", "a").tar();
    let l2 = Layer::new().file("a", b"new!").tar();
    let d = tempfile::tempdir().unwrap();
    let ins = inputs(d.path(), &[l1, l2], true);
    let t = merge::index(&ins, &Limits::default()).unwrap();
    let (
        Kind::File {
            source: sa,
            size: na,
        },
        Kind::File {
            source: sb,
            size: nb,
        },
    ) = (&t.nodes[&b"a".to_vec()].kind, &t.nodes[&b"b".to_vec()].kind)
    else {
        panic!("files expected")
    };
    assert_ne!(sa, sb);
    assert_eq!((*na, *nb), (4, 3));
    // The emitted stream has both contents.
    let mut out = Vec::new();
    merge::emit(&t, &ins, &mut out).unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        seen.push((e.path().unwrap().display().to_string(), s));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![("a".into(), "new!".into()), ("b".into(), "old".into())]
    );
}

#[test]
fn emitted_stream_is_ordered_for_mksquashfs() {
    let d = tempfile::tempdir().unwrap();
    let ins = inputs(d.path(), &standard_layers(), true);
    let mut out = Vec::new();
    let stats = merge::merge(&ins, &Limits::default(), &mut out).unwrap();
    assert_eq!(stats.entries, 22);
    let mut ar = tar::Archive::new(&out[..]);
    let mut kinds = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        kinds.push((
            e.header().entry_type(),
            e.path().unwrap().display().to_string(),
        ));
    }
    // every directory before any regular file; hard links after their first name
    let first_file = kinds.iter().position(|(k, _)| k.is_file()).unwrap();
    assert!(kinds[first_file..].iter().all(|(k, _)| !k.is_dir()));
    let sh = kinds.iter().position(|(_, p)| p == "bin/sh").unwrap();
    let link = kinds.iter().position(|(_, p)| p == "bin/sh-link").unwrap();
    assert!(kinds[link].0.is_hard_link() && sh < link);
    assert!(!kinds.iter().any(|(_, p)| p.contains(".wh.")));
}

#[test]
fn merge_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let ins = inputs(d.path(), &standard_layers(), true);
    let mut a = Vec::new();
    let mut b = Vec::new();
    merge::merge(&ins, &Limits::default(), &mut a).unwrap();
    merge::merge(&ins, &Limits::default(), &mut b).unwrap();
    assert!(a == b);
}

#[test]
fn pax_xattrs_and_ids_are_carried() {
    let cap: &[u8] =
        b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let l = Layer::new()
        .pax(&[
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.trusted.evil", b"x"),
            ("uid", b"3000000"),
            ("mtime", b"1700000000.5"),
        ])
        .file_full("ping", b"ping", 0o755, (0, 0))
        .tar();
    let d = tempfile::tempdir().unwrap();
    let ins = inputs(d.path(), &[l], false);
    let t = merge::index(&ins, &Limits::default()).unwrap();
    let n = &t.nodes[&b"ping".to_vec()];
    assert_eq!(
        n.xattrs,
        vec![("security.capability".to_string(), cap.to_vec())]
    );
    assert_eq!((n.uid, n.mtime), (3_000_000, 1_700_000_000));
    let mut out = Vec::new();
    merge::emit(&t, &ins, &mut out).unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    let mut e = ar.entries().unwrap().next().unwrap().unwrap();
    let keys: Vec<String> = e
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|x| x.unwrap().key().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["SCHILY.xattr.security.capability"]);
    assert_eq!(e.header().uid().unwrap(), 3_000_000);
}
