//! Networks and address leases under `STATE_DIR/networks`.
//!
//! ```text
//! networks/.lock              serialises definitions, leases and port checks
//! networks/NAME.json          the definition (bridge, subnet)
//! networks/NAME/leases/IP     one file per leased address, holding the VM's id
//! ```
//!
//! A lease is taken with `O_CREAT|O_EXCL`, so two VMs can never hold one address even
//! without the lock; the lock keeps allocation orderly (lowest free address first).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::subnet::Subnet;
use crate::vm::files;

/// The network a VM joins unless `--network` says otherwise.
pub const DEFAULT_NETWORK: &str = "hyperxl";
/// Its bridge.
pub const DEFAULT_BRIDGE: &str = "hyperxl0";
/// Its subnet (Podman's default range; `HYPERXL_SUBNET` changes it before first use).
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// The longest user network name: its bridge is `hx-NAME`, within Linux's 15 bytes.
pub const MAX_NETWORK_NAME: usize = 12;

/// A network's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    /// Its name.
    pub name: String,
    /// The dom0 bridge its vifs join; dom0 has the gateway address on it.
    pub bridge: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created_at: u64,
}

impl NetworkDef {
    /// dom0's address on the network, the guests' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetStoreError {
    /// No network of that name.
    #[error("network {0:?} not found (see `hyperxl network ls`)")]
    Unknown(String),
    /// A network of that name exists.
    #[error("network {0:?} already exists")]
    Exists(String),
    /// A name hyperxl cannot turn into a bridge name.
    #[error("invalid network name {0:?}: use 1-12 characters from a-z, 0-9, '_' and '-', starting with a letter or digit")]
    BadName(String),
    /// The subnet overlaps another network's.
    #[error("subnet {0} overlaps network {1:?} ({2})")]
    Overlap(Subnet, String, Subnet),
    /// Every guest address is leased.
    #[error("no free address left in network {0:?} ({1})")]
    Exhausted(String, Subnet),
    /// `--ip` outside the guests' range.
    #[error("address {0} is not a guest address of network {1:?} ({2})")]
    OutOfRange(Ipv4Addr, String, Subnet),
    /// `--ip` leased to another VM.
    #[error("address {0} is already in use in network {1:?}")]
    InUse(Ipv4Addr, String),
    /// VMs still hold addresses in it.
    #[error("network {0:?} has {1} VM(s) attached; remove them first")]
    Busy(String, usize),
    /// The subnet setting does not parse.
    #[error(transparent)]
    Subnet(#[from] super::subnet::SubnetError),
    /// The state dir failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetStoreError {
    let path = path.to_path_buf();
    move |source| NetStoreError::Io { what, path, source }
}

/// Checks a user network name.
pub fn validate_name(name: &str) -> Result<(), NetStoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NETWORK_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NetStoreError::BadName(name.to_string()))
    }
}

/// The networks store.
#[derive(Debug, Clone)]
pub struct NetStore {
    root: PathBuf,
}

/// The held store lock; released on drop.
pub struct NetLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl NetStore {
    /// Opens (creating) `STATE_DIR/networks`.
    pub fn open(state_dir: &Path) -> Result<Self, NetStoreError> {
        let root = state_dir.join("networks");
        files::private_subdir(&root).map_err(|e| NetStoreError::Io {
            what: "creating",
            path: root.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(Self { root })
    }

    /// Whether any network was ever defined (nothing to reconcile otherwise).
    pub fn is_empty(&self) -> bool {
        self.list().map(|l| l.is_empty()).unwrap_or(true)
    }

    /// Takes the store lock.
    pub fn lock(&self) -> Result<NetLock, NetStoreError> {
        let path = self.root.join(".lock");
        files::lock(&path, true)
            .map_err(io_err("locking", &path))?
            .map(NetLock)
            .ok_or_else(|| io_err("locking", &path)(io::ErrorKind::WouldBlock.into()))
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.json"))
    }

    fn leases_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join("leases")
    }

    /// A network's definition.
    pub fn load(&self, name: &str) -> Result<NetworkDef, NetStoreError> {
        if name != DEFAULT_NETWORK {
            validate_name(name).map_err(|_| NetStoreError::Unknown(name.into()))?;
        }
        let path = self.def_path(name);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(NetStoreError::Unknown(name.into()))
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| io_err("parsing", &path)(io::Error::other(e)))
    }

    /// The default network, defined on first use. The caller holds the lock.
    pub fn default_network(&self) -> Result<NetworkDef, NetStoreError> {
        match self.load(DEFAULT_NETWORK) {
            Err(NetStoreError::Unknown(_)) => {}
            other => return other,
        }
        let subnet: Subnet = std::env::var("HYPERXL_SUBNET")
            .unwrap_or_else(|_| DEFAULT_SUBNET.into())
            .parse()?;
        let def = NetworkDef {
            name: DEFAULT_NETWORK.into(),
            bridge: DEFAULT_BRIDGE.into(),
            subnet,
            created_at: crate::vm::state::now(),
        };
        self.save(&def)?;
        Ok(def)
    }

    /// Defines a user network; picks a free `10.89.N.0/24` when no subnet is given.
    /// The caller holds the lock.
    pub fn create(&self, name: &str, subnet: Option<Subnet>) -> Result<NetworkDef, NetStoreError> {
        validate_name(name)?;
        if name == DEFAULT_NETWORK || self.def_path(name).exists() {
            return Err(NetStoreError::Exists(name.into()));
        }
        let others = self.list()?;
        let overlap = |s: &Subnet| others.iter().find(|o| o.subnet.overlaps(s));
        let subnet = match subnet {
            Some(s) => {
                if let Some(o) = overlap(&s) {
                    return Err(NetStoreError::Overlap(s, o.name.clone(), o.subnet));
                }
                s
            }
            None => (0..=255u8)
                .filter_map(|n| Subnet::new(Ipv4Addr::new(10, 89, n, 0), 24).ok())
                .find(|s| overlap(s).is_none())
                .ok_or_else(|| {
                    NetStoreError::Exhausted(name.into(), "10.89.0.0/16".parse().expect("literal"))
                })?,
        };
        let def = NetworkDef {
            name: name.into(),
            bridge: format!("hx-{name}"),
            subnet,
            created_at: crate::vm::state::now(),
        };
        self.save(&def)?;
        Ok(def)
    }

    fn save(&self, def: &NetworkDef) -> Result<(), NetStoreError> {
        let path = self.def_path(&def.name);
        let json = serde_json::to_vec_pretty(def).expect("a network serialises");
        files::write_atomic(&path, &json).map_err(io_err("writing", &path))
    }

    /// Every defined network, by name.
    pub fn list(&self) -> Result<Vec<NetworkDef>, NetStoreError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io_err("listing", &self.root))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".json") {
                if let Ok(def) = self.load(n) {
                    out.push(def);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a network's definition; refused while leases exist. The caller holds the
    /// lock and has torn down the bridge.
    pub fn remove(&self, name: &str) -> Result<(), NetStoreError> {
        self.load(name)?;
        let n = self.leases(name)?.len();
        if n > 0 {
            return Err(NetStoreError::Busy(name.into(), n));
        }
        let _ = fs::remove_dir_all(self.root.join(name));
        let path = self.def_path(name);
        fs::remove_file(&path).map_err(io_err("removing", &path))
    }

    /// Leases an address for VM `id`: `want` exactly (`--ip`), else `prefer` if free (a
    /// restart keeps its address), else the lowest free one.
    pub fn lease(
        &self,
        def: &NetworkDef,
        id: &str,
        want: Option<Ipv4Addr>,
        prefer: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, NetStoreError> {
        let dir = self.leases_dir(&def.name);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        if let Some(ip) = want {
            if !def.subnet.is_guest_address(ip) {
                return Err(NetStoreError::OutOfRange(ip, def.name.clone(), def.subnet));
            }
            return match self.try_lease(&dir, ip, id)? {
                true => Ok(ip),
                false => Err(NetStoreError::InUse(ip, def.name.clone())),
            };
        }
        if let Some(ip) = prefer.filter(|ip| def.subnet.is_guest_address(*ip)) {
            if self.try_lease(&dir, ip, id)? {
                return Ok(ip);
            }
        }
        for ip in def.subnet.guest_addresses() {
            if self.try_lease(&dir, ip, id)? {
                return Ok(ip);
            }
        }
        Err(NetStoreError::Exhausted(def.name.clone(), def.subnet))
    }

    /// Takes `ip` for `id` if it is free (or already `id`'s).
    fn try_lease(&self, dir: &Path, ip: Ipv4Addr, id: &str) -> Result<bool, NetStoreError> {
        let path = dir.join(ip.to_string());
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(id.as_bytes())
                    .map_err(io_err("writing", &path))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok(fs::read_to_string(&path).is_ok_and(|owner| owner == id))
            }
            Err(e) => Err(io_err("creating", &path)(e)),
        }
    }

    /// Frees `ip` if `id` holds it.
    pub fn release(&self, network: &str, ip: Ipv4Addr, id: &str) {
        let path = self.leases_dir(network).join(ip.to_string());
        if fs::read_to_string(&path).is_ok_and(|owner| owner == id) {
            let _ = fs::remove_file(&path);
        }
    }

    /// Every lease of a network: address and VM id.
    pub fn leases(&self, network: &str) -> Result<Vec<(Ipv4Addr, String)>, NetStoreError> {
        let dir = self.leases_dir(network);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() {
                let owner = fs::read_to_string(e.path()).unwrap_or_default();
                out.push((ip, owner));
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, NetStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = NetStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn leases_are_unique_reused_and_exhaust_cleanly() {
        let (_d, s) = store();
        let def = s
            .create("tiny", Some("198.19.7.0/29".parse().unwrap()))
            .unwrap();
        assert_eq!(def.bridge, "hx-tiny");
        // /29: .2 to .6 for guests.
        let ips: Vec<_> = (0..5)
            .map(|i| s.lease(&def, &format!("vm{i}"), None, None).unwrap())
            .collect();
        assert_eq!(ips[0], Ipv4Addr::new(198, 19, 7, 2));
        assert_eq!(ips[4], Ipv4Addr::new(198, 19, 7, 6));
        assert!(matches!(
            s.lease(&def, "vm9", None, None),
            Err(NetStoreError::Exhausted(..))
        ));
        // Leasing again for the same VM is idempotent; another VM cannot take it.
        assert_eq!(s.lease(&def, "vm0", Some(ips[0]), None).unwrap(), ips[0]);
        assert!(matches!(
            s.lease(&def, "vm9", Some(ips[0]), None),
            Err(NetStoreError::InUse(..))
        ));
        // Freed by its holder only, then reused.
        s.release("tiny", ips[1], "someone-else");
        assert!(matches!(
            s.lease(&def, "vm9", None, None),
            Err(NetStoreError::Exhausted(..))
        ));
        s.release("tiny", ips[1], "vm1");
        assert_eq!(s.lease(&def, "vm9", None, None).unwrap(), ips[1]);
        assert!(matches!(s.remove("tiny"), Err(NetStoreError::Busy(_, 5))));
    }

    #[test]
    fn wanted_and_preferred_addresses() {
        let (_d, s) = store();
        let def = s
            .create("n1", Some("10.90.0.0/24".parse().unwrap()))
            .unwrap();
        let out = Ipv4Addr::new(10, 91, 0, 5);
        assert!(matches!(
            s.lease(&def, "a", Some(out), None),
            Err(NetStoreError::OutOfRange(..))
        ));
        assert!(matches!(
            s.lease(&def, "a", Some(def.gateway()), None),
            Err(NetStoreError::OutOfRange(..))
        ));
        let want = Ipv4Addr::new(10, 90, 0, 77);
        assert_eq!(
            s.lease(&def, "a", None, Some(want)).unwrap(),
            want,
            "preferred when free"
        );
        assert_ne!(
            s.lease(&def, "b", None, Some(want)).unwrap(),
            want,
            "else the lowest free"
        );
    }

    #[test]
    fn definitions() {
        let (_d, s) = store();
        let a = s.create("a", None).unwrap();
        let b = s.create("b", None).unwrap();
        assert_eq!(a.subnet.to_string(), "10.89.0.0/24");
        assert_eq!(b.subnet.to_string(), "10.89.1.0/24");
        assert!(matches!(s.create("a", None), Err(NetStoreError::Exists(_))));
        assert!(matches!(
            s.create("c", Some("10.89.0.0/16".parse().unwrap())),
            Err(NetStoreError::Overlap(..))
        ));
        for bad in ["", "UPPER", "thirteen-char", "-x", "a/b", "a.b"] {
            assert!(
                matches!(s.create(bad, None), Err(NetStoreError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(s.load("nope"), Err(NetStoreError::Unknown(_))));
        let d = s.default_network().unwrap();
        assert_eq!(
            (d.bridge.as_str(), d.subnet.to_string().as_str()),
            ("hyperxl0", "10.88.0.0/16")
        );
        assert_eq!(s.list().unwrap().len(), 3);
        s.remove("a").unwrap();
        assert_eq!(s.list().unwrap().len(), 2);
    }
}
