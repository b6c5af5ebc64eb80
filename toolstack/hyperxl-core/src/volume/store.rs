//! Named volumes under `STATE_DIR/volumes`.
//!
//! ```text
//! volumes/.lock               serialises creation and removal
//! volumes/NAME/volume.json    the record (size, labels, anonymous or not)
//! volumes/NAME/data.ext4      a sparse file with an ext4 filesystem dom0 made
//! ```
//!
//! dom0 makes the filesystem (mkfs on an empty file) and never mounts it afterwards: once
//! a guest wrote to it, it is hostile data. A volume appears whole or not at all: it is
//! built in a temporary directory and renamed into place.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::vm::files;

/// The size of a volume created without `--size` (sparse: it costs what is written).
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// The smallest volume: room for ext4's journal and metadata with space to spare.
pub const MIN_SIZE: u64 = 16 << 20;
/// The largest volume.
pub const MAX_SIZE: u64 = 16 << 40;
/// The file holding a volume's filesystem.
const DATA_FILE: &str = "data.ext4";
const RECORD_FILE: &str = "volume.json";

/// One volume's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Size of its filesystem in bytes.
    pub size: u64,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Made for an image's `VOLUME` entry, not named by the user.
    #[serde(default)]
    pub anonymous: bool,
    /// Labels (a deployment puts its name here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A name Docker would not accept either.
    #[error("invalid volume name {0:?}: use letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)")]
    BadName(String),
    /// No volume of that name.
    #[error("volume {0:?} not found (see `hyperxl volume ls`)")]
    Unknown(String),
    /// A size outside the limits, or not a size.
    #[error("invalid volume size {0:?}: between 16m and 16t, e.g. 512m, 2g")]
    BadSize(String),
    /// Used by a VM.
    #[error("volume {name:?} is in use by VM {vm}")]
    InUse {
        /// The volume.
        name: String,
        /// A VM using it.
        vm: String,
    },
    /// mkfs failed.
    #[error("making the filesystem of volume {name:?}: {source}")]
    Mkfs {
        /// The volume.
        name: String,
        /// Why.
        #[source]
        source: hyperxl_image::run::CommandError,
    },
    /// A record that does not parse.
    #[error("the record of volume {0:?} is corrupt")]
    Corrupt(String),
    /// I/O on the store.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a volume name (Docker's rule, at most 64 bytes; no `/`).
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let ok = (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.to_string()))
    }
}

/// Parses a size such as `512m`, `2g`, `1073741824` and checks it is within the limits.
pub fn parse_size(s: &str) -> Result<u64, VolumeError> {
    let bytes = parse_bytes(s).ok_or_else(|| VolumeError::BadSize(s.to_string()))?;
    if (MIN_SIZE..=MAX_SIZE).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(VolumeError::BadSize(s.to_string()))
    }
}

/// `N`, `Nk`, `Nm`, `Ng`, `Nt` (an optional trailing `b`, any case) in bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = match lower.strip_suffix('b') {
        Some(r) if r.ends_with(|c: char| c.is_ascii_alphabetic()) => r.to_string(),
        Some(r) if !r.is_empty() => r.to_string(),
        _ => lower,
    };
    let (num, shift) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 10),
        'm' => (&lower[..lower.len() - 1], 20),
        'g' => (&lower[..lower.len() - 1], 30),
        't' => (&lower[..lower.len() - 1], 40),
        _ => (lower.as_str(), 0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The volume store.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

/// The held store lock; released on drop.
pub struct VolumeLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl VolumeStore {
    /// Opens (creating) `STATE_DIR/volumes`.
    pub fn open(state_dir: &Path) -> Result<Self, VolumeError> {
        let root = state_dir.join("volumes");
        files::private_subdir(&root)
            .map_err(|e| io_err("creating", &root)(io::Error::other(e.to_string())))?;
        Ok(Self { root })
    }

    /// Takes the store lock.
    pub fn lock(&self) -> Result<VolumeLock, VolumeError> {
        let path = self.root.join(".lock");
        files::lock(&path, true)
            .map_err(io_err("locking", &path))?
            .map(VolumeLock)
            .ok_or_else(|| io_err("locking", &path)(io::ErrorKind::WouldBlock.into()))
    }

    /// `STATE_DIR/volumes`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The file holding volume `name`'s filesystem.
    pub fn data_file(&self, name: &str) -> PathBuf {
        self.dir(name).join(DATA_FILE)
    }

    /// A volume's record.
    pub fn load(&self, name: &str) -> Result<Volume, VolumeError> {
        validate_name(name)?;
        let path = self.dir(name).join(RECORD_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::Unknown(name.to_string()))
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|_| VolumeError::Corrupt(name.to_string()))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("listing", &self.root))? {
            let entry = entry.map_err(io_err("listing", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || validate_name(&name).is_err() {
                continue;
            }
            match self.load(&name) {
                Ok(v) => out.push(v),
                // Removed meanwhile.
                Err(VolumeError::Unknown(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Bytes the volume's file takes on dom0's disk (it is sparse).
    pub fn allocated(&self, name: &str) -> u64 {
        fs::metadata(self.data_file(name)).map_or(0, |m| m.blocks() * 512)
    }

    /// Creates volume `name` unless it exists; returns it and whether it was made now.
    pub fn ensure(
        &self,
        name: &str,
        size: u64,
        anonymous: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<(Volume, bool), VolumeError> {
        validate_name(name)?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(VolumeError::BadSize(size.to_string()));
        }
        let _lock = self.lock()?;
        match self.load(name) {
            Ok(v) => return Ok((v, false)),
            Err(VolumeError::Unknown(_)) => {}
            Err(e) => return Err(e),
        }
        let volume = Volume {
            name: name.to_string(),
            size,
            created_at: crate::vm::state::now(),
            anonymous,
            labels,
        };
        let tmp = self
            .root
            .join(format!(".new-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let made = self
            .build(&tmp, &volume)
            .and_then(|()| fs::rename(&tmp, self.dir(name)).map_err(io_err("renaming", &tmp)));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _ = files::sync_dir(&self.root);
        Ok((volume, true))
    }

    fn build(&self, dir: &Path, volume: &Volume) -> Result<(), VolumeError> {
        files::private_subdir(dir)
            .map_err(|e| io_err("creating", dir)(io::Error::other(e.to_string())))?;
        let data = dir.join(DATA_FILE);
        make_ext4(&data, volume.size, &volume.name)?;
        let json = serde_json::to_vec_pretty(volume).map_err(io::Error::other);
        let record = dir.join(RECORD_FILE);
        json.and_then(|j| files::write_atomic(&record, &j))
            .map_err(io_err("writing", &record))
    }

    /// Removes volume `name` (the caller checked no VM uses it).
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        validate_name(name)?;
        let _lock = self.lock()?;
        let dir = self.dir(name);
        if !dir.join(RECORD_FILE).exists() {
            return Err(VolumeError::Unknown(name.to_string()));
        }
        // Out of sight first, so a half-removed volume is never found by name.
        let gone = self.root.join(format!(".rm-{name}-{}", std::process::id()));
        fs::rename(&dir, &gone).map_err(io_err("removing", &dir))?;
        fs::remove_dir_all(&gone).map_err(io_err("removing", &gone))
    }
}

/// Makes a sparse file of `size` bytes at `path` (which must not exist) with an empty
/// ext4 filesystem, its root owned by root. dom0 writes this filesystem once, here.
pub fn make_ext4(path: &Path, size: u64, label: &str) -> Result<(), VolumeError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("creating", path))?;
    let sized = file.set_len(size).map_err(io_err("sizing", path));
    drop(file);
    let label: String = label.chars().take(16).collect();
    let made = sized.and_then(|()| {
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-m", "0", "-L", &label])
            .args([
                "-E",
                "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(path);
        hyperxl_image::run::output(&mut cmd).map_err(|source| VolumeError::Mkfs {
            name: label.clone(),
            source,
        })
    });
    if made.is_err() {
        // Nothing half-made stays behind.
        let _ = fs::remove_file(path);
    }
    made.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["data", "db_1", "a.b-c", "0", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "../x", ".x", "-x", "a b", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("2gb"), Some(2 << 30));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("100b"), Some(100));
        for bad in ["", "g", "-1m", "1.5g", "1x", "99999999999999999999"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
        assert!(parse_size("16m").is_ok());
        assert!(matches!(parse_size("1m"), Err(VolumeError::BadSize(_))));
        assert!(matches!(parse_size("17t"), Err(VolumeError::BadSize(_))));
    }

    #[test]
    fn create_list_remove() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipped: no mkfs.ext4");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        let (v, made) = store
            .ensure("data", MIN_SIZE, false, BTreeMap::new())
            .unwrap();
        assert!(made);
        assert_eq!(v.size, MIN_SIZE);
        let meta = fs::metadata(store.data_file("data")).unwrap();
        assert_eq!(meta.len(), MIN_SIZE);
        // Sparse: mkfs wrote metadata only.
        assert!(store.allocated("data") < MIN_SIZE / 2);
        let (_, made) = store
            .ensure("data", 1 << 30, false, BTreeMap::new())
            .unwrap();
        assert!(!made, "an existing volume is kept as it is");
        assert_eq!(store.list().unwrap(), vec![v]);
        store.remove("data").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.remove("data"), Err(VolumeError::Unknown(_))));
        // Nothing is left behind but the lock.
        let left: Vec<_> = fs::read_dir(dir.path().join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(".lock")]);
    }
}
