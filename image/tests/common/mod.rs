//! Test helpers: build layers, OCI layouts and `docker save` archives in Rust, read
//! squashfs disks back with `unsquashfs -lln`.
#![allow(dead_code)]

pub mod fake;
pub mod registry;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One tar layer built entry by entry. Names are written raw into the header, so
/// hostile names (`../x`, `/abs`) get through exactly as an attacker would write them.
#[derive(Default)]
pub struct Layer {
    builder: Option<tar::Builder<Vec<u8>>>,
}

pub const MTIME: u64 = 1_600_000_000;

impl Layer {
    pub fn new() -> Self {
        Layer {
            builder: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn raw(
        &mut self,
        name: &str,
        t: EntryType,
        mode: u32,
        owner: (u64, u64),
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            assert!(name.len() < 100, "test names stay short");
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.as_mut().unwrap().append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(name, EntryType::Directory, mode, (0, 0), None, b"")
    }
    pub fn dir_owned(&mut self, name: &str, mode: u32, owner: (u64, u64)) -> &mut Self {
        self.raw(name, EntryType::Directory, mode, owner, None, b"")
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, EntryType::Regular, 0o644, (0, 0), None, data)
    }
    pub fn file_full(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        owner: (u64, u64),
    ) -> &mut Self {
        self.raw(name, EntryType::Regular, mode, owner, None, data)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, 0o777, (0, 0), Some(target), b"")
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, 0o644, (0, 0), Some(target), b"")
    }
    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.raw(&p, EntryType::Regular, 0o644, (0, 0), None, b"")
    }
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.raw(
            &format!("{dir}/.wh..wh..opq"),
            EntryType::Regular,
            0o644,
            (0, 0),
            None,
            b"",
        )
    }
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(EntryType::Char);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.builder.as_mut().unwrap().append(&h, &b""[..]).unwrap();
        self
    }
    /// A file or symlink with names of any length (GNU long-name records).
    pub fn long(&mut self, name: &str, link: Option<&str>, data: &[u8]) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        let b = self.builder.as_mut().unwrap();
        match link {
            Some(l) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, l).unwrap();
            }
            None => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, data).unwrap();
            }
        }
        self
    }
    /// PAX records (`SCHILY.xattr.*`, `uid`, ...) for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .as_mut()
            .unwrap()
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }
    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Fifo, 0o600, (0, 0), None, b"")
    }
    pub fn entry_type(&mut self, name: &str, t: EntryType) -> &mut Self {
        self.raw(name, t, 0o644, (0, 0), None, b"")
    }
    /// The uncompressed tar.
    pub fn tar(&mut self) -> Vec<u8> {
        self.builder.take().unwrap().into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// An image as blobs: layer tars (uncompressed) and how to store them.
#[derive(Clone)]
pub struct TestImage {
    pub layers: Vec<Vec<u8>>,
    pub compress: Compress,
    pub config_extra: serde_json::Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    None,
    Gzip,
    Zstd,
}

impl TestImage {
    pub fn new(layers: Vec<Vec<u8>>) -> Self {
        TestImage {
            layers,
            compress: Compress::Gzip,
            config_extra: json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo hi"], "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/", "User": "0"}),
        }
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha(l)).collect()
    }

    pub fn config(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2020-09-13T12:26:40Z",
            "config": self.config_extra,
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
            "history": [],
        }))
        .unwrap()
    }

    pub fn layer_blobs(&self) -> Vec<(Vec<u8>, &'static str)> {
        self.layers
            .iter()
            .map(|l| match self.compress {
                Compress::None => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Compress::Gzip => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
                Compress::Zstd => (zstd(l), "application/vnd.oci.image.layer.v1.tar+zstd"),
            })
            .collect()
    }

    /// OCI manifest bytes for given config bytes and layer blobs.
    pub fn manifest(config: &[u8], blobs: &[(Vec<u8>, &str)]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": config.len()},
            "layers": blobs.iter().map(|(b, mt)| json!({"mediaType": mt, "digest": sha(b), "size": b.len()})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// Writes an OCI image layout directory; returns the files written (name -> bytes).
    pub fn oci_files(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        let config = self.config();
        let blobs = self.layer_blobs();
        let manifest = Self::manifest(&config, &blobs);
        let mut files = BTreeMap::new();
        files.insert(
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(&manifest), "size": manifest.len(),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"},
            }],
        });
        files.insert("index.json".into(), serde_json::to_vec(&index).unwrap());
        for b in [config.clone(), manifest.clone()]
            .into_iter()
            .chain(blobs.into_iter().map(|b| b.0))
        {
            files.insert(format!("blobs/sha256/{}", &sha(&b)[7..]), b);
        }
        files
    }

    /// `docker save` layout: manifest.json, <hex>.json config, <id>/layer.tar.
    pub fn docker_save_files(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        let config = self.config();
        let chex = sha(&config)[7..].to_string();
        let mut files = BTreeMap::new();
        let mut layer_names = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let n = format!("{:064x}/layer.tar", i + 1);
            files.insert(n.clone(), l.clone());
            layer_names.push(n);
        }
        files.insert(format!("{chex}.json"), config);
        files.insert(
            "manifest.json".into(),
            serde_json::to_vec(&json!([{"Config": format!("{chex}.json"), "RepoTags": [name], "Layers": layer_names}])).unwrap(),
        );
        files
    }
}

pub fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (n, b) in files {
        let p = dir.join(n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b).unwrap();
    }
}

pub fn write_tar(path: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (n, data) in files {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, n, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

/// `unsquashfs -lln` of a disk: one line per path, `MODE UID/GID PATH[ -> TARGET]`,
/// with the `squashfs-root` prefix removed and the root shown as `/`.
pub fn list_disk(disk: &Path) -> Vec<String> {
    String::from_utf8(unsquashfs(&["-lln".as_ref(), disk.as_os_str()]))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let toks: Vec<&str> = l.split_whitespace().collect();
            let i = toks.iter().position(|t| t.starts_with("squashfs-root"))?;
            let path = toks[i].strip_prefix("squashfs-root").unwrap();
            let path = if path.is_empty() { "/" } else { path };
            let mut s = format!("{} {} {}", toks[0], toks[1], path);
            if toks[0].starts_with('c') || toks[0].starts_with('b') {
                s = format!(
                    "{} {} {} {}",
                    toks[0],
                    toks[1],
                    toks[2..i - 2].join(""),
                    path
                );
            }
            if toks.len() > i + 1 {
                s.push(' ');
                s.push_str(&toks[i + 1..].join(" "));
            }
            Some(s)
        })
        .collect()
}

/// Every path under `dir` with its size (directories as -1), for "unchanged" checks.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, i64> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, i64>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                out.insert(e.path(), -1);
                walk(&e.path(), out);
            } else {
                out.insert(e.path(), m.len() as i64);
            }
        }
    }
    if dir.exists() {
        walk(dir, &mut out);
    }
    out
}

/// The superblock and inode statistics `unsquashfs -stat` prints for a disk.
pub fn disk_stats(disk: &Path) -> String {
    String::from_utf8(unsquashfs(&["-stat".as_ref(), disk.as_os_str()])).unwrap()
}

/// Reads a disk file's content with `unsquashfs -cat`.
pub fn cat(disk: &Path, path: &str) -> Vec<u8> {
    unsquashfs(&["-cat".as_ref(), disk.as_os_str(), path.as_ref()])
}

/// `unsquashfs ARGS` (times in UTC): its stdout; fails the test with its stderr.
fn unsquashfs(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new("unsquashfs")
        .env("TZ", "UTC")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The reference multi-layer image: whiteout, opaque dir, hardlink, symlinks, device,
/// fifo, setuid, owners, sticky dir.
pub fn standard_layers() -> Vec<Vec<u8>> {
    let l1 = Layer::new()
        .dir("bin/", 0o755)
        .file_full("bin/sh", b"#!shell", 0o755, (0, 0))
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/gone", b"to be whited out")
        .dir("opt/", 0o755)
        .dir("opt/app/", 0o750)
        .file("opt/app/old1", b"old1")
        .dir("opt/app/sub/", 0o755)
        .file("opt/app/sub/old2", b"old2")
        .dir("usr/", 0o755)
        .dir("usr/share/", 0o755)
        .dir("usr/share/doc/", 0o755)
        .file("usr/share/doc/a", b"a")
        .file("usr/share/doc/b", b"b")
        .dir("tmp/", 0o1777)
        .dir("dev/", 0o755)
        .chardev("dev/null", 1, 3)
        .fifo("dev/fifo")
        .tar();
    let l2 = Layer::new()
        .whiteout("etc", "gone")
        .whiteout("usr/share", "doc")
        .dir("opt/app/", 0o700)
        .opaque("opt/app")
        .file("opt/app/new", b"new")
        .hardlink("bin/sh-link", "bin/sh")
        .symlink("bin/ls", "sh")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .dir_owned("home/", 0o755, (0, 0))
        .dir_owned("home/user/", 0o700, (1000, 1000))
        .file_full("home/user/suid", b"suid", 0o4755, (1000, 100))
        .tar();
    let l3 = Layer::new()
        .file("usr/share/doc/c", b"c")
        .hardlink("home/user/link2", "bin/sh")
        .tar();
    vec![l1, l2, l3]
}

/// What `unsquashfs -lln` must show for [`standard_layers`].
pub fn standard_listing() -> Vec<String> {
    [
        "drwxr-xr-x 0/0 /",
        "drwxr-xr-x 0/0 /bin",
        "lrwxrwxrwx 0/0 /bin/ls -> sh",
        "-rwxr-xr-x 0/0 /bin/sh",
        "-rwxr-xr-x 0/0 /bin/sh-link",
        "drwxr-xr-x 0/0 /dev",
        "prw------- 0/0 /dev/fifo",
        "crw-rw-rw- 0/0 1,3 /dev/null",
        "drwxr-xr-x 0/0 /etc",
        "lrwxrwxrwx 0/0 /etc/localtime -> /usr/share/zoneinfo/UTC",
        "-rw-r--r-- 0/0 /etc/passwd",
        "drwxr-xr-x 0/0 /home",
        "drwx------ 1000/1000 /home/user",
        "-rwxr-xr-x 0/0 /home/user/link2",
        "-rwsr-xr-x 1000/100 /home/user/suid",
        "drwxr-xr-x 0/0 /opt",
        "drwx------ 0/0 /opt/app",
        "-rw-r--r-- 0/0 /opt/app/new",
        "drwxrwxrwt 0/0 /tmp",
        "drwxr-xr-x 0/0 /usr",
        "drwxr-xr-x 0/0 /usr/share",
        "drwxr-xr-x 0/0 /usr/share/doc",
        "-rw-r--r-- 0/0 /usr/share/doc/c",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Everything a guest can observe in a disk except the root directory's mtime (the one
/// build-time value mksquashfs 4.5.1 puts in): full listing with owners, modes, sizes
/// and mtimes, plus every regular file's content.
pub fn fingerprint(disk: &Path) -> Vec<String> {
    let out = Command::new("unsquashfs")
        .env("TZ", "UTC")
        .arg("-lln")
        .arg(disk)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut fp: Vec<String> = text.lines().skip(1).map(|l| l.to_string()).collect();
    for l in text.lines().skip(1) {
        if l.starts_with('-') {
            let path = l
                .split_whitespace()
                .find(|t| t.starts_with("squashfs-root/"))
                .unwrap();
            let rel = path.strip_prefix("squashfs-root/").unwrap();
            fp.push(format!("{rel}: {}", sha(&cat(disk, rel))));
        }
    }
    fp
}

/// Set in a test binary re-executed by [`in_limited_child`].
const CHILD_ENV: &str = "HYPERXL_TEST_LIMITED_CHILD";

/// For tests where memory (or file size) is the point: returns true in a child process
/// (this test binary re-executed for `test` alone), where the caller does its work and
/// calls [`limit_memory`] / [`limit_file_size`] right before the hostile step; returns
/// false in the parent after checking that the child ran the test and passed (a child
/// killed by an allocation failure or SIGXFSZ fails the test).
pub fn in_limited_child(test: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child for {test} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Limits this process's address space (RLIMIT_AS) to `bytes`.
pub fn limit_memory(bytes: u64) {
    use nix::sys::resource::{setrlimit, Resource};
    assert!(std::env::var_os(CHILD_ENV).is_some(), "only in a child");
    setrlimit(Resource::RLIMIT_AS, bytes, bytes).unwrap();
}

/// Limits the size of any file this process writes (RLIMIT_FSIZE) to `bytes`.
pub fn limit_file_size(bytes: u64) {
    use nix::sys::resource::{setrlimit, Resource};
    assert!(std::env::var_os(CHILD_ENV).is_some(), "only in a child");
    setrlimit(Resource::RLIMIT_FSIZE, bytes, bytes).unwrap();
}

/// One raw 512-byte tar header of type `t` declaring `size` bytes of data.
pub fn raw_header(t: EntryType, name: &str, size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(t);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// `n` MiB of zeros as concatenated gzip members: a multi-GiB stream in a few KiB per
/// GiB, cheap to build (layers are read with a multi-member gzip decoder).
pub fn gzip_zeros_mib(n: usize) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = e.finish().unwrap();
    let mut out = Vec::with_capacity(member.len() * n);
    for _ in 0..n {
        out.extend_from_slice(&member);
    }
    out
}
