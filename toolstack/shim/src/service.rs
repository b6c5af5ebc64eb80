//! The shim's Task service: containerd's task calls carried out through hyperxl-core.
//!
//! One task is one VM. `create` turns the snapshot into the VM's root disk and its
//! `config.json` into the VM's machine and spec; `start` boots it the way `hyperxl run
//! -d` does, with a `hyperxl monitor` process of its own as the VM's watcher (so a
//! SIGKILLed shim leaves a watched VM that `shim delete` can still clean up); the
//! console log is copied to the task's stdout FIFO; `kill` is `hyperxl kill` (SIGKILL)
//! or `hyperxl stop` (any other signal); `delete` is `hyperxl rm -f`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::synchronous::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};
use hyperxl_contract::control::ExecRequest;
use hyperxl_contract::Spec;
use hyperxl_core::vm::control::{self, Removal};
use hyperxl_core::vm::host::Host;
use hyperxl_core::vm::launch::{self, LaunchOptions};
use hyperxl_core::vm::machine::{Guest, Machine};
use hyperxl_core::vm::monitor::is_init_line;
use hyperxl_core::vm::state::{VmState, VmStore, EXIT_KILLED};
use log::{info, warn};
use oci_spec::runtime::Spec as OciSpec;

use crate::{oci, rootfs};

/// Label: the containerd namespace of a VM the shim runs.
pub const LABEL_NAMESPACE: &str = "hyperxl.containerd.namespace";
/// Label: the containerd task (container) id.
pub const LABEL_TASK: &str = "hyperxl.containerd.id";

/// The shim, and (cloned, with a publisher) its task service.
#[derive(Clone)]
pub struct Service {
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: PathBuf,
    state_dir: PathBuf,
    publisher: Option<Arc<RemotePublisher>>,
    tasks: Arc<Tasks>,
}

#[derive(Default)]
struct Tasks {
    map: Mutex<HashMap<String, Task>>,
    changed: Condvar,
}

/// What the shim knows of one task.
struct Task {
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    machine: Machine,
    spec: Spec,
    disk: PathBuf,
    vm_id: Option<String>,
    pid: u32,
    status: Status,
    exit: Option<(u32, Timestamp)>,
    execs: HashMap<String, Exec>,
}

/// An exec'd process (`ctr task exec`): a session over the VM's control channel, as
/// `hyperxl exec` runs one.
struct Exec {
    request: ExecRequest,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    status: Status,
    exit: Option<(u32, Timestamp)>,
}

fn state_dir() -> PathBuf {
    std::env::var_os("HYPERXL_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/hyperxl"))
}

/// `hyperxl` for the VMs' monitors: `$HYPERXL_BIN`, else beside this binary, else on
/// `PATH`.
fn hyperxl_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERXL_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("hyperxl")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("hyperxl"))
}

/// The VM name for task `id` of `namespace`: `NAMESPACE.ID` when that is a valid VM
/// name, else `ctr-` and a digest of both (containerd ids may be 64 characters).
pub fn vm_name(namespace: &str, id: &str) -> String {
    let plain = format!("{namespace}.{id}");
    if hyperxl_core::vm::state::validate_name(&plain).is_ok() {
        return plain;
    }
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(format!("{namespace}/{id}")));
    format!("ctr-{}", &digest[..24])
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

fn ttrpc_err(
    code: containerd_shim::protos::ttrpc::Code,
    msg: String,
) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        code, msg,
    ))
}

fn internal(e: impl std::fmt::Display) -> containerd_shim::protos::ttrpc::Error {
    let msg = format!("{e:#}");
    warn!("{msg}");
    ttrpc_err(containerd_shim::protos::ttrpc::Code::INTERNAL, msg)
}

fn not_found(id: &str) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::NOT_FOUND,
        format!("task {id} not found"),
    )
}

fn unsupported(what: &str) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::UNIMPLEMENTED,
        format!("{what} is not supported by the hyperxl shim yet"),
    )
}

impl Service {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = &self.publisher {
            let ctx = containerd_shim::protos::ttrpc::context::Context::default();
            if let Err(e) = p.publish(ctx, topic, &self.namespace, event) {
                warn!("publishing {topic}: {e}");
            }
        }
    }

    fn vms(&self) -> Result<VmStore, containerd_shim::protos::ttrpc::Error> {
        VmStore::open(&self.state_dir).map_err(internal)
    }

    /// The VMs of this namespace's task `id` (normally one).
    fn vms_of(&self, id: &str) -> Vec<VmState> {
        let Ok(vms) = VmStore::open(&self.state_dir) else {
            return Vec::new();
        };
        vms.list()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.labels.get(LABEL_NAMESPACE) == Some(&self.namespace))
            .filter(|v| v.labels.get(LABEL_TASK).map(String::as_str) == Some(id))
            .collect()
    }

    /// Destroys and removes task `id`'s VMs, its root disk and its rootfs mount.
    fn clean_up(&self, id: &str, bundle: &Path) {
        if let Ok(vms) = VmStore::open(&self.state_dir) {
            let host = Host::connect();
            for vm in self.vms_of(id) {
                let how = Removal {
                    force: true,
                    volumes: true,
                };
                if let Err(e) = control::remove(&vms, &host, &vm, how) {
                    warn!("removing VM {}: {e:#}", vm.name);
                }
            }
        }
        let _ = std::fs::remove_file(self.disk_path(id));
        rootfs::unmount(bundle);
    }

    fn disk_path(&self, id: &str) -> PathBuf {
        self.state_dir
            .join("containerd")
            .join(format!("{}.sqfs", vm_name(&self.namespace, id)))
    }

    /// Boots task `id`'s VM and starts copying its output and waiting for its end.
    fn boot(&self, id: &str) -> anyhow::Result<u32> {
        let (machine, spec, disk) = {
            let tasks = self.tasks();
            let t = tasks
                .get(id)
                .ok_or_else(|| anyhow::anyhow!("task {id} not found"))?;
            (t.machine, t.spec.clone(), t.disk.clone())
        };
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(LABEL_NAMESPACE.to_string(), self.namespace.clone());
        labels.insert(LABEL_TASK.to_string(), id.to_string());
        let opts = LaunchOptions {
            image: format!("(containerd {}/{id})", self.namespace),
            name: Some(vm_name(&self.namespace, id)),
            auto_remove: false,
            machine,
            guest: Guest::installed_or(None, None),
            show_init_lines: false,
            log: Default::default(),
            labels,
            // containerd's CNI networking is not wired to hyperxl's yet: only `lo`.
            net: hyperxl_core::net::NetRequest {
                disabled: true,
                ..Default::default()
            },
            storage: Default::default(),
            pull_observer: None,
        };
        let vms = VmStore::open(&self.state_dir)?;
        let p = launch::prepare_from_disk(&self.state_dir, &opts, disk, spec)?;
        let vm_id = launch::run_detached_with(&hyperxl_exe(), &self.state_dir, &vms, p)?;
        let pid = vms
            .load(&vm_id)
            .ok()
            .and_then(|vm| vm.monitor_pid)
            .unwrap_or_else(std::process::id);
        let stdout = {
            let mut tasks = self.tasks();
            let t = tasks
                .get_mut(id)
                .ok_or_else(|| anyhow::anyhow!("task {id} gone"))?;
            t.vm_id = Some(vm_id.clone());
            t.pid = pid;
            t.status = Status::RUNNING;
            t.stdout.clone()
        };
        let copier = {
            let (vms, vm_id) = (vms.clone(), vm_id.clone());
            std::thread::spawn(move || copy_output(&vms, &vm_id, &stdout))
        };
        let this = self.clone();
        let id = id.to_string();
        std::thread::spawn(move || this.await_exit(&vms, &id, &vm_id, pid, copier));
        Ok(pid)
    }

    /// Waits for the VM's end, lets the output copier finish, records the exit and
    /// tells containerd.
    fn await_exit(
        &self,
        vms: &VmStore,
        id: &str,
        vm_id: &str,
        pid: u32,
        copier: std::thread::JoinHandle<()>,
    ) {
        let host = Host::connect();
        let code = match control::wait_exited(vms, &host, vm_id, None) {
            Ok(Some(vm)) => vm.exit_code.unwrap_or(hyperxl_core::vm::host::EXIT_CRASHED),
            Ok(None) => EXIT_KILLED,
            Err(e) => {
                warn!("waiting for task {id}: {e:#}");
                hyperxl_core::vm::host::EXIT_CRASHED
            }
        };
        let _ = copier.join();
        let exited_at = now();
        let exit_status = u32::try_from(code).unwrap_or(255);
        self.set_exit(id, exit_status, exited_at.clone());
        let event = TaskExit {
            container_id: id.to_string(),
            id: id.to_string(),
            pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
    }

    /// Starts exec `exec_id` of task `id` in its VM; its end is recorded and published
    /// from a thread of its own.
    fn start_exec(&self, id: &str, exec_id: &str) -> anyhow::Result<u32> {
        let (vm_id, exec) = {
            let mut tasks = self.tasks();
            let t = tasks
                .get_mut(id)
                .ok_or_else(|| anyhow::anyhow!("task {id} not found"))?;
            let vm_id = t
                .vm_id
                .clone()
                .filter(|_| t.exit.is_none())
                .ok_or_else(|| anyhow::anyhow!("task {id} is not running"))?;
            let e = t
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| anyhow::anyhow!("exec {exec_id} not found"))?;
            if e.status != Status::CREATED {
                anyhow::bail!("exec {exec_id} was started already");
            }
            e.status = Status::RUNNING;
            let copy = (
                e.request.clone(),
                e.stdin.clone(),
                e.stdout.clone(),
                e.stderr.clone(),
                e.terminal,
            );
            (vm_id, copy)
        };
        let (request, stdin, stdout, stderr, _terminal) = exec;
        let pid = std::process::id();
        let this = self.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let code = match run_exec(&this.state_dir, &vm_id, request, &stdin, &stdout, &stderr) {
                Ok(code) => code,
                Err(e) => {
                    warn!("exec {exec_id} in task {id}: {e:#}");
                    hyperxl_core::vm::host::EXIT_CRASHED
                }
            };
            let at = now();
            let exit_status = u32::try_from(code).unwrap_or(255);
            {
                let mut tasks = this.tasks();
                if let Some(e) = tasks.get_mut(&id).and_then(|t| t.execs.get_mut(&exec_id)) {
                    e.exit = Some((exit_status, at.clone()));
                    e.status = Status::STOPPED;
                }
                this.tasks.changed.notify_all();
            }
            let event = TaskExit {
                container_id: id.clone(),
                id: exec_id.clone(),
                pid,
                exit_status,
                exited_at: Some(at).into(),
                ..Default::default()
            };
            this.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
        });
        Ok(pid)
    }

    fn set_exit(&self, id: &str, status: u32, at: Timestamp) {
        let mut tasks = self.tasks();
        if let Some(t) = tasks.get_mut(id) {
            if t.exit.is_none() {
                t.exit = Some((status, at));
            }
            t.status = Status::STOPPED;
        }
        self.tasks.changed.notify_all();
    }
}

/// Opens a stdin FIFO without waiting for a writer (a plain open blocks until one
/// comes, and `ctr task exec` without `-i` never opens it): with none, it reads EOF.
fn open_stdin(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok(f)
}

/// Runs `request` in VM `vm_id` with the task's FIFOs as its stdio; returns its exit
/// code.
fn run_exec(
    state_dir: &Path,
    vm_id: &str,
    request: ExecRequest,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> anyhow::Result<i32> {
    use hyperxl_core::vm::exec::{exec_with, ExecOptions, Streams};
    let writer = |path: &str| -> anyhow::Result<Option<Box<dyn Write + Send>>> {
        if path.is_empty() {
            return Ok(None);
        }
        let f = OpenOptions::new().write(true).open(path)?;
        Ok(Some(Box::new(f)))
    };
    let streams = Streams {
        stdin: if stdin.is_empty() {
            None
        } else {
            Some(open_stdin(stdin)?)
        },
        // No FIFO: the process's output goes nowhere (not to the shim's own stdio).
        stdout: Some(writer(stdout)?.unwrap_or_else(|| Box::new(std::io::sink()))),
        stderr: Some(writer(stderr)?.unwrap_or_else(|| Box::new(std::io::sink()))),
    };
    let opts = ExecOptions {
        interactive: !stdin.is_empty(),
        request,
        detach_keys: false,
    };
    exec_with(state_dir, vm_id, &opts, streams)
}

/// Copies the VM's console log (the app's output, without the init's and kernel's own
/// lines) to the task's stdout FIFO until the VM ends.
fn copy_output(vms: &VmStore, vm_id: &str, stdout: &str) {
    let mut out = if stdout.is_empty() {
        None
    } else {
        match OpenOptions::new().write(true).open(stdout) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!("opening the task's stdout {stdout}: {e}");
                None
            }
        }
    };
    let result = hyperxl_core::vm::logs::read_log(vms, vm_id, true, false, |raw| {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(f) = out.as_mut() {
            if !is_init_line(text) {
                // The reader went away (ctr gone): keep following, so the end is seen.
                if writeln!(f, "{text}").is_err() {
                    out = None;
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        warn!("copying the output of VM {vm_id}: {e:#}");
    }
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle: PathBuf::from(&args.bundle),
            state_dir: state_dir(),
            publisher: None,
            tasks: Arc::new(Tasks::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // containerd 1.6 reads it back when it reloads shims, and the daemon at its end.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// After the shim died: whatever of the task is left goes.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let id = std::env::args()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[0] == "-id")
            .map(|w| w[1].clone())
            .unwrap_or_default();
        let bundle = if self.bundle.as_os_str().is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            self.bundle.clone()
        };
        info!("cleaning up task {id} of {}", self.namespace);
        self.clean_up(&id, &bundle);
        Ok(DeleteResponse {
            exit_status: EXIT_KILLED as u32,
            exited_at: Some(now()).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let mut service = self.clone();
        service.publisher = Some(Arc::new(publisher));
        service
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        if self.tasks().contains_key(&id) {
            return Err(ttrpc_err(
                containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                format!("task {id} exists"),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let oci_spec = OciSpec::load(bundle.join("config.json")).map_err(internal)?;
        let machine = oci::machine(&oci_spec).map_err(internal)?;
        let mut spec = oci::spec(&oci_spec).map_err(internal)?;
        spec.terminal = req.terminal;
        let disk = self.disk_path(&id);
        if let Some(dir) = disk.parent() {
            std::fs::create_dir_all(dir).map_err(internal)?;
        }
        // As runc does, a command the image does not have fails the create (ctr exits 1)
        // rather than a VM that boots to say 127.
        let path = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .map(str::to_string);
        let check = |root: &Path| {
            let cmd = &spec.args[0];
            if rootfs::has_executable(root, cmd, path.as_deref(), &spec.working_dir) {
                Ok(())
            } else {
                Err(format!("exec: {cmd:?}: executable file not found in $PATH"))
            }
        };
        rootfs::build_disk(&bundle, &req.rootfs, &disk, check).map_err(|e| match e {
            rootfs::RootfsError::Refused(why) => ttrpc_err(
                containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                why,
            ),
            e => internal(e),
        })?;
        let pid = std::process::id();
        self.tasks().insert(
            id.clone(),
            Task {
                bundle: bundle.clone(),
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                machine,
                spec,
                disk,
                vm_id: None,
                pid,
                status: Status::CREATED,
                exit: None,
                execs: HashMap::new(),
            },
        );
        info!("created task {id}: {:?}", machine);
        let event = TaskCreate {
            container_id: id,
            bundle: req.bundle,
            rootfs: req.rootfs,
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event));
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            let pid = self.start_exec(&req.id, &req.exec_id).map_err(internal)?;
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event));
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        match self.tasks().get(&req.id) {
            None => return Err(not_found(&req.id)),
            Some(t) if t.status != Status::CREATED => {
                return Err(ttrpc_err(
                    containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {} was started already", req.id),
                ))
            }
            Some(_) => {}
        }
        let pid = match self.boot(&req.id) {
            Ok(pid) => pid,
            Err(e) => {
                self.set_exit(&req.id, hyperxl_core::vm::host::EXIT_CRASHED as u32, now());
                return Err(internal(e));
            }
        };
        let event = TaskStart {
            container_id: req.id.clone(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event));
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let tasks = self.tasks();
        let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            let (exit_status, exited_at) = e.exit.clone().unwrap_or_default();
            return Ok(api::StateResponse {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                bundle: t.bundle.to_string_lossy().into_owned(),
                pid: t.pid,
                status: e.status.into(),
                stdin: e.stdin.clone(),
                stdout: e.stdout.clone(),
                stderr: e.stderr.clone(),
                terminal: e.terminal,
                exit_status,
                exited_at: e.exit.as_ref().map(|_| exited_at).into(),
                ..Default::default()
            });
        }
        let (exit_status, exited_at) = t.exit.clone().unwrap_or_default();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.to_string_lossy().into_owned(),
            pid: t.pid,
            status: t.status.into(),
            stdin: t.stdin.clone(),
            stdout: t.stdout.clone(),
            stderr: t.stderr.clone(),
            terminal: t.terminal,
            exit_status,
            exited_at: t.exit.as_ref().map(|_| exited_at).into(),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut tasks = self.tasks();
        loop {
            let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let exit = if req.exec_id.is_empty() {
                t.exit.clone()
            } else {
                let e = t
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(&req.exec_id))?;
                e.exit.clone()
            };
            if let Some((exit_status, at)) = exit {
                return Ok(api::WaitResponse {
                    exit_status,
                    exited_at: Some(at).into(),
                    ..Default::default()
                });
            }
            tasks = self
                .tasks
                .changed
                .wait(tasks)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            return Err(unsupported("signalling an exec'd process"));
        }
        let vm_id = {
            let tasks = self.tasks();
            let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if t.exit.is_some() {
                return Ok(api::Empty::default());
            }
            t.vm_id.clone()
        };
        let Some(vm_id) = vm_id else {
            // Not started: nothing runs; it ends as a runc task killed before start.
            self.set_exit(&req.id, 128 + req.signal, now());
            return Ok(api::Empty::default());
        };
        let vms = self.vms()?;
        let host = Host::connect();
        let vm = vms.load(&vm_id).map_err(internal)?;
        if req.signal == libc::SIGKILL as u32 {
            control::kill(&vms, &host, &vm).map_err(internal)?;
        } else {
            // Any other signal asks the app to stop (SIGTERM, then SIGKILL after the
            // grace period), as `hyperxl stop` does; the wait happens elsewhere.
            let state_dir = self.state_dir.clone();
            std::thread::spawn(move || {
                let host = Host::connect();
                if let Ok(vms) = VmStore::open(&state_dir) {
                    let grace = Duration::from_secs(10);
                    if let Err(e) = control::stop(&vms, &host, &vm, grace) {
                        warn!("stopping VM {}: {e:#}", vm.name);
                    }
                }
            });
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut tasks = self.tasks();
            let t = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            let pid = t.pid;
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            if e.status == Status::RUNNING {
                return Err(ttrpc_err(
                    containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                    format!("exec {} is running", req.exec_id),
                ));
            }
            let (exit_status, exited_at) = e.exit.clone().unwrap_or_default();
            t.execs.remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid,
                exit_status,
                exited_at: Some(exited_at).into(),
                ..Default::default()
            });
        }
        let task = {
            let tasks = self.tasks();
            let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if t.status == Status::RUNNING && t.exit.is_none() {
                return Err(ttrpc_err(
                    containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {} is running: kill it first", req.id),
                ));
            }
            (t.bundle.clone(), t.pid, t.exit.clone().unwrap_or_default())
        };
        let (bundle, pid, (exit_status, exited_at)) = task;
        self.clean_up(&req.id, &bundle);
        self.tasks().remove(&req.id);
        let event = TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid,
            exit_status,
            exited_at: Some(exited_at.clone()).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event));
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let tasks = self.tasks();
        let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: t.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // stdin is not connected yet: nothing to close.
        Ok(api::Empty::default())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map_or(0, |t| t.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("hyperxl {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Err(unsupported("stats"))
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("pause"))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("resume"))
    }

    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("update"))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("checkpoint"))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let process: oci_spec::runtime::Process = req
            .spec
            .as_ref()
            .map(|any| serde_json::from_slice(&any.value))
            .transpose()
            .map_err(internal)?
            .ok_or_else(|| internal("exec without a process spec"))?;
        let request = oci::exec_request(&process, req.terminal).map_err(internal)?;
        {
            let mut tasks = self.tasks();
            let t = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            if t.execs.contains_key(&req.exec_id) {
                return Err(ttrpc_err(
                    containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            t.execs.insert(
                req.exec_id.clone(),
                Exec {
                    request,
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    status: Status::CREATED,
                    exit: None,
                },
            );
        }
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event));
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        // The guest terminal keeps the size it started with (not followed yet); ctr
        // resizes at start and on every SIGWINCH, which is no error.
        Ok(api::Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_valid_and_distinct() {
        assert_eq!(vm_name("default", "t1"), "default.t1");
        let long = "a".repeat(64);
        let n = vm_name("k8s.io", &long);
        assert!(n.starts_with("ctr-") && n.len() == 28, "{n}");
        assert_ne!(n, vm_name("k8s.io", &"b".repeat(64)));
        assert!(hyperxl_core::vm::state::validate_name(&vm_name("x", "/../../etc")).is_ok());
    }
}
