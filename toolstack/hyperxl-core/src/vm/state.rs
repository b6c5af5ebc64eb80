//! The state of one VM, one JSON file per VM under `STATE_DIR/vms/<id>/state.json`,
//! always replaced atomically (write a temp file, fsync, rename), never truncated in
//! place, so a reader never sees half a record and a crash leaves the old one. A
//! change the user made or one that matters after a reboot is made durable (the
//! directory is fsynced too); runtime facts, which die with the host, are not
//! ([`VmStore::update_runtime`]).
//!
//! Several hyperxl processes may act at once: creation takes the store lock (so two runs
//! cannot take the same name), and a change to one VM takes that VM's own lock.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::files::{self, DirError};

/// Errors of the VM state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the state dir failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A state file that does not parse.
    #[error("corrupt VM state {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// No VM has this name or id (prefix).
    #[error("no such VM: {0}")]
    NotFound(String),
    /// An id prefix that matches several VMs.
    #[error("{0:?} matches more than one VM; give more of the id")]
    Ambiguous(String),
    /// The name is taken by another VM.
    #[error("the name {name:?} is already in use by VM {id}; remove it first (hyperxl rm {name})")]
    NameInUse {
        /// The name asked for.
        name: String,
        /// The VM holding it.
        id: String,
    },
    /// A name Docker would refuse too.
    #[error("invalid VM name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 63 characters)")]
    BadName(String),
    /// The state dir (or a directory in it) is not one hyperxl may use.
    #[error(transparent)]
    Dir(#[from] DirError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// State recorded; the domain is being built.
    Created,
    /// The domain exists and was unpaused.
    Running,
    /// The app ended (or the domain died); see `exit_code` and `error`.
    Exited,
}

impl Status {
    /// Whether `stop`/`kill` make sense.
    pub fn can_stop(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }
}

/// Everything hyperxl records about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// 16 hex digits, unique.
    pub id: String,
    /// The user's name for it (unique among VMs).
    pub name: String,
    /// The image as the user wrote it.
    pub image: String,
    /// The command line the app was started with.
    pub command: Vec<String>,
    /// `pvh` or `pv`.
    pub kind: String,
    /// Current status.
    pub status: Status,
    /// Xen domain id while the domain exists.
    pub domid: Option<u32>,
    /// The app's exit code, once known.
    pub exit_code: Option<i32>,
    /// Why the VM failed or ended abnormally (exec failure, crash, init error).
    pub error: Option<String>,
    /// The loop device backing the rootfs disk while the domain runs.
    pub loop_device: Option<PathBuf>,
    /// The rootfs image file bound to `loop_device`: before touching a recorded device,
    /// hyperxl checks it is still bound to this file (and tagged with this VM's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_file: Option<PathBuf>,
    /// The process that watches the VM (the attached `run` or a detached monitor).
    pub monitor_pid: Option<u32>,
    /// Remove everything once the VM exits (`--rm`).
    pub auto_remove: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// When the app started (the guest reported `started`).
    pub started_at: Option<u64>,
    /// When the VM exited.
    pub finished_at: Option<u64>,
    /// `kill`, or `stop` past its timeout, destroyed the domain: an end without an exit
    /// code is then 137 (as Docker reports SIGKILL), not a crash.
    #[serde(default)]
    pub killed: bool,
    /// `stop` asked for it: a restart policy leaves it stopped.
    #[serde(default)]
    pub stopped_by_user: bool,
    /// How often a restart policy started it again (the same id, name and log).
    #[serde(default)]
    pub restart_count: u32,
    /// How much of the console is kept on disk (`--log-opt`).
    #[serde(default)]
    pub log: super::console::LogLimits,
    /// Free-form labels (deployments put their name and a definition fingerprint here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its network (address, vif, published ports); none with `--network none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::VmNet>,
    /// Its extra disks: volumes, snapshots of host directories, a scratch disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<crate::volume::AttachedDisk>,
}

/// The exit code of a VM whose domain `kill` (or `stop` past its timeout) destroyed, as
/// Docker reports SIGKILL.
pub const EXIT_KILLED: i32 = 137;

/// A VM's status changes, in one place for every writer (the watcher, reconcile, `kill`,
/// the pool): `created` -> `running` -> `exited`, with `killed` and `stopped_by_user`
/// as what `kill` and `stop` asked for on the way.
impl VmState {
    /// `created` -> `running`: its domain was unpaused (or, for a pooled VM, booted to
    /// its waiting init). An end recorded meanwhile stays.
    pub fn mark_running(&mut self) {
        if self.status == Status::Created {
            self.status = Status::Running;
        }
    }

    /// `kill`, `rm -f` or a `stop` past its timeout destroys the domain: an end without
    /// an exit code is then [`EXIT_KILLED`], not a failure, and no restart policy
    /// applies.
    pub fn mark_killed(&mut self) {
        self.killed = true;
        self.stopped_by_user = true;
    }

    /// `stop` asked the app to end (or the watcher saw that request): no restart policy
    /// applies to this end, whatever its exit code.
    pub fn mark_stopped_by_user(&mut self) {
        self.stopped_by_user = true;
    }

    /// -> `exited`, once the domain is gone: `outcome` is the app's exit code, or why
    /// there is none (for a VM killed on purpose that is [`EXIT_KILLED`]);
    /// `still_bound` are the loop devices that could not be freed and stay recorded.
    pub fn record_end(&mut self, outcome: Result<i32, String>, still_bound: &[PathBuf]) {
        self.status = Status::Exited;
        self.domid = None;
        self.clear_loops_except(still_bound);
        self.finished_at = Some(now());
        match outcome {
            Ok(code) => self.exit_code = Some(code),
            Err(_) if self.killed => self.exit_code = Some(EXIT_KILLED),
            Err(why) => self.error = Some(why),
        }
    }
}

impl VmState {
    /// A fresh record for a VM about to be created.
    pub fn new(id: String, name: String, image: String) -> Self {
        Self {
            id,
            name,
            image,
            command: Vec::new(),
            kind: "pvh".into(),
            status: Status::Created,
            domid: None,
            exit_code: None,
            error: None,
            loop_device: None,
            disk_file: None,
            monitor_pid: Some(std::process::id()),
            auto_remove: false,
            created_at: now(),
            started_at: None,
            finished_at: None,
            killed: false,
            stopped_by_user: false,
            restart_count: 0,
            log: Default::default(),
            labels: BTreeMap::new(),
            network: None,
            disks: Vec::new(),
        }
    }

    /// Every loop device recorded for the VM (rootfs first), with the file bound to it.
    pub fn loops(&self) -> Vec<(PathBuf, Option<PathBuf>)> {
        let rootfs = self
            .loop_device
            .clone()
            .map(|dev| (dev, self.disk_file.clone()));
        let extra = self
            .disks
            .iter()
            .filter_map(|d| Some((d.loop_device.clone()?, d.file.clone())));
        rootfs.into_iter().chain(extra).collect()
    }

    /// Forgets the recorded loop devices (they may be reused by anyone once freed) but
    /// those in `kept` (still bound to this VM's
    /// files: a read-write volume's device that blkback has not let go of keeps the
    /// volume claimed, see `volume::check_claims`).
    pub fn clear_loops_except(&mut self, kept: &[PathBuf]) {
        self.loop_device = None;
        for d in &mut self.disks {
            if d.loop_device.as_ref().is_some_and(|l| !kept.contains(l)) {
                d.loop_device = None;
            }
        }
    }

    /// The Xen domain name hyperxl gives this VM.
    pub fn domain_name(&self) -> String {
        format!("hyperxl-{}", self.name)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a VM name the way Docker does.
pub fn validate_name(name: &str) -> Result<(), StateError> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadName(name.to_owned()))
    }
}

/// The VM state store under `STATE_DIR/vms`.
#[derive(Debug, Clone)]
pub struct VmStore {
    root: PathBuf,
}

/// A held lock; released on drop.
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

impl VmStore {
    /// Opens (creating) the store under `state_dir`. The state dir and `vms/` are made
    /// 0700; a state dir owned by another user than root or this one is refused.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        files::secure_dir(state_dir)?;
        let root = state_dir.join("vms");
        files::private_subdir(&root)?;
        Ok(Self { root })
    }

    /// The state dir this store lives in.
    pub fn state_dir(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }

    /// The directory of VM `id` (its state, console log, lock).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn lock_file(path: &Path) -> Result<StoreLock, StateError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("opening lock", path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(StoreLock)
            .map_err(|(_, errno)| StateError::Io {
                action: "locking",
                path: path.to_path_buf(),
                source: errno.into(),
            })
    }

    /// Takes the store-wide lock (name allocation).
    pub fn lock(&self) -> Result<StoreLock, StateError> {
        Self::lock_file(&self.root.join(".lock"))
    }

    /// Takes VM `id`'s own lock.
    pub fn lock_vm(&self, id: &str) -> Result<StoreLock, StateError> {
        Self::lock_file(&self.dir(id).join(".lock")).map_err(|e| match e {
            // The VM's directory is gone: removed meanwhile.
            StateError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StateError::NotFound(id.to_owned())
            }
            e => e,
        })
    }

    /// Records a new VM; fails if its name is taken. The caller holds [`VmStore::lock`].
    pub fn create(&self, state: &VmState) -> Result<(), StateError> {
        validate_name(&state.name)?;
        if let Some(other) = self.list()?.into_iter().find(|v| v.name == state.name) {
            return Err(StateError::NameInUse {
                name: state.name.clone(),
                id: other.id,
            });
        }
        let dir = self.dir(&state.id);
        files::private_subdir(&dir)?;
        // The logs exist, private, before anything writes to them.
        for log in ["console.log", "monitor.log"] {
            let path = dir.join(log);
            files::open_private_append(&path).map_err(io_err("creating", &path))?;
        }
        self.save(state)
    }

    /// Atomically replaces VM `state.id`'s record.
    pub fn save(&self, state: &VmState) -> Result<(), StateError> {
        self.save_with(state, files::write_atomic)
    }

    fn save_with(
        &self,
        state: &VmState,
        write: fn(&Path, &[u8]) -> io::Result<()>,
    ) -> Result<(), StateError> {
        let path = self.dir(&state.id).join("state.json");
        let json = serde_json::to_vec_pretty(state).expect("VmState serialises");
        write(&path, &json).map_err(io_err("writing", &path))
    }

    /// Atomically writes `name` (e.g. `spec.json`) in VM `id`'s directory, readable by
    /// its owner alone.
    pub fn write_file(&self, id: &str, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.dir(id).join(name);
        files::write_atomic(&path, bytes).map_err(io_err("writing", &path))
    }

    /// Read-modify-write of VM `id`'s record under its lock, so changes made at the
    /// same time by a monitor and by `stop`/`kill` are never lost.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut VmState),
    ) -> Result<VmState, StateError> {
        self.update_with(id, change, files::write_atomic)
    }

    /// [`VmStore::update`] of runtime facts only (a domid, a loop device, the status,
    /// the start time), which do not outlive the host: written as
    /// [`files::write_atomic_runtime`] (after a host crash the record may be the one
    /// before, whole). Anything the user asked for or that must be cleaned up after a
    /// reboot (names, specs, volumes' files, the end of a run) goes through `update`.
    pub fn update_runtime(
        &self,
        id: &str,
        change: impl FnOnce(&mut VmState),
    ) -> Result<VmState, StateError> {
        self.update_with(id, change, files::write_atomic_runtime)
    }

    /// Read-modify-write under the VM's lock, the record written by `write`.
    fn update_with(
        &self,
        id: &str,
        change: impl FnOnce(&mut VmState),
        write: fn(&Path, &[u8]) -> io::Result<()>,
    ) -> Result<VmState, StateError> {
        let _lock = self.lock_vm(id)?;
        let mut vm = self.load(id)?;
        change(&mut vm);
        self.save_with(&vm, write)?;
        Ok(vm)
    }

    /// [`VmStore::update`] for a record that must be written even on a full disk: if
    /// the ordinary write fails, the record is written into `reserve` (space allocated
    /// earlier, see [`files::write_atomic_into`]), which then becomes the state file.
    pub fn update_with_reserve(
        &self,
        id: &str,
        reserve: &Path,
        change: impl FnOnce(&mut VmState),
    ) -> Result<VmState, StateError> {
        let _lock = self.lock_vm(id)?;
        let mut vm = self.load(id)?;
        change(&mut vm);
        if let Err(e) = self.save(&vm) {
            let path = self.dir(id).join("state.json");
            let json = serde_json::to_vec_pretty(&vm).expect("VmState serialises");
            if files::write_atomic_into(reserve, &path, &json).is_err() {
                return Err(e);
            }
        }
        Ok(vm)
    }

    /// Reads VM `id`'s record.
    pub fn load(&self, id: &str) -> Result<VmState, StateError> {
        let path = self.dir(id).join("state.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()))
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Every VM, oldest first. Directories without a state file (a creation that died
    /// before its first write) are skipped, and so are those whose state file does not
    /// parse, with a warning on stderr (once per process): one bad record must not
    /// stop every command; `rm -f ID` removes it (see [`VmStore::corrupt_ids`]).
    pub fn list(&self) -> Result<Vec<VmState>, StateError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io_err("listing", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.root))?;
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if id.starts_with('.') {
                continue;
            }
            match self.load(id) {
                Ok(s) => out.push(s),
                Err(StateError::NotFound(_)) => {}
                Err(StateError::Corrupt { path, source }) => warn_corrupt(&path, &source),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Finds a VM by exact name, exact id, or unique id prefix (as Docker does).
    pub fn find(&self, name_or_id: &str) -> Result<VmState, StateError> {
        if name_or_id.is_empty() {
            return Err(StateError::NotFound(String::new()));
        }
        let all = self.list()?;
        if let Some(v) = all
            .iter()
            .find(|v| v.name == name_or_id || v.id == name_or_id)
        {
            return Ok(v.clone());
        }
        let mut matches = all.into_iter().filter(|v| v.id.starts_with(name_or_id));
        match (matches.next(), matches.next()) {
            (Some(v), None) => Ok(v),
            (Some(_), Some(_)) => Err(StateError::Ambiguous(name_or_id.to_owned())),
            _ => Err(StateError::NotFound(name_or_id.to_owned())),
        }
    }

    /// The ids of VM directories whose state file does not parse, that `which` names:
    /// the whole id or a prefix of it (the name is in the unreadable record).
    pub fn corrupt_ids(&self, which: &str) -> Result<Vec<String>, StateError> {
        let mut out = Vec::new();
        if which.is_empty() {
            return Ok(out);
        }
        let entries = fs::read_dir(&self.root).map_err(io_err("listing", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.root))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !id.starts_with('.')
                && id.starts_with(which)
                && matches!(self.load(&id), Err(StateError::Corrupt { .. }))
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Leaves a removed VM's exit code for `wait` (a `--rm` VM is removed as it exits),
    /// and forgets those left more than ten minutes ago.
    pub fn bury(&self, vm: &VmState) -> Result<(), StateError> {
        let dir = self.root.join(".exited");
        files::private_subdir(&dir)?;
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 600));
                if old {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let text = match (vm.exit_code, &vm.error) {
            (Some(code), _) => code.to_string(),
            (None, Some(e)) => format!("error: {e}"),
            (None, None) => "error: no exit code".into(),
        };
        let path = dir.join(&vm.id);
        // For `wait` on a VM removed as it exited: not kept across a host crash.
        files::write_atomic_runtime(&path, text.as_bytes()).map_err(io_err("writing", &path))
    }

    /// The exit code (or error) a removed VM left with [`VmStore::bury`].
    pub fn exit_of_removed(&self, id: &str) -> Option<Result<i32, String>> {
        let text = fs::read_to_string(self.root.join(".exited").join(id)).ok()?;
        Some(match text.strip_prefix("error: ") {
            Some(e) => Err(e.to_owned()),
            None => text.trim().parse().map_err(|_| text.clone()),
        })
    }

    /// Removes VM `id` if `removable` says so of its record as it is now, under its lock
    /// (a supervisor may be starting it again at this very moment). Returns whether it
    /// was removed.
    pub fn remove_if(
        &self,
        id: &str,
        removable: impl FnOnce(&VmState) -> bool,
    ) -> Result<bool, StateError> {
        let _lock = self.lock_vm(id)?;
        if !removable(&self.load(id)?) {
            return Ok(false);
        }
        self.remove(id)?;
        Ok(true)
    }

    /// Removes VM `id`'s directory (state, console log).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &dir)(e)),
        }
    }
}

/// Says once per process per file that a VM's record is skipped.
fn warn_corrupt(path: &Path, err: &serde_json::Error) {
    static WARNED: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut w| w.insert(path.to_path_buf()))
        .unwrap_or(true);
    if first {
        let dir = path.parent().unwrap_or(path);
        // Not eprintln!: a detached watcher's stderr may be a file on a full disk.
        let _ = writeln!(
            io::stderr(),
            "hyperxl: warning: skipping VM {}: corrupt state.json ({err}); remove it with hyperxl rm -f {}",
            dir.display(),
            dir.file_name().unwrap_or_default().to_string_lossy()
        );
    }
}

/// A fresh random VM id (16 hex digits from the kernel's RNG).
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    if bytes == [0; 8] {
        // No /dev/urandom: time and pid still make collisions unlikely.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = ((t as u64) ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, name: &str) -> VmState {
        let mut vm = VmState::new(id.into(), name.into(), "busybox".into());
        vm.command = vec!["true".into()];
        vm.monitor_pid = None;
        vm.created_at = 1;
        vm
    }

    #[test]
    fn create_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::open(dir.path()).unwrap();
        let mut v = vm("aaaa0001", "web");
        store.create(&v).unwrap();
        v.status = Status::Exited;
        v.exit_code = Some(3);
        store.save(&v).unwrap();
        assert_eq!(store.load("aaaa0001").unwrap(), v);
        // No temp files left behind.
        let mut files: Vec<_> = fs::read_dir(store.dir("aaaa0001"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["console.log", "monitor.log", "state.json"]);
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn defect10_state_dir_vm_dirs_and_records_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let store = VmStore::open(&state_dir).unwrap();
        assert_eq!(mode(&state_dir), 0o700, "the state dir");
        assert_eq!(mode(&state_dir.join("vms")), 0o700, "vms/");
        let v = vm("aa01", "secret");
        store.create(&v).unwrap();
        store
            .write_file("aa01", "spec.json", b"{\"env\":[\"TOKEN=x\"]}")
            .unwrap();
        store.bury(&v).unwrap();
        let vm_dir = store.dir("aa01");
        assert_eq!(mode(&vm_dir), 0o700, "the VM dir");
        for f in ["state.json", "spec.json", "console.log", "monitor.log"] {
            assert_eq!(mode(&vm_dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&state_dir.join("vms/.exited")), 0o700);
        assert_eq!(mode(&state_dir.join("vms/.exited/aa01")), 0o600);
    }

    #[test]
    fn defect10_state_dir_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let err = VmStore::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("owned by uid 65534, not by root"),
            "{err}"
        );
        assert!(!dir.path().join("vms").exists(), "nothing made in it");
    }

    #[test]
    fn defect11_corrupt_state_json_is_skipped_and_found_by_id_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::open(dir.path()).unwrap();
        store.create(&vm("aa01", "good")).unwrap();
        store.create(&vm("bb02", "bad")).unwrap();
        fs::write(store.dir("bb02").join("state.json"), b"{ not json").unwrap();
        let names: Vec<_> = store.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["good"]);
        assert_eq!(store.find("good").unwrap().id, "aa01");
        assert_eq!(store.corrupt_ids("bb").unwrap(), ["bb02"]);
        assert_eq!(store.corrupt_ids("bb02").unwrap(), ["bb02"]);
        assert!(store.corrupt_ids("aa").unwrap().is_empty(), "aa01 parses");
        assert!(store.corrupt_ids("").unwrap().is_empty());
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::open(dir.path()).unwrap();
        store.create(&vm("aaaa0001", "web")).unwrap();
        let err = store.create(&vm("bbbb0002", "web")).unwrap_err();
        assert!(
            matches!(err, StateError::NameInUse { ref id, .. } if id == "aaaa0001"),
            "{err}"
        );
    }

    #[test]
    fn find_by_name_id_and_unique_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::open(dir.path()).unwrap();
        store.create(&vm("abc1", "one")).unwrap();
        store.create(&vm("abd2", "two")).unwrap();
        assert_eq!(store.find("one").unwrap().id, "abc1");
        assert_eq!(store.find("abd2").unwrap().name, "two");
        assert_eq!(store.find("abc").unwrap().name, "one");
        assert!(matches!(store.find("ab"), Err(StateError::Ambiguous(_))));
        assert!(matches!(store.find("zz"), Err(StateError::NotFound(_))));
        assert!(matches!(store.find(""), Err(StateError::NotFound(_))));
    }

    #[test]
    fn names_follow_docker_rules() {
        for ok in ["a", "web-1", "A.b_c", &"x".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "../x", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    /// The end is written by the watcher and by reconcile through one method: an exit
    /// code wins, a killed VM without one ends 137 and no failure, any other VM without
    /// one records why.
    #[test]
    fn transitions_record_the_end_one_way() {
        let mut vm = VmState::new("ab".repeat(8), "t".into(), "img".into());
        vm.domid = Some(3);
        vm.loop_device = Some("/dev/loop9".into());
        vm.mark_running();
        assert_eq!(vm.status, Status::Running);
        let mut ended = vm.clone();
        ended.record_end(Ok(5), &[]);
        assert_eq!(
            (
                ended.status,
                ended.exit_code,
                ended.domid,
                &ended.loop_device
            ),
            (Status::Exited, Some(5), None, &None)
        );
        assert!(ended.finished_at.is_some() && ended.error.is_none());
        ended.mark_running();
        assert_eq!(ended.status, Status::Exited, "an end recorded stays");

        let mut failed = vm.clone();
        failed.record_end(Err("no exit code".into()), &["/dev/loop9".into()]);
        assert_eq!(failed.exit_code, None);
        assert_eq!(failed.error.as_deref(), Some("no exit code"));
        assert_eq!(failed.loop_device, None, "the rootfs loop is never kept");

        let mut killed = vm;
        killed.mark_killed();
        assert!(killed.killed && killed.stopped_by_user);
        killed.record_end(Err("destroyed".into()), &[]);
        assert_eq!((killed.exit_code, killed.error), (Some(EXIT_KILLED), None));
    }

    #[test]
    fn status_guards() {
        assert!(Status::Running.can_stop());
        assert!(!Status::Exited.can_stop());
    }

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_removed_vm_leaves_its_exit_code_for_wait() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::open(dir.path()).unwrap();
        let mut v = vm("aa01", "gone");
        v.exit_code = Some(7);
        store.create(&v).unwrap();
        store.bury(&v).unwrap();
        store.remove("aa01").unwrap();
        assert_eq!(store.exit_of_removed("aa01"), Some(Ok(7)));
        assert!(store.list().unwrap().is_empty(), "tombstones are not VMs");
        assert_eq!(store.exit_of_removed("bb02"), None);
    }
}
