//! A rootfs disk built from a directory tree (a containerd snapshot), read back with
//! `unsquashfs`: symlinks stay links (never followed out of the tree) and nothing but
//! the output file is written.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

use hyperxl_image::disk::{build_squashfs_from_dir, Compressor};

#[test]
fn a_tree_becomes_a_disk_with_its_links_kept_as_links() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("rootfs");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"from-the-snapshot\n").unwrap();
    let app = tree.join("app");
    std::fs::write(&app, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // Hostile: links that point out of the tree, absolute and relative.
    symlink("/etc/shadow", tree.join("shadow")).unwrap();
    symlink("../../../../../../etc/passwd", tree.join("etc/passwd")).unwrap();
    let out = dir.path().join("rootfs.sqfs");
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    build_squashfs_from_dir(&tree, Compressor::Lz4, &out).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        before.len() + 1,
        "only the disk is new"
    );
    let listing = Command::new("unsquashfs")
        .arg("-lln")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8(listing.stdout).unwrap();
    let line = |suffix: &str| {
        text.lines()
            .find(|l| l.contains(suffix))
            .unwrap_or_else(|| panic!("{suffix} missing:\n{text}"))
            .to_string()
    };
    assert!(line("/shadow -> /etc/shadow").starts_with('l'), "{text}");
    assert!(line("/etc/passwd -> ../../").starts_with('l'), "{text}");
    assert!(
        line("/app").starts_with("-rwsr-xr-x"),
        "setuid kept: {text}"
    );
    let cat = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(&out)
        .arg("etc/hostname")
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"from-the-snapshot\n");
}

#[test]
fn a_missing_tree_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs.sqfs");
    let err = build_squashfs_from_dir(&dir.path().join("nope"), Compressor::Lz4, &out);
    assert!(err.is_err());
    assert!(!out.exists());
}
