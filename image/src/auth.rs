//! Registry credentials: `hyperxl login`'s file (`STATE_DIR/auth.json`, mode 0600) and
//! Docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), both
//! in Docker's format (`{"auths": {"host": {"auth": base64("user:pass")}}}`). hyperxl's
//! own file wins. Credential helpers (`credsStore`) are not supported.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Why reading or writing credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("{path}: malformed credentials file")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// An `auth` entry that is not base64 of `user:password`.
    #[error("{path}: bad auth entry for {registry}")]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// The registry.
        registry: String,
    },
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// Where credentials are looked up.
#[derive(Debug, Clone)]
pub struct AuthFiles {
    /// hyperxl's own file (written by `hyperxl login`).
    pub hyperxl: PathBuf,
    /// Docker's config, if any.
    pub docker: Option<PathBuf>,
}

impl AuthFiles {
    /// The default places for a state dir: `STATE_DIR/auth.json`, then Docker's.
    pub fn for_state_dir(state_dir: &Path) -> AuthFiles {
        let docker = std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
            });
        AuthFiles {
            hyperxl: state_dir.join("auth.json"),
            docker,
        }
    }

    /// Credentials for `registry` (`docker.io` also matches Docker's index URL).
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        for path in std::iter::once(&self.hyperxl).chain(self.docker.iter()) {
            let file = read(path)?;
            for key in keys(registry) {
                if let Some(e) = file.auths.get(&key) {
                    return decode(path, registry, e).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Stores credentials in hyperxl's file (atomically, mode 0600).
    pub fn store(&self, registry: &str, creds: &Credentials) -> Result<(), AuthError> {
        let mut file = read(&self.hyperxl)?;
        let raw = format!("{}:{}", creds.username, creds.password);
        file.auths.insert(
            registry.to_string(),
            AuthEntry {
                auth: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
                ..AuthEntry::default()
            },
        );
        write(&self.hyperxl, &file)
    }

    /// Removes credentials from hyperxl's file; returns whether there were any.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthError> {
        let mut file = read(&self.hyperxl)?;
        let had = file.auths.remove(registry).is_some();
        if had {
            write(&self.hyperxl, &file)?;
        }
        Ok(had)
    }
}

fn keys(registry: &str) -> Vec<String> {
    let mut k = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == crate::reference::DOCKER_HUB {
        k.push("https://index.docker.io/v1/".into());
        k.push("index.docker.io".into());
    }
    k
}

fn decode(path: &Path, registry: &str, e: &AuthEntry) -> Result<Credentials, AuthError> {
    let bad = || AuthError::BadEntry {
        path: path.to_path_buf(),
        registry: registry.to_string(),
    };
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Credentials {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(e.auth.as_deref().ok_or_else(bad)?)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

fn read(path: &Path) -> Result<AuthFile, AuthError> {
    match fs::read(path) {
        Ok(d) => serde_json::from_slice(&d).map_err(|source| AuthError::Malformed {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, file: &AuthFile) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&serde_json::to_vec_pretty(file).expect("serialises"))
        .and_then(|_| f.sync_all())
        .map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lookup_remove() {
        let d = tempfile::tempdir().unwrap();
        let docker = d.path().join("docker.json");
        fs::write(
            &docker,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"ZG9jazpodWI="}},"credsStore":"x"}"#,
        )
        .unwrap();
        let files = AuthFiles {
            hyperxl: d.path().join("auth.json"),
            docker: Some(docker),
        };
        let hub = files.lookup("docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("dock", "hub")
        );
        assert_eq!(files.lookup("localhost:5000").unwrap(), None);
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        files.store("localhost:5000", &c).unwrap();
        assert_eq!(files.lookup("localhost:5000").unwrap(), Some(c));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.hyperxl).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(files.remove("localhost:5000").unwrap());
        assert_eq!(files.lookup("localhost:5000").unwrap(), None);
    }
}
