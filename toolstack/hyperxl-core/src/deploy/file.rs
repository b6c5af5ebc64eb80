//! The deployment file: a TOML file naming several VMs, checked whole before anything
//! starts, and resolved into [`VmDef`]s in start order.
//!
//! ```toml
//! name = "shop"                  # optional, defaults to the file stem
//!
//! [vm.db]
//! image = "demo:latest"
//! command = ["sh", "-c", "echo db up; sleep 1000"]
//! env = { MODE = "prod" }
//! env_file = ["db.env"]          # inside this file's directory
//! memory = "64m"
//! restart = "on-failure:2"
//! log_opt = ["max-size=10m", "max-file=3"]   # as `run --log-opt`
//! depends_on = ["cache"]
//! ports = ["8080:80"]           # as `run -p`
//! network = "none"             # default: the deployment's own network
//! volumes = ["data:/var/lib/db", "/srv/conf:/etc/app:ro"]  # as `run -v`; `data` is
//!                              # the deployment's own volume SHOP_data
//! tmpfs = ["/tmp:size=64m"]    # as `run --tmpfs`
//! read_only = true             # as `run --read-only`
//! storage_size = "2g"          # as `run --storage-opt size=2g`
//!
//! [vm.cache]
//! image = "demo:latest"
//! ```
//!
//! Every error is one line, `FILE:LINE: message`, the line being where the offending
//! value (or VM) is written.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

pub use super::error::{DeployError, Problem};
use super::order;
use super::raw::{RawDeployment, RawVm};
pub use super::restart::{parse_restart, RestartPolicy};
use crate::vm::console::LogLimits;
use crate::vm::machine::{self, Kind, Machine, MachineError, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use crate::vm::spec::{self, RunFlags};
use crate::vm::state;

/// Label keys starting with this are hyperxl's own (the deployment a VM belongs to...).
pub const RESERVED_LABEL_PREFIX: &str = "hyperxl.";

/// A validated deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The deployment's name: `name = ...`, else the file stem.
    pub name: String,
    /// The VMs in a valid start order: each after the VMs it depends on, ties in file
    /// order.
    pub vms: Vec<VmDef>,
}

/// One VM of a deployment, with every default and file reference resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct VmDef {
    /// The VM's name within the deployment (the key of `[vm.NAME]`).
    pub name: String,
    /// The image reference, as written.
    pub image: String,
    /// Replaces the image's Cmd; empty to keep it.
    pub command: Vec<String>,
    /// Replaces the image's entrypoint (`""` to clear it).
    pub entrypoint: Option<String>,
    /// `NAME=VALUE` entries: the env files' first, in order, then the `env` table's.
    pub env: Vec<String>,
    /// Working directory inside the VM (absolute).
    pub workdir: Option<String>,
    /// User as Docker spells it.
    pub user: Option<String>,
    /// Memory, vCPUs and domain type (`memory`, `vcpus`, `type`).
    pub machine: Machine,
    /// What to do when the app exits.
    pub restart: RestartPolicy,
    /// How much console log to keep (`log_opt`, as `run --log-opt`).
    pub log: LogLimits,
    /// The user's labels.
    pub labels: BTreeMap<String, String>,
    /// VMs of the same deployment that must start first.
    pub depends_on: Vec<String>,
    /// Published ports (`ports`, as `run -p`).
    pub ports: Vec<String>,
    /// `network = "none"` leaves the VM without one; otherwise it joins the
    /// deployment's own network.
    pub no_network: bool,
    /// `volumes`, as `run -v` (named volumes are scoped to the deployment).
    pub volumes: Vec<String>,
    /// `tmpfs`, as `run --tmpfs`.
    pub tmpfs: Vec<String>,
    /// `read_only`, as `run --read-only`.
    pub read_only: bool,
    /// `storage_size`, as `run --storage-opt size=`.
    pub storage_size: Option<String>,
}

impl Deployment {
    /// Reads and parses the deployment file at `path` (env files included).
    pub fn load(path: &Path) -> Result<Deployment, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Deployment::parse(&text, path)
    }

    /// Reads the deployment file for `down`, which works from what is recorded: the
    /// name and the VMs in start order, the env files left unread (a deleted one must
    /// not block teardown), so the VMs' `env` lacks their entries.
    pub fn load_for_teardown(path: &Path) -> Result<Deployment, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Parser {
            text: &text,
            path,
            read_env_files: false,
        }
        .parse()
    }

    /// Parses and checks a deployment file's text. `path` names the file in errors, gives
    /// the default name (its stem), and the directory env files must be in; the env
    /// files are read now.
    pub fn parse(text: &str, path: &Path) -> Result<Deployment, DeployError> {
        Parser {
            text,
            path,
            read_env_files: true,
        }
        .parse()
    }
}

impl VmDef {
    /// A digest of everything that shapes the running VM, to tell on a second `up`
    /// whether it changed: sha256, in hex, of the definition as canonical JSON.
    /// `depends_on` is left out: it orders the start but does not change the VM.
    pub fn fingerprint(&self) -> String {
        let VmDef {
            name,
            image,
            command,
            entrypoint,
            env,
            workdir,
            user,
            machine,
            restart,
            log,
            labels,
            depends_on: _,
            ports,
            no_network,
            volumes,
            tmpfs,
            read_only,
            storage_size,
        } = self;
        let canonical = Canonical {
            version: 1,
            name,
            image,
            command,
            entrypoint,
            env,
            workdir,
            user,
            memory_mib: machine.memory_mib(),
            vcpus: machine.vcpus(),
            pv: machine.is_pv(),
            restart,
            log: (*log != LogLimits::default()).then_some(log),
            labels,
            ports: (!ports.is_empty()).then_some(ports),
            no_network: no_network.then_some(true),
            volumes: (!volumes.is_empty()).then_some(volumes),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            read_only: read_only.then_some(true),
            storage_size: storage_size.as_ref(),
        };
        // Plain strings, numbers and a map with string keys: serialising cannot fail.
        let json = serde_json::to_vec(&canonical).expect("a VM definition serialises to JSON");
        hex::encode(Sha256::digest(json))
    }

    /// The same flags `hyperxl run` builds from its command line, so a deployment VM
    /// and `run` give the same spec.
    pub fn run_flags(&self) -> RunFlags {
        RunFlags {
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            entrypoint: self.entrypoint.clone(),
            command: self.command.clone(),
            hostname: String::new(),
            open_stdin: false,
            terminal: false,
            attached: false,
        }
    }

    /// Its storage request, named volumes scoped to deployment `dep` (`DEP_NAME`, as
    /// compose does). The entries were checked when the file was parsed.
    pub fn storage(
        &self,
        dep: &str,
    ) -> Result<crate::volume::request::StorageRequest, crate::volume::request::RequestError> {
        use crate::volume::request::{self, VolumeArg};
        let opts: Vec<String> = self
            .storage_size
            .iter()
            .map(|s| format!("size={s}"))
            .collect();
        let mut req = request::from_flags(&self.volumes, &self.tmpfs, self.read_only, &opts)?;
        for v in &mut req.volumes {
            if let VolumeArg::Named { name, .. } = v {
                *name = format!("{dep}_{name}");
            }
        }
        Ok(req)
    }
}

/// What [`VmDef::fingerprint`] hashes; field order is part of the format.
#[derive(Serialize)]
struct Canonical<'a> {
    version: u32,
    name: &'a str,
    image: &'a str,
    command: &'a [String],
    entrypoint: &'a Option<String>,
    env: &'a [String],
    workdir: &'a Option<String>,
    user: &'a Option<String>,
    memory_mib: u64,
    vcpus: u32,
    pv: bool,
    restart: &'a RestartPolicy,
    /// Left out at the defaults, so that fingerprints from before `log_opt` still match.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<&'a LogLimits>,
    labels: &'a BTreeMap<String, String>,
    /// Left out when empty, as `log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_network: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volumes: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tmpfs: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_size: Option<&'a String>,
}

/// A problem and the byte offset it is at.
type Located = (usize, Problem);

/// One parse of one file's text.
struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
    /// Read the env files (everything but `down`).
    read_env_files: bool,
}

impl Parser<'_> {
    fn parse(&self) -> Result<Deployment, DeployError> {
        self.parse_located()
            .map_err(|(offset, problem)| DeployError::Invalid {
                file: self.path.to_path_buf(),
                line: line_at(self.text, offset),
                problem: Box::new(problem),
            })
    }

    fn parse_located(&self) -> Result<Deployment, Located> {
        let raw: RawDeployment = toml::from_str(self.text).map_err(|e| toml_problem(&e))?;
        let name = self.deployment_name(raw.name)?;
        let mut entries: Vec<(Spanned<String>, RawVm)> = raw.vm.into_iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        if entries.is_empty() {
            return Err((0, Problem::NoVms));
        }
        let mut vms = Vec::with_capacity(entries.len());
        let mut dep_spans = Vec::with_capacity(entries.len());
        for (key, raw) in entries {
            let start = key.span().start;
            let vm_name = key.into_inner();
            if state::validate_name(&vm_name).is_err() {
                return Err((start, Problem::BadVmName(vm_name)));
            }
            // The VM is called DEPLOYMENT-VM, which must be a valid name too.
            let full = format!("{name}-{vm_name}");
            if state::validate_name(&full).is_err() {
                return Err((start, Problem::FullNameTooLong { vm: vm_name, full }));
            }
            dep_spans.push(raw.depends_on.iter().map(|d| d.span()).collect::<Vec<_>>());
            vms.push(self.vm(vm_name, start, raw)?);
        }
        let order = start_order(&vms, &dep_spans)?;
        let mut slots: Vec<Option<VmDef>> = vms.into_iter().map(Some).collect();
        let vms = order.iter().filter_map(|&i| slots[i].take()).collect();
        Ok(Deployment { name, vms })
    }

    fn deployment_name(&self, name: Option<Spanned<String>>) -> Result<String, Located> {
        match name {
            Some(name) => {
                let start = name.span().start;
                let name = name.into_inner();
                match state::validate_name(&name) {
                    Ok(()) => Ok(name),
                    Err(_) => Err((start, Problem::BadName(name))),
                }
            }
            None => {
                let stem = self
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match state::validate_name(&stem) {
                    Ok(()) => Ok(stem),
                    Err(_) => Err((0, Problem::BadStem(stem))),
                }
            }
        }
    }

    /// Resolves one `[vm.NAME]` table; `at` is where its name is written.
    fn vm(&self, name: String, at: usize, raw: RawVm) -> Result<VmDef, Located> {
        let image = match raw.image {
            None => return Err((at, Problem::MissingImage(name))),
            Some(i) if i.get_ref().trim().is_empty() => {
                return Err((i.span().start, Problem::EmptyImage(name)))
            }
            Some(i) => i.into_inner(),
        };
        let command = match raw.command {
            Some(c) if c.get_ref().is_empty() => {
                return Err((c.span().start, Problem::EmptyCommand(name)))
            }
            Some(c) => c.into_inner(),
            None => Vec::new(),
        };
        let memory_mib = match raw.memory {
            None => DEFAULT_MEMORY_MIB,
            Some(m) => match m.get_ref() {
                toml::Value::String(s) => machine::parse_memory(s).map_err(|source| {
                    let vm = name.clone();
                    (m.span().start, Problem::BadMemory { vm, source })
                })?,
                _ => return Err((m.span().start, Problem::MemoryNotString(name))),
            },
        };
        let kind = match raw.kind {
            None => Kind::default(),
            Some(k) => k.get_ref().parse().map_err(|_| {
                let (vm, value) = (name.clone(), k.get_ref().clone());
                (k.span().start, Problem::BadType { vm, value })
            })?,
        };
        let (vcpus_at, vcpus) = match &raw.vcpus {
            None => (at, i64::from(DEFAULT_VCPUS)),
            Some(v) => (v.span().start, *v.get_ref()),
        };
        let machine = Machine::new(memory_mib, vcpus, kind).map_err(|source| {
            let vm = name.clone();
            let problem = match source {
                MachineError::Vcpus(value) => Problem::Vcpus { vm, value },
                source => Problem::BadMemory { vm, source },
            };
            (vcpus_at, problem)
        })?;
        let restart = match raw.restart {
            None => RestartPolicy::No,
            Some(r) => parse_restart(r.get_ref()).map_err(|source| {
                let vm = name.clone();
                (r.span().start, Problem::Restart { vm, source })
            })?,
        };
        let mut log = LogLimits::default();
        for opt in raw.log_opt {
            log.apply(opt.get_ref()).map_err(|source| {
                let vm = name.clone();
                (opt.span().start, Problem::LogOpt { vm, source })
            })?;
        }
        let workdir = match raw.workdir {
            Some(w) if !w.get_ref().starts_with('/') => {
                let (vm, value) = (name.clone(), w.get_ref().clone());
                return Err((w.span().start, Problem::RelativeWorkdir { vm, value }));
            }
            w => w.map(Spanned::into_inner),
        };
        let env = self.env(&name, &raw.env_file, raw.env)?;
        let labels = labels(&name, raw.labels)?;
        let depends_on = raw
            .depends_on
            .into_iter()
            .map(Spanned::into_inner)
            .collect();
        let mut ports = Vec::new();
        for p in raw.ports {
            crate::net::publish::parse(p.get_ref()).map_err(|source| {
                let vm = name.clone();
                (p.span().start, Problem::Port { vm, source })
            })?;
            ports.push(p.into_inner());
        }
        let no_network = match raw.network {
            None => false,
            Some(n) if n.get_ref() == "none" => true,
            Some(n) => {
                let (vm, value) = (name.clone(), n.get_ref().clone());
                return Err((n.span().start, Problem::Network { vm, value }));
            }
        };
        let storage_err = |at: usize, source| {
            let vm = name.clone();
            let source = Box::new(source);
            (at, Problem::Storage { vm, source })
        };
        let mut volumes = Vec::new();
        for v in raw.volumes {
            crate::volume::request::parse_volume(v.get_ref())
                .map_err(|e| storage_err(v.span().start, e))?;
            volumes.push(v.into_inner());
        }
        let mut tmpfs = Vec::new();
        for t in raw.tmpfs {
            crate::volume::request::parse_tmpfs(t.get_ref())
                .map_err(|e| storage_err(t.span().start, e))?;
            tmpfs.push(t.into_inner());
        }
        let storage_size = match raw.storage_size {
            Some(s) => {
                crate::volume::request::parse_storage_opt(&format!("size={}", s.get_ref()))
                    .map_err(|e| storage_err(s.span().start, e))?;
                Some(s.into_inner())
            }
            None => None,
        };
        Ok(VmDef {
            name,
            image,
            command,
            entrypoint: raw.entrypoint,
            env,
            workdir,
            user: raw.user,
            machine,
            restart,
            log,
            labels,
            depends_on,
            ports,
            no_network,
            volumes,
            tmpfs,
            read_only: raw.read_only,
            storage_size,
        })
    }

    /// The env files' entries (read now, relative to the deployment file), then the
    /// table's.
    fn env(
        &self,
        vm: &str,
        files: &[Spanned<String>],
        table: BTreeMap<Spanned<String>, String>,
    ) -> Result<Vec<String>, Located> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut env = Vec::new();
        for file in files {
            let at = file.span().start;
            let outside = || {
                let (vm, value) = (vm.to_owned(), file.get_ref().clone());
                (at, Problem::EnvFileOutside { vm, value })
            };
            if !stays_inside(Path::new(file.get_ref())) {
                return Err(outside());
            }
            if !self.read_env_files {
                continue;
            }
            let path = dir.join(file.get_ref());
            let read_err = |source| {
                let (vm, path) = (vm.to_owned(), path.clone());
                (at, Problem::EnvFile { vm, path, source })
            };
            // Symlinks resolved: the file itself must be inside the directory too.
            let real = std::fs::canonicalize(&path).map_err(read_err)?;
            let real_dir = std::fs::canonicalize(dir).map_err(read_err)?;
            if !real.starts_with(&real_dir) {
                return Err(outside());
            }
            let text = std::fs::read_to_string(&real).map_err(read_err)?;
            for entry in spec::resolve_env(&spec::parse_env_file(&text)) {
                check_env_entry(vm, &entry, at)?;
                env.push(entry);
            }
        }
        for (key, value) in table {
            let entry = format!("{}={value}", key.get_ref());
            // A key with `=` would pass as a shorter name with another value.
            if key.get_ref().contains('=') {
                let (vm, entry) = (vm.to_owned(), entry);
                return Err((key.span().start, Problem::BadEnv { vm, entry }));
            }
            check_env_entry(vm, &entry, key.span().start)?;
            env.push(entry);
        }
        Ok(env)
    }
}

/// Whether the relative path `p` names something inside the directory it is relative to:
/// not absolute, and no `..` climbing above its start.
fn stays_inside(p: &Path) -> bool {
    use std::path::Component;
    let mut depth: usize = 0;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    depth > 0
}

/// An entry the guest's spec check will take: `NAME=VALUE` with a non-empty NAME.
fn check_env_entry(vm: &str, entry: &str, at: usize) -> Result<(), Located> {
    match entry.split_once('=') {
        Some((name, _)) if !name.is_empty() => Ok(()),
        _ => Err((
            at,
            Problem::BadEnv {
                vm: vm.to_owned(),
                entry: entry.to_owned(),
            },
        )),
    }
}

fn labels(
    vm: &str,
    raw: BTreeMap<Spanned<String>, String>,
) -> Result<BTreeMap<String, String>, Located> {
    let mut labels = BTreeMap::new();
    for (key, value) in raw {
        let k = key.get_ref();
        if k.is_empty() || k.contains('=') || k.starts_with(RESERVED_LABEL_PREFIX) {
            let (vm, key_text) = (vm.to_owned(), k.clone());
            return Err((key.span().start, Problem::BadLabel { vm, key: key_text }));
        }
        labels.insert(key.into_inner(), value);
    }
    Ok(labels)
}

/// Checks each `depends_on` (known, not itself, once) and sorts the VMs into start
/// order; `spans[i][j]` is where VM `i`'s `j`th dependency is written.
fn start_order(vms: &[VmDef], spans: &[Vec<Range<usize>>]) -> Result<Vec<usize>, Located> {
    let index: HashMap<&str, usize> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| (vm.name.as_str(), i))
        .collect();
    let mut deps = Vec::with_capacity(vms.len());
    for (i, vm) in vms.iter().enumerate() {
        let mut mine: Vec<usize> = Vec::with_capacity(vm.depends_on.len());
        for (dep, span) in vm.depends_on.iter().zip(&spans[i]) {
            let (vm_name, dep_name) = (vm.name.clone(), dep.clone());
            let problem = match index.get(dep.as_str()) {
                None => Problem::UnknownDependency {
                    vm: vm_name,
                    dep: dep_name,
                },
                Some(&d) if d == i => Problem::SelfDependency(vm_name),
                Some(d) if mine.contains(d) => Problem::DuplicateDependency {
                    vm: vm_name,
                    dep: dep_name,
                },
                Some(&d) => {
                    mine.push(d);
                    continue;
                }
            };
            return Err((span.start, problem));
        }
        deps.push(mine);
    }
    order::start_order(&deps).map_err(|cycle| {
        let names: Vec<&str> = cycle.iter().map(|&i| vms[i].name.as_str()).collect();
        // Point at the first VM's depends_on entry naming the second.
        let at = match cycle.as_slice() {
            [first, second, ..] => vms[*first]
                .depends_on
                .iter()
                .position(|d| *d == vms[*second].name)
                .and_then(|j| spans[*first].get(j))
                .map_or(0, |s| s.start),
            _ => 0,
        };
        (at, Problem::Cycle(names.join(" -> ")))
    })
}

/// The TOML parser's error as one line, at its offset; a duplicate `[vm.NAME]` table gets
/// a message of its own.
fn toml_problem(err: &toml::de::Error) -> Located {
    let at = err.span().map_or(0, |s| s.start);
    let lines: Vec<&str> = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let duplicate_vm = lines.iter().find_map(|l| {
        l.strip_prefix("duplicate key `")?
            .strip_suffix("` in table `vm`")
            .map(str::to_owned)
    });
    match duplicate_vm {
        Some(vm) => (at, Problem::DuplicateVm(vm)),
        None => (at, Problem::Toml(lines.join(": "))),
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
