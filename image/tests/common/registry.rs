//! A real `docker-registry` on 127.0.0.1, and a tiny push client.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub struct TestRegistry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub host: String,
    pub auth: Option<(String, String)>,
}

impl TestRegistry {
    pub fn start(htpasswd: bool) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut auth_cfg = String::new();
        let mut auth = None;
        if htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", "tester", "s3cret"])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).unwrap();
            auth_cfg = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            );
            auth = Some(("tester".into(), "s3cret".into()));
        }
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_cfg}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed");
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&host).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TestRegistry {
            child,
            dir,
            host,
            auth,
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn authz(&self) -> Option<String> {
        self.auth.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = super::sha(data);
        let a = Self::agent();
        let mut req = a.post(format!("http://{}/v2/{repo}/blobs/uploads/", self.host));
        if let Some(z) = self.authz() {
            req = req.header("Authorization", z);
        }
        let resp = req.send_empty().unwrap();
        assert_eq!(resp.status(), 202, "upload start");
        let loc = resp
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.host)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let mut req = a
            .put(format!("{loc}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream");
        if let Some(z) = self.authz() {
            req = req.header("Authorization", z);
        }
        let resp = req.send(data).unwrap();
        assert_eq!(resp.status(), 201, "upload finish");
        digest
    }

    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        data: &[u8],
    ) -> String {
        let a = Self::agent();
        let mut req = a
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host
            ))
            .header("Content-Type", media_type);
        if let Some(z) = self.authz() {
            req = req.header("Authorization", z);
        }
        let mut resp = req.send(data).unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            201,
            "manifest push: {}",
            resp.body_mut().read_to_string().unwrap_or_default()
        );
        super::sha(data)
    }

    /// Pushes an image; `docker` selects Docker v2s2 media types. Returns the manifest
    /// bytes.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        img: &super::TestImage,
        docker: bool,
    ) -> Vec<u8> {
        let config = img.config();
        self.push_blob(repo, &config);
        let blobs = img.layer_blobs();
        for (b, _) in &blobs {
            self.push_blob(repo, b);
        }
        let manifest = manifest_bytes(&config, &blobs, docker);
        let mt = if docker {
            "application/vnd.docker.distribution.manifest.v2+json"
        } else {
            "application/vnd.oci.image.manifest.v1+json"
        };
        self.push_manifest(repo, tag, mt, &manifest);
        manifest
    }

    /// The file holding a blob in the registry's storage (to tamper with it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

pub fn manifest_bytes(config: &[u8], blobs: &[(Vec<u8>, &str)], docker: bool) -> Vec<u8> {
    use serde_json::json;
    let (mt, cmt, lmt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": cmt, "digest": super::sha(config), "size": config.len()},
        "layers": blobs.iter().map(|(b, _)| json!({"mediaType": lmt, "digest": super::sha(b), "size": b.len()})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
