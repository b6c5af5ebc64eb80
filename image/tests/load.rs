//! `load` of OCI layouts and docker-save archives, and the disk it builds, read back with
//! `unsquashfs`.

mod common;

use common::*;
use hyperxl_image::load;
use hyperxl_image::{Reference, Store};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    (dir, store)
}

fn check_standard_disk(store: &Store, name: &str) -> std::path::PathBuf {
    let r: Reference = name.parse().unwrap();
    let disk = store.ensure_disk(&r).unwrap();
    assert_eq!(list_disk(&disk), standard_listing());
    assert_eq!(cat(&disk, "bin/sh-link"), b"#!shell");
    assert_eq!(cat(&disk, "opt/app/new"), b"new");
    disk
}

#[test]
fn oci_layout_dir_gives_exact_tree() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("example.com/app:1"));
    let loaded = hyperxl_image::load::load(&store, &dir, None).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].reference.to_string(), "example.com/app:1");
    check_standard_disk(&store, "example.com/app:1");
    // mtimes come from the layers
    let out = std::process::Command::new("unsquashfs")
        .env("TZ", "UTC")
        .arg("-lln")
        .arg(store.disk_path(&loaded[0].id))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("2020-09-13 12:26") && l.ends_with("/etc/passwd")),
        "{text}"
    );
}

#[test]
fn disks_are_lz4_for_the_guests_read_speed() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("example.com/app:1"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let disk = check_standard_disk(&store, "example.com/app:1");
    let text = disk_stats(&disk);
    assert!(
        text.lines().any(|l| l.trim() == "Compression lz4"),
        "{text}"
    );
}

#[test]
fn hardlinks_share_an_inode() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("example.com/app:1"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let disk = store
        .ensure_disk(&"example.com/app:1".parse().unwrap())
        .unwrap();
    let text = disk_stats(&disk);
    // 23 paths, 2 extra names for bin/sh: 21 inodes.
    assert!(text.contains("Number of inodes 21"), "{text}");
}

#[test]
fn oci_tar_docker_save_uncompressed_and_zstd_give_the_same_disk() {
    let (tmp, store) = store();
    let mut img = TestImage::new(standard_layers());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("example.com/app:1"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let a = fingerprint(&check_standard_disk(&store, "example.com/app:1"));

    for (i, c) in [Compress::None, Compress::Zstd].into_iter().enumerate() {
        let (_t2, store2) = self::store();
        img.compress = c;
        let t = tmp.path().join(format!("oci{i}.tar"));
        write_tar(&t, &img.oci_files("example.com/app:1"));
        hyperxl_image::load::load(&store2, &t, None).unwrap();
        let b = fingerprint(&check_standard_disk(&store2, "example.com/app:1"));
        assert_eq!(a, b, "disks differ");
    }

    let (_t3, store3) = self::store();
    let t = tmp.path().join("save.tar");
    write_tar(&t, &img.docker_save_files("example.com/app:1"));
    let loaded = hyperxl_image::load::load(&store3, &t, None).unwrap();
    assert_eq!(loaded[0].manifest, None);
    let b = fingerprint(&check_standard_disk(&store3, "example.com/app:1"));
    assert_eq!(a, b, "docker-save disk differs");
}

#[test]
fn cache_hit_does_no_work_and_config_is_exposed() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("app"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let r: Reference = "app".parse().unwrap();
    let d1 = store.ensure_disk(&r).unwrap();
    let m1 = std::fs::metadata(&d1).unwrap().modified().unwrap();
    let t = std::time::Instant::now();
    let d2 = store.ensure_disk(&r).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_millis(50));
    assert_eq!(d1, d2);
    assert_eq!(std::fs::metadata(&d2).unwrap().modified().unwrap(), m1);
    let cfg = store.image_config(&r).unwrap();
    let c = cfg.config().as_ref().unwrap();
    assert_eq!(
        c.entrypoint().as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(c.working_dir().as_deref(), Some("/"));
}

#[test]
fn untagged_layout_needs_a_name() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    let mut files = img.oci_files("x");
    // only a bare tag, as `skopeo copy ... oci:dir:latest` writes
    let idx: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let mut idx = idx;
    idx["manifests"][0]["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
    files.insert("index.json".into(), serde_json::to_vec(&idx).unwrap());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &files);
    let err = hyperxl_image::load::load(&store, &dir, None).unwrap_err();
    assert!(
        matches!(err, hyperxl_image::load::LoadError::NoName(_)),
        "{err}"
    );
    let tag: Reference = "named:v1".parse().unwrap();
    let loaded = hyperxl_image::load::load(&store, &dir, Some(&tag)).unwrap();
    assert_eq!(loaded[0].reference.familiar(), "named:v1");
}

#[test]
fn rmi_and_prune_leave_no_orphans() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("app"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    // a leftover of a killed pull
    std::fs::write(store.root().join("tmp/.tmpKILLED"), b"partial").unwrap();
    let s = store.prune().unwrap();
    assert_eq!((s.blobs, s.disks, s.temp_files), (0, 0, 1));
    store.remove(&"app".parse().unwrap()).unwrap();
    let s = store.prune().unwrap();
    assert_eq!((s.blobs, s.disks), (5, 1)); // config, manifest, 3 layers; one disk
    let left: Vec<_> = snapshot(store.root())
        .into_iter()
        .filter(|(_, n)| *n >= 0)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(left, vec![store.root().join("lock")]);
}

#[test]
fn file_capabilities_reach_the_disk() {
    let (tmp, store) = store();
    let cap: &[u8] =
        b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let l = Layer::new()
        .pax(&[("SCHILY.xattr.security.capability", cap)])
        .file_full("ping", b"p", 0o755, (0, 0))
        .tar();
    let img = TestImage::new(vec![l]);
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("caps"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let disk = store.ensure_disk(&"caps".parse().unwrap()).unwrap();
    let text = disk_stats(&disk);
    assert!(text.contains("Number of xattr ids 1"), "{text}");
}

#[test]
fn disks_are_reproducible_across_time() {
    let img = TestImage::new(standard_layers());
    let mut disks = Vec::new();
    for _ in 0..2 {
        let (tmp, store) = store();
        let dir = tmp.path().join("layout");
        write_dir(&dir, &img.oci_files("app"));
        hyperxl_image::load::load(&store, &dir, None).unwrap();
        disks.push(fingerprint(
            &store.ensure_disk(&"app".parse().unwrap()).unwrap(),
        ));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(disks[0], disks[1], "disk content depends on build time");
    assert!(
        disks[0].iter().any(|l| l.contains("2020-09-13 12:26")),
        "layer mtimes kept"
    );
}

#[test]
fn save_then_load_round_trips() {
    let (tmp, store) = store();
    let img = TestImage::new(standard_layers());
    // one image from an OCI layout (manifest kept), one from docker save (manifest made)
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("oci/app:1"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let ds = tmp.path().join("save.tar");
    let mut img2 = img.clone();
    img2.layers.push(Layer::new().file("extra", b"x").tar());
    write_tar(&ds, &img2.docker_save_files("docker/app:2"));
    hyperxl_image::load::load(&store, &ds, None).unwrap();
    let recs = store.records().unwrap();
    let out = tmp.path().join("out.tar");
    hyperxl_image::save::save(&store, &recs, &out).unwrap();
    let (_t2, store2) = self::store();
    let loaded = hyperxl_image::load::load(&store2, &out, None).unwrap();
    assert_eq!(loaded.len(), 2);
    for rec in &recs {
        let back = store2.record(&rec.reference).unwrap();
        assert_eq!(back.id, rec.id);
        if rec.manifest.is_some() {
            assert_eq!(back.manifest, rec.manifest, "manifest digest kept");
        }
        assert_eq!(
            fingerprint(&store.ensure_disk(&rec.reference).unwrap()),
            fingerprint(&store2.ensure_disk(&rec.reference).unwrap())
        );
    }
}

#[test]
fn long_names_and_link_targets() {
    let (tmp, store) = store();
    let deep = format!("{}/{}", "d".repeat(120), "f".repeat(130));
    let target = format!("/{}/{}", "t".repeat(90), "u".repeat(90));
    let l = Layer::new()
        .long(&deep, None, b"deep")
        .long("link", Some(&target), b"")
        .tar();
    let img = TestImage::new(vec![l]);
    let dir = tmp.path().join("layout");
    write_dir(&dir, &img.oci_files("long"));
    hyperxl_image::load::load(&store, &dir, None).unwrap();
    let disk = store.ensure_disk(&"long".parse().unwrap()).unwrap();
    let listing = list_disk(&disk);
    assert!(
        listing.contains(&format!("-rw-r--r-- 0/0 /{deep}")),
        "{listing:?}"
    );
    assert!(
        listing.contains(&format!("lrwxrwxrwx 0/0 /link -> {target}")),
        "{listing:?}"
    );
    assert_eq!(cat(&disk, &deep), b"deep");
}

#[test]
fn defect3_stale_temp_files_are_swept_by_the_next_import() {
    let (d, store) = store();
    let tmp = store.root().join("tmp");
    std::fs::write(tmp.join(".tmpDEAD01"), vec![0u8; 1 << 20]).unwrap();
    std::fs::create_dir(tmp.join(".tmpDEAD02")).unwrap();
    let input = d.path().join("in");
    write_dir(
        &input,
        &TestImage::new(standard_layers()).oci_files("x/y:1"),
    );
    load::load(&store, &input, None).unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn defect3_temp_files_of_a_live_import_are_kept() {
    let (d, store) = store();
    let tmp = store.root().join("tmp");
    std::fs::write(tmp.join(".tmpLIVE01"), b"in use").unwrap();
    let held = store.lock_shared().unwrap(); // another import in progress
    let input = d.path().join("in");
    write_dir(
        &input,
        &TestImage::new(standard_layers()).oci_files("x/y:1"),
    );
    load::load(&store, &input, None).unwrap();
    assert!(tmp.join(".tmpLIVE01").exists());
    drop(held);
}

#[test]
fn defect3_unreferenced_member_of_a_docker_save_is_never_spooled() {
    // A 256 MiB member no manifest mentions, before manifest.json in the archive. The
    // child may write no file over 16 MiB: spooling the member would kill it (SIGXFSZ).
    const TEST: &str = "defect3_unreferenced_member_of_a_docker_save_is_never_spooled";
    if !in_limited_child(TEST) {
        return;
    }
    use std::io::{Seek, SeekFrom, Write};
    let (d, store) = store();
    let input = d.path().join("save.tar");
    let mut f = std::fs::File::create(&input).unwrap();
    f.write_all(&raw_header(tar::EntryType::Regular, "junk.bin", 256 << 20))
        .unwrap();
    // The data is a hole: nothing is written to make this test's input.
    f.seek(SeekFrom::Current(256 << 20)).unwrap();
    let mut b = tar::Builder::new(f);
    for (n, data) in TestImage::new(standard_layers()).docker_save_files("x/y:1") {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, n, &data[..]).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    limit_file_size(16 << 20);
    load::load(&store, &input, None).unwrap();
    check_standard_disk(&store, "x/y:1");
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}
