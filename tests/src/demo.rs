//! The demo image the end-to-end tests, `scripts/demo` and the benchmarks run: a
//! `docker save` tarball of `demo:latest` built here, with no Docker engine.
//!
//! One layer: static busybox with a few applets, users root/nobody/app, `/srv`, and
//! `/bin/xs` (the static xenstore tool `scripts/build-guest` builds; and `/bin/vchan-hostile`,
//! `/bin/conn-flood`) so tests can probe
//! from inside a guest what xenstore lets it do. The config sets Cmd, Env, WorkingDir
//! and User, so a test can see each of them honoured.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Where `scripts/build-guest` installed the guest artefacts (and `xs`).
pub fn guest_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HYPERXL_GUEST_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("HYPERXL_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hyperxl"),
        PathBuf::from,
    );
    cache.join("guest/current")
}

/// The busybox applets linked into the image.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "pwd", "env", "sleep", "true", "false", "hostname", "ls", "head",
    "grep", "seq", "dd", "tr", "httpd", "wget", "ip", "nc", "ping", "mkdir", "kill", "timeout",
    "ifconfig", "sync", "stat", "touch", "rm", "ln", "readlink", "wc", "chmod", "df", "tail",
    "mount", "md5sum", "chown", "pidof", "yes", "stty", "tty",
];

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn add(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&str>,
    ) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l)?;
        }
        self.0.append_data(&mut h, path, data)
    }
}

/// The build host's static busybox, the one binary both test images carry.
fn read_busybox() -> io::Result<Vec<u8>> {
    fs::read("/bin/busybox")
        .map_err(|e| io::Error::new(e.kind(), format!("/bin/busybox (busybox-static): {e}")))
}

fn layer() -> io::Result<Vec<u8>> {
    let mut l = Layer(tar::Builder::new(Vec::new()));
    for d in ["bin", "etc", "srv", "tmp"] {
        l.add(d, tar::EntryType::Directory, 0o755, b"", None)?;
    }
    let busybox = read_busybox()?;
    l.add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    )?;
    for a in APPLETS {
        l.add(
            &format!("bin/{a}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        )?;
    }
    // Static test tools scripts/build-guest builds: `xs` (xenstore), `vchan-hostile`
    // (a guest process that corrupts an exec session's ring) and `conn-flood` (a guest
    // that opens connection after connection).
    for tool in ["xs", "vchan-hostile", "conn-flood"] {
        let path = guest_dir().join(tool);
        let data = fs::read(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} (run scripts/build-guest): {e}", path.display()),
            )
        })?;
        l.add(
            &format!("bin/{tool}"),
            tar::EntryType::Regular,
            0o755,
            &data,
            None,
        )?;
    }
    l.add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        None,
    )?;
    l.add(
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n",
        None,
    )?;
    l.0.into_inner()
}

/// Writes the `docker save` tarball of `demo:latest` to `path`.
pub fn write_docker_save(path: &Path) -> io::Result<()> {
    write_image(
        path,
        "demo:latest",
        r#""Env":["PATH=/bin","FOO=image"],"Cmd":["sh","-c","echo image-cmd FOO=$FOO; pwd; id -un"],"WorkingDir":"/srv","User":"app""#,
    )
}

/// Writes `scratch:latest`: one static binary (busybox, with no applet links: no `sh`,
/// no `tar` on PATH), run as `busybox sleep`, and files for `hyperxl cp` to fetch:
/// `/data` (a 0600 file, a directory with an executable, a set-uid file, a symlink
/// pointing out of the tree), plus what a guest needs to subvert its own copy helper:
/// `/hostile.tar` (a stream whose second entry climbs out with `..`) and `/evil.sh`,
/// which prints it.
pub fn write_scratch_image(path: &Path) -> io::Result<()> {
    let mut l = Layer(tar::Builder::new(Vec::new()));
    for d in ["bin", "data", "data/sub"] {
        l.add(d, tar::EntryType::Directory, 0o755, b"", None)?;
    }
    let busybox = read_busybox()?;
    l.add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    )?;
    l.add(
        "data/motd",
        tar::EntryType::Regular,
        0o600,
        b"hello scratch\n",
        None,
    )?;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    l.add(
        "data/sub/deep.bin",
        tar::EntryType::Regular,
        0o755,
        &blob,
        None,
    )?;
    l.add(
        "data/suid",
        tar::EntryType::Regular,
        0o4755,
        b"#!/bin/busybox sh\n",
        None,
    )?;
    l.add(
        "data/link",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("/etc/passwd"),
    )?;
    l.add(
        "hostile.tar",
        tar::EntryType::Regular,
        0o644,
        &hostile_copy_stream(),
        None,
    )?;
    l.add(
        "evil.sh",
        tar::EntryType::Regular,
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox cat /hostile.tar\n",
        None,
    )?;
    write_image_layer(
        path,
        "scratch:latest",
        r#""Env":["PATH=/bin"],"Cmd":["/bin/busybox","sleep","1000000"]"#,
        l.0.into_inner()?,
    )
}

/// A tar stream as a subverted copy helper would send it: `data/`, then an entry named
/// `data/../../../tmp/outside/pwned` (written raw: the tar crate refuses such names).
fn hostile_copy_stream() -> Vec<u8> {
    let entry = |name: &[u8], kind: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    };
    let mut s = entry(b"data", tar::EntryType::Directory, b"");
    s.extend(entry(
        b"data/../../../tmp/outside/pwned",
        tar::EntryType::Regular,
        b"pwned\n",
    ));
    s.extend_from_slice(&[0u8; 1024]);
    s
}

/// Writes `demovol:latest`: the same layer, run as root, with `VOLUME /var/lib/x` (an
/// image that asks for an anonymous volume).
pub fn write_volume_image(path: &Path) -> io::Result<()> {
    write_image(
        path,
        "demovol:latest",
        r#""Env":["PATH=/bin"],"Cmd":["sh"],"Volumes":{"/var/lib/x":{}}"#,
    )
}

fn write_image(path: &Path, tag: &str, config_body: &str) -> io::Result<()> {
    write_image_layer(path, tag, config_body, layer()?)
}

fn write_image_layer(path: &Path, tag: &str, config_body: &str, layer: Vec<u8>) -> io::Result<()> {
    let layer_id = sha(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{{config_body}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_id}"]}},"history":[]}}"#
    );
    let config_id = sha(config.as_bytes());
    let manifest = format!(
        r#"[{{"Config":"{config_id}.json","RepoTags":["{tag}"],"Layers":["{layer_id}/layer.tar"]}}]"#
    );
    let mut files = BTreeMap::new();
    files.insert("manifest.json".to_string(), manifest.into_bytes());
    files.insert(format!("{config_id}.json"), config.into_bytes());
    files.insert(format!("{layer_id}/layer.tar"), layer);
    let mut b = tar::Builder::new(fs::File::create(path)?);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice())?;
    }
    b.finish()
}
