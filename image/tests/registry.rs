//! Pulls from a real `docker-registry` on 127.0.0.1 started by each test.

mod common;

use common::registry::{manifest_bytes, TestRegistry};
use common::*;
use hyperxl_image::auth::{AuthFiles, Credentials};
use hyperxl_image::pull::{pull, PullError, PullOptions};
use hyperxl_image::{Reference, Store, StoreError};
use serde_json::json;

fn setup() -> (tempfile::TempDir, Store, PullOptions) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = Store::open(&state).unwrap();
    let mut opts = PullOptions::new(&state);
    opts.auth.docker = None;
    opts.attempts = 2;
    (dir, store, opts)
}

fn r(s: &str) -> Reference {
    s.parse().unwrap()
}

#[test]
fn pull_oci_and_docker_v2s2_give_the_exact_tree() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    reg.push_image("team/oci", "1", &img, false);
    reg.push_image("team/docker", "1", &img, true);
    let (_d, store, opts) = setup();
    let a = pull(&store, &r(&format!("{}/team/oci:1", reg.host)), &opts).unwrap();
    let b = pull(&store, &r(&format!("{}/team/docker:1", reg.host)), &opts).unwrap();
    assert_eq!(a.id, b.id, "same config, same image id");
    assert_ne!(a.manifest, b.manifest);
    let disk = store.ensure_disk(&a.reference).unwrap();
    assert_eq!(list_disk(&disk), standard_listing());
    assert_eq!(store.ensure_disk(&b.reference).unwrap(), disk);
    // The same image loaded from an OCI layout gives the byte-identical disk.
    let (tmp2, store2, _) = setup();
    let dir = tmp2.path().join("layout");
    write_dir(&dir, &img.oci_files("x/y:1"));
    hyperxl_image::load::load(&store2, &dir, None).unwrap();
    let disk2 = store2.ensure_disk(&r("x/y:1")).unwrap();
    assert_eq!(fingerprint(&disk), fingerprint(&disk2));
    let cfg = store.image_config(&a.reference).unwrap();
    assert_eq!(
        cfg.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["-c".to_string(), "echo hi".to_string()][..])
    );
}

fn index_bytes(entries: &[(&[u8], &str, &str)], docker: bool) -> Vec<u8> {
    let (mt, emt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    } else {
        (
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        )
    };
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "manifests": entries.iter().map(|(m, os, arch)| json!({
            "mediaType": emt, "digest": sha(m), "size": m.len(),
            "platform": {"os": os, "architecture": arch}})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[test]
fn manifest_list_resolves_to_platform() {
    let reg = TestRegistry::start(false);
    let amd = TestImage::new(standard_layers());
    let arm = TestImage::new(vec![Layer::new().file("arm", b"arm").tar()]);
    for docker in [true, false] {
        let repo = if docker { "multi/docker" } else { "multi/oci" };
        let ma = reg.push_image(repo, "amd", &amd, docker);
        let mb = reg.push_image(repo, "arm", &arm, docker);
        let list = index_bytes(&[(&mb, "linux", "arm64"), (&ma, "linux", "amd64")], docker);
        let lt = if docker {
            "application/vnd.docker.distribution.manifest.list.v2+json"
        } else {
            "application/vnd.oci.image.index.v1+json"
        };
        let ld = reg.push_manifest(repo, "latest", lt, &list);
        let (_d, store, mut opts) = setup();
        let rec = pull(&store, &r(&format!("{}/{repo}", reg.host)), &opts).unwrap();
        assert_eq!(rec.manifest.as_ref().unwrap().to_string(), sha(&ma));
        assert_eq!(
            list_disk(&store.ensure_disk(&rec.reference).unwrap()),
            standard_listing()
        );
        opts.platform = "linux/arm64".parse().unwrap();
        let rec = pull(&store, &r(&format!("{}/{repo}@{ld}", reg.host)), &opts).unwrap();
        assert_eq!(rec.platform, "linux/amd64"); // the test config says amd64; the manifest was arm's
        assert_eq!(rec.manifest.as_ref().unwrap().to_string(), sha(&mb));
        opts.platform = "linux/s390x".parse().unwrap();
        let e = pull(&store, &r(&format!("{}/{repo}", reg.host)), &opts).unwrap_err();
        assert!(matches!(e, PullError::NoPlatform { .. }), "{e}");
    }
}

#[test]
fn htpasswd_registry_needs_login() {
    let reg = TestRegistry::start(true);
    let img = TestImage::new(standard_layers());
    reg.push_image("private/app", "1", &img, false);
    let (_d, store, opts) = setup();
    let reference = r(&format!("{}/private/app:1", reg.host));
    let before = snapshot(store.root());
    let e = pull(&store, &reference, &opts).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    assert_eq!(snapshot(store.root()), before);
    opts.auth
        .store(
            &reg.host,
            &Credentials {
                username: "tester".into(),
                password: "wrong".into(),
            },
        )
        .unwrap();
    let e = pull(&store, &reference, &opts).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    opts.auth
        .store(
            &reg.host,
            &Credentials {
                username: "tester".into(),
                password: "s3cret".into(),
            },
        )
        .unwrap();
    let rec = pull(&store, &reference, &opts).unwrap();
    assert_eq!(
        list_disk(&store.ensure_disk(&rec.reference).unwrap()),
        standard_listing()
    );
}

#[test]
fn docker_config_credentials_are_used() {
    let reg = TestRegistry::start(true);
    reg.push_image("private/app", "1", &TestImage::new(standard_layers()), true);
    let (d, store, mut opts) = setup();
    let cfg = d.path().join("docker-config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#,
            reg.host
        ),
    )
    .unwrap();
    opts.auth = AuthFiles {
        hyperxl: d.path().join("none.json"),
        docker: Some(cfg),
    };
    pull(&store, &r(&format!("{}/private/app:1", reg.host)), &opts).unwrap();
}

#[test]
fn tampered_blob_in_registry_is_refused() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    reg.push_image("t/app", "1", &img, false);
    let (blob, _) = &img.layer_blobs()[1];
    let file = reg.blob_file(&sha(blob));
    let mut data = std::fs::read(&file).unwrap();
    let n = data.len();
    data[n - 10] ^= 0x01;
    std::fs::write(&file, data).unwrap();
    let (_d, store, opts) = setup();
    let before = snapshot(store.root());
    let e = pull(&store, &r(&format!("{}/t/app:1", reg.host)), &opts).unwrap_err();
    assert!(
        matches!(e, PullError::Store(StoreError::DigestMismatch { .. })),
        "{e}"
    );
    assert_eq!(snapshot(store.root()), before, "store changed");
}

#[test]
fn tampered_manifest_is_refused_when_pinned() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    let m = reg.push_image("t/app", "1", &img, false);
    let other = TestImage::new(vec![Layer::new().file("x", b"x").tar()]);
    let (_d, store, opts) = setup();
    // Ask for the digest of `other`'s manifest under a tag that serves `img`: refused.
    let om = manifest_bytes(&other.config(), &other.layer_blobs(), false);
    let e = pull(
        &store,
        &r(&format!("{}/t/app@{}", reg.host, sha(&om))),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(e, PullError::Status { status: 404, .. }), "{e}");
    let ok = pull(
        &store,
        &r(&format!("{}/t/app@{}", reg.host, sha(&m))),
        &opts,
    )
    .unwrap();
    assert_eq!(ok.manifest.unwrap().to_string(), sha(&m));
}

#[test]
fn missing_image_and_missing_blob() {
    let reg = TestRegistry::start(false);
    let (_d, store, opts) = setup();
    let e = pull(&store, &r(&format!("{}/no/such:1", reg.host)), &opts).unwrap_err();
    assert!(matches!(e, PullError::Status { status: 404, .. }), "{e}");
    // A manifest whose layer blob was never pushed: the registry refuses the manifest
    // push itself, so delete the blob from its storage after pushing.
    let img = TestImage::new(standard_layers());
    reg.push_image("t/app", "1", &img, false);
    let (blob, _) = &img.layer_blobs()[0];
    std::fs::remove_dir_all(reg.blob_file(&sha(blob)).parent().unwrap()).unwrap();
    let before = snapshot(store.root());
    let e = pull(&store, &r(&format!("{}/t/app:1", reg.host)), &opts).unwrap_err();
    assert!(matches!(e, PullError::Status { status: 404, .. }), "{e}");
    assert_eq!(snapshot(store.root()), before);
}

#[test]
fn second_pull_reuses_blobs_and_disk() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    reg.push_image("t/app", "1", &img, false);
    reg.push_image("t/app", "2", &img, false);
    let (_d, store, opts) = setup();
    let a = pull(&store, &r(&format!("{}/t/app:1", reg.host)), &opts).unwrap();
    let disk = store.disk_path(&a.id);
    let m = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let b = pull(&store, &r(&format!("{}/t/app:2", reg.host)), &opts).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        m,
        "disk rebuilt"
    );
    assert_eq!(store.records().unwrap().len(), 2);
}

/// Every event a pull reports, in order (bytes summed per layer).
#[derive(Debug, Default)]
struct Recorder(
    std::sync::Mutex<Vec<String>>,
    std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
);

impl hyperxl_image::pull::PullObserver for Recorder {
    fn layers(&self, layers: &[(hyperxl_image::digest::Digest, u64, bool)]) {
        for (d, size, present) in layers {
            self.0
                .lock()
                .unwrap()
                .push(format!("layer {d} {size} {present}"));
        }
    }
    fn layer_started(&self, layer: &hyperxl_image::digest::Digest) {
        self.1.lock().unwrap().insert(layer.to_string(), 0);
    }
    fn layer_bytes(&self, layer: &hyperxl_image::digest::Digest, n: u64) {
        *self.1.lock().unwrap().entry(layer.to_string()).or_default() += n;
    }
    fn layer_done(&self, layer: &hyperxl_image::digest::Digest) {
        let n = self.1.lock().unwrap()[&layer.to_string()];
        self.0.lock().unwrap().push(format!("done {layer} {n}"));
    }
    fn building_disk(&self) {
        self.0.lock().unwrap().push("disk".into());
    }
    fn finished(&self) {
        self.0.lock().unwrap().push("finished".into());
    }
}

/// The observer hears of every layer with its size, every byte of each download, the
/// disk build and the end; a second pull of an image sharing layers reports them as
/// present and downloads nothing.
#[test]
fn a_pull_reports_layers_bytes_and_the_disk_build() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    reg.push_image("t/app", "1", &img, false);
    let (_d, store, mut opts) = setup();
    let rec = std::sync::Arc::new(Recorder::default());
    opts.observer = Some(rec.clone());
    let a = pull(&store, &r(&format!("{}/t/app:1", reg.host)), &opts).unwrap();
    let events = rec.0.lock().unwrap().clone();
    let n = a.layers.len();
    assert!(n >= 2, "{events:?}");
    for l in &a.layers {
        assert!(
            events.contains(&format!("layer {} {} false", l.digest, l.size)),
            "{events:?}"
        );
        assert!(
            events.contains(&format!("done {} {}", l.digest, l.size)),
            "{events:?}"
        );
    }
    assert_eq!(
        &events[events.len() - 2..],
        ["disk", "finished"],
        "{events:?}"
    );

    let mut more = standard_layers();
    more.push(Layer::new().file("extra", b"x").tar());
    reg.push_image("t/app", "2", &TestImage::new(more), false);
    let rec2 = std::sync::Arc::new(Recorder::default());
    opts.observer = Some(rec2.clone());
    let b = pull(&store, &r(&format!("{}/t/app:2", reg.host)), &opts).unwrap();
    let events = rec2.0.lock().unwrap().clone();
    for l in &b.layers[..n] {
        assert!(
            events.contains(&format!("layer {} {} true", l.digest, l.size)),
            "{events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| e.starts_with(&format!("done {}", l.digest))),
            "{events:?}"
        );
    }
    let last = &b.layers[n];
    assert!(
        events.contains(&format!("done {} {}", last.digest, last.size)),
        "{events:?}"
    );

    // A failed pull still ends with `finished`.
    let rec3 = std::sync::Arc::new(Recorder::default());
    opts.observer = Some(rec3.clone());
    pull(&store, &r(&format!("{}/t/none:1", reg.host)), &opts).unwrap_err();
    assert_eq!(*rec3.0.lock().unwrap(), ["finished"]);
}

#[test]
fn concurrent_pulls_of_one_image_are_safe() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    reg.push_image("t/app", "1", &img, false);
    let (_d, store, opts) = setup();
    let reference = r(&format!("{}/t/app:1", reg.host));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let store = Store::open(store.root().parent().unwrap()).unwrap();
                pull(&store, &reference, &opts).unwrap();
            });
        }
    });
    assert_eq!(
        list_disk(&store.ensure_disk(&reference).unwrap()),
        standard_listing()
    );
    let p = store.prune().unwrap();
    assert_eq!((p.blobs, p.disks, p.temp_files), (0, 0, 0));
}

/// A registry that serves the manifest and config, then stalls in the middle of the
/// first layer: the pulling process is SIGKILLed there.
fn stalling_registry(img: &TestImage) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let config = img.config();
    let blobs = img.layer_blobs();
    let manifest = manifest_bytes(&config, &blobs, false);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (manifest, config, blobs) = (manifest.clone(), config.clone(), blobs.clone());
            std::thread::spawn(move || loop {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (body, ct, stall) = if path.contains("/manifests/") {
                    (
                        manifest.clone(),
                        "application/vnd.oci.image.manifest.v1+json",
                        false,
                    )
                } else if path.ends_with(&sha(&config)) {
                    (config.clone(), "application/octet-stream", false)
                } else {
                    (blobs[0].0.clone(), "application/octet-stream", true)
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if stall {
                    let _ = stream.write_all(&body[..body.len() / 2]);
                    let _ = stream.flush();
                    std::thread::sleep(std::time::Duration::from_secs(120));
                    return;
                }
                let _ = stream.write_all(&body);
            });
        }
    });
    host
}

/// Run by `killed_pull_then_pull_again_and_prune` in a child process.
#[test]
fn killed_pull_child() {
    let (Ok(state), Ok(host)) = (
        std::env::var("HYPERXL_TEST_CHILD_STATE"),
        std::env::var("HYPERXL_TEST_CHILD_HOST"),
    ) else {
        return;
    };
    let store = Store::open(std::path::Path::new(&state)).unwrap();
    let mut opts = PullOptions::new(std::path::Path::new(&state));
    opts.auth.docker = None;
    let _ = pull(&store, &r(&format!("{host}/t/app:1")), &opts);
    panic!("the pull should have stalled until killed");
}

#[test]
fn killed_pull_then_pull_again_and_prune() {
    // A big incompressible first layer so the stall happens mid-file.
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut layers = standard_layers();
    layers.insert(0, Layer::new().file("noise", &noise).tar());
    let img = TestImage::new(layers);
    let stall = stalling_registry(&img);
    let (_d, store, opts) = setup();
    let state = store.root().parent().unwrap().to_path_buf();
    let before = snapshot(store.root());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_pull_child", "--nocapture"])
        .env("HYPERXL_TEST_CHILD_STATE", &state)
        .env("HYPERXL_TEST_CHILD_HOST", &stall)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the partial layer sits in tmp/.
    let tmp = store.root().join("tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let partial = std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false));
        if partial {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child never started downloading"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Nothing half-done is visible: no record, no blob, no disk.
    assert!(store.records().unwrap().is_empty());
    let after = snapshot(store.root());
    let visible: Vec<_> = after
        .keys()
        .filter(|p| !p.starts_with(&tmp) && !before.contains_key(*p))
        .collect();
    assert!(visible.is_empty(), "visible leftovers: {visible:?}");
    // A fresh pull from a real registry succeeds.
    let reg = TestRegistry::start(false);
    reg.push_image("t/app", "1", &img, false);
    let rec = pull(&store, &r(&format!("{}/t/app:1", reg.host)), &opts).unwrap();
    assert!(store.ensure_disk(&rec.reference).unwrap().exists());
    // The fresh pull found the store lock free and swept the killed pull's staging
    // files; prune has nothing left to remove.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let p = store.prune().unwrap();
    assert_eq!((p.temp_files, p.blobs, p.disks), (0, 0, 0), "{p:?}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(store.ensure_disk(&rec.reference).unwrap().exists());
}

fn fake_for(img: &TestImage, b: common::fake::Behaviour) -> common::fake::FakeRegistry {
    let config = img.config();
    let blobs = img.layer_blobs();
    let manifest = manifest_bytes(&config, &blobs, false);
    let mut all = vec![config];
    all.extend(blobs.into_iter().map(|b| b.0));
    common::fake::serve(manifest, all, b)
}

#[test]
fn bearer_token_auth() {
    let img = TestImage::new(standard_layers());
    let basic = Credentials {
        username: "u".into(),
        password: "p".into(),
    };
    let fake = fake_for(
        &img,
        common::fake::Behaviour {
            bearer: Some(basic.basic()),
            ..Default::default()
        },
    );
    let (_d, store, opts) = setup();
    let reference = r(&format!("{}/t/app:1", fake.host));
    let e = pull(&store, &reference, &opts).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    opts.auth.store(&fake.host, &basic).unwrap();
    let rec = pull(&store, &reference, &opts).unwrap();
    assert_eq!(
        list_disk(&store.ensure_disk(&rec.reference).unwrap()),
        standard_listing()
    );
    // one token for the whole pull, shared by the parallel downloads
    assert_eq!(
        fake.token_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[test]
fn defect9_credentials_are_not_sent_to_a_realm_on_another_host_over_http() {
    // The registry answers over plain http (allowed: it is local) and names a token
    // realm on another host. That answer is not authenticated, so the registry's
    // credentials must not follow it: the token is asked for anonymously.
    let img = TestImage::new(standard_layers());
    let basic = Credentials {
        username: "u".into(),
        password: "p".into(),
    };
    let elsewhere = common::fake::serve_at(
        "127.0.0.2:0",
        Vec::new(),
        Vec::new(),
        common::fake::Behaviour {
            bearer: Some(basic.basic()),
            ..Default::default()
        },
    );
    let fake = fake_for(
        &img,
        common::fake::Behaviour {
            bearer: Some(basic.basic()),
            realm: Some(format!("http://{}/token", elsewhere.host)),
            ..Default::default()
        },
    );
    let (_d, store, opts) = setup();
    opts.auth.store(&fake.host, &basic).unwrap();
    let reference = r(&format!("{}/t/app:1", fake.host));
    let e = pull(&store, &reference, &opts).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    let seen = elsewhere.token_auth.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no token request reached the realm");
    assert!(
        seen.iter().all(|a| a.is_empty()),
        "credentials leaked to the realm: {seen:?}"
    );
}

/// A fake registry serving a manifest with `n` layers of the declared `size` each
/// (the blobs themselves are tiny, or absent).
fn declared_layers(n: usize, size: u64) -> common::fake::FakeRegistry {
    let img = TestImage::new(vec![Layer::new().file("a", b"a").tar()]);
    let config = img.config();
    let (blob, _) = img.layer_blobs().remove(0);
    let layers: Vec<_> = (0..n)
        .map(|_| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&blob), "size": size}))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    common::fake::serve(manifest, vec![config, blob], Default::default())
}

#[test]
fn defect3_too_many_declared_layers_fetch_no_blob() {
    let fake = declared_layers(300, 100);
    let (_d, store, opts) = setup();
    let before = snapshot(store.root());
    let e = pull(&store, &r(&format!("{}/t/app:1", fake.host)), &opts).unwrap_err();
    assert!(
        matches!(
            e,
            PullError::TooManyLayers {
                count: 300,
                limit: 256
            }
        ),
        "{e}"
    );
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(fake.blob_requests.load(SeqCst), 0);
    assert_eq!(snapshot(store.root()), before);
}

#[test]
fn defect3_declared_image_size_over_the_limit_fetches_no_blob() {
    let fake = declared_layers(5, 7 << 30);
    let (_d, store, opts) = setup();
    let e = pull(&store, &r(&format!("{}/t/app:1", fake.host)), &opts).unwrap_err();
    assert!(matches!(e, PullError::ImageTooLarge { .. }), "{e}");
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(fake.blob_requests.load(SeqCst), 0);
}

#[test]
fn defect3_layer_beyond_free_space_fetches_no_blob() {
    // Limits raised out of the way: only the free-space check stands.
    let fake = declared_layers(1, 1 << 60);
    let (_d, store, opts) = setup();
    let store = store.with_limits(hyperxl_image::Limits {
        max_blob_bytes: u64::MAX,
        max_total_bytes: u64::MAX,
        ..Default::default()
    });
    let e = pull(&store, &r(&format!("{}/t/app:1", fake.host)), &opts).unwrap_err();
    assert!(
        matches!(e, PullError::Store(StoreError::NoSpace { .. })),
        "{e}"
    );
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(fake.blob_requests.load(SeqCst), 0);
}

#[test]
fn transient_errors_are_retried() {
    let img = TestImage::new(standard_layers());
    let fake = fake_for(
        &img,
        common::fake::Behaviour {
            fail_blobs: 2,
            short_blobs: 1,
            ..Default::default()
        },
    );
    let (_d, store, mut opts) = setup();
    opts.attempts = 4;
    let rec = pull(&store, &r(&format!("{}/t/app:1", fake.host)), &opts).unwrap();
    assert_eq!(
        list_disk(&store.ensure_disk(&rec.reference).unwrap()),
        standard_listing()
    );
    let p = store.prune().unwrap();
    assert_eq!((p.blobs, p.disks), (0, 0));
}

#[test]
fn persistent_errors_fail_cleanly() {
    let img = TestImage::new(standard_layers());
    let fake = fake_for(
        &img,
        common::fake::Behaviour {
            fail_blobs: 1000,
            ..Default::default()
        },
    );
    let (_d, store, opts) = setup();
    let before = snapshot(store.root());
    let e = pull(&store, &r(&format!("{}/t/app:1", fake.host)), &opts).unwrap_err();
    assert!(matches!(e, PullError::Status { status: 500, .. }), "{e}");
    assert_eq!(snapshot(store.root()), before);
}

/// Interop with a real client: skopeo converts our OCI layout to Docker v2s2 (it
/// recompresses the layers) and pushes it; the pull must give the same tree.
#[test]
fn skopeo_pushed_v2s2_image() {
    let reg = TestRegistry::start(false);
    let img = TestImage::new(standard_layers());
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_dir(&layout, &img.oci_files("x"));
    for (format, tag) in [("v2s2", "docker"), ("oci", "oci")] {
        let out = std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--format",
                format,
            ])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/skopeo/app:{tag}", reg.host))
            .output()
            .expect("skopeo is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_d, store, opts) = setup();
        let rec = pull(&store, &r(&format!("{}/skopeo/app:{tag}", reg.host)), &opts).unwrap();
        assert_eq!(
            list_disk(&store.ensure_disk(&rec.reference).unwrap()),
            standard_listing()
        );
    }
}

#[test]
fn pull_if_missing_uses_the_store_first() {
    let img = TestImage::new(standard_layers());
    let fake = fake_for(&img, common::fake::Behaviour::default());
    let (_d, store, opts) = setup();
    let reference = r(&format!("{}/t/app:1", fake.host));
    hyperxl_image::pull::pull_if_missing(&store, &reference, &opts).unwrap();
    let n = fake.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= 5);
    hyperxl_image::pull::pull_if_missing(&store, &reference, &opts).unwrap();
    assert_eq!(
        fake.requests.load(std::sync::atomic::Ordering::SeqCst),
        n,
        "network used"
    );
}
