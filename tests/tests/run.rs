//! `hyperxl run` end to end in the Xen test host: a test image loaded from a
//! `docker save` tarball, run through libxl with HyperKernel + hyperstart-pv.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use hyperxl_e2e::Batch;
use sha2::{Digest, Sha256};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One layer: static busybox with a few applets, users root/nobody/app, /srv.
fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    for d in ["bin", "etc", "srv", "tmp"] {
        add(d, tar::EntryType::Directory, 0o755, b"", None);
    }
    let busybox = fs::read("/bin/busybox").expect("static /bin/busybox (busybox-static)");
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    );
    for a in [
        "sh", "echo", "cat", "id", "pwd", "env", "sleep", "true", "hostname",
    ] {
        add(
            &format!("bin/{a}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        None,
    );
    add(
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n",
        None,
    );
    b.into_inner().unwrap()
}

/// A `docker save` tarball of `demo:latest` whose config sets Cmd, Env, WorkingDir, User.
fn docker_save(path: &Path) {
    let layer = layer();
    let layer_id = sha(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin","FOO=image"],"Cmd":["sh","-c","echo image-cmd FOO=$FOO; pwd; id -un"],"WorkingDir":"/srv","User":"app"}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_id}"]}},"history":[]}}"#
    );
    let config_id = sha(config.as_bytes());
    let manifest = format!(
        r#"[{{"Config":"{config_id}.json","RepoTags":["demo:latest"],"Layers":["{layer_id}/layer.tar"]}}]"#
    );
    let mut files = BTreeMap::new();
    files.insert("manifest.json".to_string(), manifest.into_bytes());
    files.insert(format!("{config_id}.json"), config.into_bytes());
    files.insert(format!("{layer_id}/layer.tar"), layer);
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn run_boots_images_and_exits_with_the_apps_code() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    docker_save(&image);
    let mut batch = Batch::new();
    batch
        .add(&image, "/images/demo.tar")
        .step("load", "hyperxl load -i /images/demo.tar")
        .step("image_config", "hyperxl run --rm demo")
        .step("hello", "hyperxl run --rm demo echo hello")
        .step("exit3", "hyperxl run --rm demo sh -c 'exit 3'")
        .step("missing", "hyperxl run --rm demo no-such-command")
        .step(
            "flags",
            "hyperxl run --rm -e FOO=cli -w /tmp/wd -u nobody demo sh -c 'echo FOO=$FOO; pwd; id -un'",
        )
        .step("pv", "hyperxl run --rm --type pv demo echo pv-hello")
        .step("named", "hyperxl run --name keep demo true")
        .step("duplicate", "hyperxl run --name keep demo true")
        .step("ps_running", "hyperxl ps")
        .step("ps_all", "hyperxl ps -a --format json")
        .step("after_run", "ls $HYPERXL_STATE_DIR/vms")
        .step("rm", "hyperxl rm keep && hyperxl rm keep")
        .step("after", "xl list | tail -n +2; losetup -a; ls $HYPERXL_STATE_DIR/vms");
    let run = batch.run().expect("test host runs the batch");

    run["load"].assert_success("load");
    let out = &run["image_config"].assert_success("image_config").stdout;
    assert_eq!(
        out, "image-cmd FOO=image\n/srv\napp\n",
        "{}",
        run["image_config"]
    );
    assert_eq!(run["hello"].assert_success("hello").stdout, "hello\n");
    assert_eq!(run["exit3"].status, 3, "{}", run["exit3"]);
    assert_eq!(run["missing"].status, 127, "{}", run["missing"]);
    assert!(
        run["missing"].stderr.contains("no-such-command"),
        "{}",
        run["missing"]
    );
    assert_eq!(
        run["flags"].assert_success("flags").stdout,
        "FOO=cli\n/tmp/wd\nnobody\n"
    );
    assert_eq!(run["pv"].assert_success("pv").stdout, "pv-hello\n");
    run["named"].assert_success("named");
    let dup = &run["duplicate"];
    assert_eq!(dup.status, 125, "{dup}");
    assert!(dup.stderr.contains("already in use"), "{dup}");
    // ps shows no running VM; ps -a shows the kept one, exited with code 0.
    assert_eq!(
        run["ps_running"]
            .assert_success("ps")
            .stdout
            .lines()
            .count(),
        1
    );
    let all = &run["ps_all"].assert_success("ps_all").stdout;
    assert!(all.contains(r#""name": "keep""#), "{all}");
    assert!(
        all.contains(r#""status": "exited""#) && all.contains(r#""exit_code": 0"#),
        "{all}"
    );
    assert_eq!(
        all.matches(r#""id":"#).count(),
        1,
        "--rm VMs left state:\n{all}"
    );
    assert_eq!(
        run["after_run"].stdout.lines().count(),
        1,
        "{}",
        run["after_run"]
    );
    // rm removes it; a second rm of the same name fails with a clear error.
    let rm = &run["rm"];
    assert_eq!(rm.stdout, "keep\n", "{rm}");
    assert_eq!(rm.status, 125, "{rm}");
    assert!(rm.stderr.contains("no such VM: keep"), "{rm}");
    // Only dom0 is left, no loop device, no VM state.
    let after: Vec<&str> = run["after"].stdout.lines().collect();
    assert_eq!(after.len(), 1, "leftovers:\n{}", run["after"]);
    assert!(after[0].starts_with("Domain-0"), "{}", run["after"]);
}
