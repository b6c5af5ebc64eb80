use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use super::*;

fn limits() -> Limits {
    Limits::from_guest()
}

/// A source tree: `src/` with a file (0640), an executable, a nested dir, a symlink
/// pointing out of the tree (stored, never followed).
fn tree(base: &Path) -> PathBuf {
    let src = base.join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("sub/deeper/z"), vec![7u8; 100_000]).unwrap();
    symlink("/etc/passwd", src.join("link")).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    src
}

fn packed(src: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    pack(src, &mut out).unwrap();
    out
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn a_tree_round_trips_with_modes_and_symlinks() {
    let d = tempfile::tempdir().unwrap();
    let src = tree(d.path());
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let stats = unpack(&packed(&src)[..], &dest, Place::Named, None, &limits()).unwrap();
    assert_eq!(stats.entries, 7);
    assert_eq!(stats.bytes, 6 + 10 + 100_000);
    let got = dest.join("src");
    assert_eq!(fs::read(got.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(mode(&got.join("a.txt")), 0o640);
    assert_eq!(mode(&got.join("sub/run.sh")), 0o755);
    assert_eq!(mode(&got.join("sub")), 0o750);
    assert_eq!(
        fs::read(got.join("sub/deeper/z")).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        fs::read_link(got.join("link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::metadata(got.join("a.txt")).unwrap().mtime(),
        fs::metadata(src.join("a.txt")).unwrap().mtime()
    );
}

#[test]
fn destinations_follow_docker_cp() {
    let d = tempfile::tempdir().unwrap();
    let src = tree(d.path());
    let stream = packed(&src);
    // A missing destination: the tree gets its name.
    let new = d.path().join("new");
    unpack(&stream[..], &new, Place::Named, None, &limits()).unwrap();
    assert!(new.join("a.txt").is_file());
    // SRC/. into an existing directory: the contents, no top directory.
    let into = d.path().join("into");
    fs::create_dir(&into).unwrap();
    unpack(&stream[..], &into, Place::Contents, None, &limits()).unwrap();
    assert!(into.join("sub/run.sh").is_file());
    assert!(!into.join("src").exists());
    // A file onto a file replaces it; into a directory keeps its name.
    let one = packed(&src.join("a.txt"));
    let file = d.path().join("file");
    fs::write(&file, b"old, longer content").unwrap();
    unpack(&one[..], &file, Place::Named, None, &limits()).unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"alpha\n");
    unpack(&one[..], &into, Place::Named, None, &limits()).unwrap();
    assert_eq!(fs::read(into.join("a.txt")).unwrap(), b"alpha\n");
    // A directory over a file, a file to a missing directory, and SRC/. of a file fail.
    assert!(unpack(&stream[..], &file, Place::Named, None, &limits()).is_err());
    let missing_dir = format!("{}/", d.path().join("nodir").display());
    assert!(unpack(
        &one[..],
        Path::new(&missing_dir),
        Place::Named,
        None,
        &limits()
    )
    .is_err());
    assert!(unpack(&one[..], &into, Place::Contents, None, &limits()).is_err());
    // A missing parent fails and creates nothing.
    assert!(unpack(
        &stream[..],
        &d.path().join("no/such"),
        Place::Named,
        None,
        &limits()
    )
    .is_err());
    assert!(!d.path().join("no").exists());
}

/// One raw tar entry: the name is written as bytes, unchecked (as a hostile peer would).
fn raw(name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o6755);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn stream(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut s: Vec<u8> = entries.concat();
    s.extend_from_slice(&[0u8; 1024]);
    s
}

use tar::EntryType::{Block, Directory, Link, Regular, Symlink};

#[test]
fn hostile_streams_write_nothing_outside_the_destination() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let o = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"t/../../outside/x", Regular, b"x", b""),
            ]),
        ),
        (
            "absolute",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(format!("{o}/x").as_bytes(), Regular, b"x", b""),
            ]),
        ),
        (
            "two tops",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"u/x", Regular, b"x", b""),
            ]),
        ),
        (
            "through its own symlink",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"t/l", Symlink, b"", o.as_bytes()),
                raw(b"t/l/x", Regular, b"x", b""),
            ]),
        ),
        (
            "relative symlink climbing out",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"t/l", Symlink, b"", b"../../outside"),
                raw(b"t/l/x", Regular, b"x", b""),
            ]),
        ),
        (
            "hard link",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"t/h", Link, b"", format!("{o}/x").as_bytes()),
            ]),
        ),
        (
            "device",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"t/dev", Block, b"", b""),
            ]),
        ),
        (
            "before its directory",
            stream(&[
                raw(b"t", Directory, b"", b""),
                raw(b"t/a/b", Regular, b"x", b""),
            ]),
        ),
        ("not tar", b"this is not a tar stream at all".repeat(40)),
    ];
    for (what, s) in cases {
        let r = unpack(&s[..], &dest, Place::Named, None, &limits());
        assert!(matches!(r, Err(CopyError::Refused(_))), "{what}: {r:?}");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "{what} wrote outside"
        );
    }
}

#[test]
fn an_old_symlink_or_hard_link_in_the_destination_is_replaced_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    let dest = d.path().join("dest");
    fs::create_dir_all(dest.join("t")).unwrap();
    // t/f is a hard link to a file outside; t/s a symlink to it; t/d a symlink to the
    // outside directory.
    fs::hard_link(outside.join("secret"), dest.join("t/f")).unwrap();
    symlink(outside.join("secret"), dest.join("t/s")).unwrap();
    symlink(&outside, dest.join("t/d")).unwrap();
    let s = stream(&[
        raw(b"t", Directory, b"", b""),
        raw(b"t/f", Regular, b"new", b""),
        raw(b"t/s", Regular, b"new", b""),
    ]);
    unpack(&s[..], &dest, Place::Named, None, &limits()).unwrap();
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep");
    assert_eq!(fs::read(dest.join("t/f")).unwrap(), b"new");
    assert!(fs::symlink_metadata(dest.join("t/s")).unwrap().is_file());
    let through = stream(&[
        raw(b"t", Directory, b"", b""),
        raw(b"t/d/x", Regular, b"x", b""),
    ]);
    assert!(unpack(&through[..], &dest, Place::Named, None, &limits()).is_err());
    assert!(!outside.join("x").exists());
    // Nor does a destination whose top is a symlink lead out: the symlink is replaced
    // by the stream's directory.
    let dest2 = d.path().join("dest2");
    fs::create_dir(&dest2).unwrap();
    symlink(&outside, dest2.join("t")).unwrap();
    let s = stream(&[
        raw(b"t", Directory, b"", b""),
        raw(b"t/y", Regular, b"y", b""),
    ]);
    unpack(&s[..], &dest2, Place::Named, None, &limits()).unwrap();
    assert!(!outside.join("y").exists());
    assert!(fs::symlink_metadata(dest2.join("t")).unwrap().is_dir());
    assert_eq!(fs::read(dest2.join("t/y")).unwrap(), b"y");
}

#[test]
fn set_id_bits_are_dropped_from_a_guest_and_sizes_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let s = stream(&[
        raw(b"t", Directory, b"", b""),
        raw(b"t/suid", Regular, b"x", b""),
    ]);
    unpack(&s[..], d.path(), Place::Named, None, &limits()).unwrap();
    assert_eq!(mode(&d.path().join("t/suid")), 0o755);
    let kept = d.path().join("kept");
    fs::create_dir(&kept).unwrap();
    unpack(&s[..], &kept, Place::Named, None, &Limits::into_guest()).unwrap();
    assert_eq!(mode(&kept.join("t/suid")), 0o6755);
    let small = Limits {
        max_bytes: 2,
        ..limits()
    };
    let big = stream(&[
        raw(b"t", Directory, b"", b""),
        raw(b"t/big", Regular, b"xyz", b""),
    ]);
    let e = unpack(&big[..], &d.path().join("b"), Place::Named, None, &small).unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
    let few = Limits {
        max_entries: 1,
        ..limits()
    };
    let e = unpack(&big[..], &d.path().join("c"), Place::Named, None, &few).unwrap_err();
    assert!(e.to_string().contains("entries"), "{e}");
}

#[test]
fn into_takes_any_layout_but_still_no_escape() {
    let d = tempfile::tempdir().unwrap();
    let s = stream(&[
        raw(b"a", Regular, b"1", b""),
        raw(b"b", Directory, b"", b""),
        raw(b"b/c", Regular, b"2", b""),
    ]);
    unpack(&s[..], d.path(), Place::Into, None, &limits()).unwrap();
    assert_eq!(fs::read(d.path().join("b/c")).unwrap(), b"2");
    let bad = stream(&[raw(b"../x", Regular, b"1", b"")]);
    assert!(unpack(&bad[..], d.path(), Place::Into, None, &limits()).is_err());
    assert!(unpack(&s[..], &d.path().join("a"), Place::Into, None, &limits()).is_err());
}

#[test]
fn top_names() {
    assert_eq!(top_name(Path::new("/etc/passwd")), "passwd");
    assert_eq!(top_name(Path::new("/var/log/")), "log");
    assert_eq!(top_name(Path::new("/var/log/.")), "log");
    assert_eq!(top_name(Path::new("/")), "root");
}

#[test]
fn a_guest_cannot_choose_the_name_its_top_entry_gets() {
    // dom0 asked for /var/log/app.log; the guest answers with a `.bashrc`.
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join(".bashrc"), b"mine").unwrap();
    let s = stream(&[raw(b".bashrc", Regular, b"evil", b"")]);
    let r = unpack(&s[..], d.path(), Place::Named, Some("app.log"), &limits());
    assert!(matches!(r, Err(CopyError::Refused(_))), "{r:?}");
    assert_eq!(fs::read(d.path().join(".bashrc")).unwrap(), b"mine");
    let ok = stream(&[raw(b"app.log", Regular, b"log", b"")]);
    unpack(&ok[..], d.path(), Place::Named, Some("app.log"), &limits()).unwrap();
    assert_eq!(fs::read(d.path().join("app.log")).unwrap(), b"log");
}

#[test]
fn an_empty_stream_is_told_apart() {
    let d = tempfile::tempdir().unwrap();
    let r = unpack(&[0u8; 1024][..], d.path(), Place::Named, None, &limits());
    assert!(matches!(r, Err(CopyError::Empty)), "{r:?}");
    let r = unpack(&[][..], d.path(), Place::Named, None, &limits());
    assert!(matches!(r, Err(CopyError::Empty)), "{r:?}");
}

#[test]
fn repeated_directories_are_kept_once() {
    let d = tempfile::tempdir().unwrap();
    let mut entries = vec![raw(b"t", Directory, b"", b"")];
    for _ in 0..2000 {
        entries.push(raw(b"t", Directory, b"", b""));
    }
    let s = stream(&entries);
    let stats = unpack(&s[..], d.path(), Place::Named, None, &limits()).unwrap();
    assert_eq!(stats.entries, 2001);
    assert_eq!(mode(&d.path().join("t")), 0o755);
}

#[test]
fn pack_walks_by_descriptor_and_skips_fifos() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let mut out = Vec::new();
    let stats = pack(&src, &mut out).unwrap();
    assert_eq!((stats.entries, stats.skipped), (2, 1));
}
