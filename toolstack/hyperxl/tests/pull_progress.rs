//! `hyperxl pull`'s progress, seen as a user sees it: through a pseudo-terminal (`script`)
//! it draws a line per layer and the disk build; through a pipe it prints no progress
//! at all. The image comes from a real `docker-registry` on 127.0.0.1, pushed there by
//! `skopeo` from an OCI layout this test writes.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry is installed");
    let host = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        child,
        host,
        _dir: dir,
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A one-file uncompressed layer tar holding `size` bytes that do not compress away.
fn layer(name: &str, size: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(size);
    let mut x = name.len() as u32 * 2_654_435_761;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data.as_slice()).unwrap();
    b.into_inner().unwrap()
}

/// Writes an OCI layout of an image with `layers` into `dir`.
fn write_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        d
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/a"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_d = put(config.as_bytes());
    let digests: Vec<String> = layers.iter().map(|l| put(l)).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_d}"), "size": config.len()},
        "layers": layers.iter().zip(&digests).map(|(l, d)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{d}"), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string();
    let manifest_d = put(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_d}"), "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "1"}}],
        })
        .to_string(),
    )
    .unwrap();
}

/// The distinct layer names (12 hex digits) drawn followed by `: {what}`.
fn layers_saying(drawn: &str, what: &str) -> std::collections::BTreeSet<String> {
    let marker = format!(": {what}");
    drawn
        .match_indices(&marker)
        .filter_map(|(i, _)| i.checked_sub(12).map(|s| &drawn[s..i]))
        .filter(|name| name.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

fn push(reg: &Registry, layout: &Path, repo: &str) {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{}/{repo}:1", reg.host))
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hyperxl(state: &Path) -> String {
    format!(
        "{} --state-dir {}",
        env!("CARGO_BIN_EXE_hyperxl"),
        state.display()
    )
}

#[test]
fn a_terminal_sees_each_layer_and_a_pipe_sees_no_progress() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let layers = [
        layer("a", 3 << 20),
        layer("b", 1 << 20),
        layer("c", 64 << 10),
    ];
    write_layout(&layout, &layers);
    push(&reg, &layout, "t/app");
    let image = format!("{}/t/app:1", reg.host);

    // Through a pty: `script` gives the command a terminal and keeps what it drew.
    let state = tmp.path().join("tty");
    let typescript = tmp.path().join("typescript");
    let out = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("{} pull {image}", hyperxl(&state)))
        .arg(&typescript)
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) is installed");
    let drawn = std::fs::read_to_string(&typescript).unwrap();
    assert!(out.status.success(), "{drawn}");
    // skopeo may recompress the layers on the way, so the registry's digests are not
    // the layout's: count the distinct layers the terminal saw complete.
    assert_eq!(
        layers_saying(&drawn, "Download complete").len(),
        3,
        "{drawn}"
    );
    assert!(
        drawn.contains("Building the read-only disk") || drawn.contains("Disk built"),
        "{drawn}"
    );
    assert!(drawn.contains("Digest: sha256:"), "{drawn}");

    // The same image again: every layer is there already.
    let again = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("{} pull {image}", hyperxl(&state)))
        .arg(&typescript)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(again.status.success());
    let drawn = std::fs::read_to_string(&typescript).unwrap();
    let present = layers_saying(&drawn, "Already exists");
    assert_eq!(present.len(), 3, "{drawn}");

    // Through pipes: no progress line, only the digest and the image's name.
    let state = tmp.path().join("pipe");
    let out = Command::new(env!("CARGO_BIN_EXE_hyperxl"))
        .arg("--state-dir")
        .arg(&state)
        .args(["pull", &image])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("Digest: sha256:"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes on a pipe: {stderr:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), image);

    // `-q` on a terminal: nothing on stderr at all.
    let state = tmp.path().join("quiet");
    let out = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} pull -q {image} 2>&1 >/dev/null",
            hyperxl(&state)
        ))
        .arg(&typescript)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let drawn = std::fs::read_to_string(&typescript).unwrap();
    assert!(
        !present.iter().any(|l| drawn.contains(l.as_str())),
        "{drawn}"
    );
    assert!(!drawn.contains("Digest"), "{drawn}");
}
