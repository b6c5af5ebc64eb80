//! The shim's Task service: containerd's task calls carried out through hyperxl-core.
//!
//! One task is one VM. `create` turns the snapshot into the VM's root disk and its
//! `config.json` into the VM's machine and spec; `start` boots it the way `hyperxl run
//! -d` does, with a `hyperxl monitor` process of its own as the VM's watcher (so a
//! SIGKILLed shim leaves a watched VM that `shim delete` can still clean up); the
//! console log is copied to the task's stdout FIFO, or, for a task with a terminal or
//! an input, an attach session carries them; `kill` is `hyperxl kill` (SIGKILL) or
//! `hyperxl stop` (any other signal); `delete` is `hyperxl rm -f`. Exec'd processes run
//! in sessions over the VM's control channel, as `hyperxl exec` runs them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::synchronous::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};
use hyperxl_contract::control::ExecRequest;
use hyperxl_contract::Spec;
use hyperxl_core::vm::control::{self, Removal};
use hyperxl_core::vm::exec::{self, Control, ExecOptions};
use hyperxl_core::vm::host::{Host, EXIT_CRASHED};
use hyperxl_core::vm::launch::{self, LaunchOptions};
use hyperxl_core::vm::machine::{Guest, Machine};
use hyperxl_core::vm::monitor::is_init_line;
use hyperxl_core::vm::state::{VmState, VmStore, EXIT_KILLED};
use log::{info, warn};
use oci_spec::runtime::Spec as OciSpec;

use crate::process::{Process, SessionIo, Stdio};
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
    machine: Machine,
    spec: Spec,
    disk: PathBuf,
    vm_id: Option<String>,
    /// Its VM's watcher's, once it runs (the shim's before).
    pid: u32,
    /// The VM's app.
    app: Process,
    execs: HashMap<String, Exec>,
}

/// An exec'd process (`ctr task exec`).
struct Exec {
    request: ExecRequest,
    process: Process,
}

impl Task {
    /// The app (`exec_id` empty) or exec `exec_id`.
    fn process(&self, exec_id: &str) -> TtrpcResult<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.app);
        }
        self.execs
            .get(exec_id)
            .map(|e| &e.process)
            .ok_or_else(|| not_found(exec_id))
    }

    fn process_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.app);
        }
        self.execs
            .get_mut(exec_id)
            .map(|e| &mut e.process)
            .ok_or_else(|| not_found(exec_id))
    }

    /// Its VM, while the app runs.
    fn running_vm(&self, id: &str) -> TtrpcResult<String> {
        self.vm_id
            .clone()
            .filter(|_| self.app.exit.is_none())
            .ok_or_else(|| {
                ttrpc_err(
                    Code::FAILED_PRECONDITION,
                    format!("task {id} is not running"),
                )
            })
    }
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

fn ttrpc_err(code: Code, msg: String) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        code, msg,
    ))
}

fn internal(e: impl std::fmt::Display) -> containerd_shim::protos::ttrpc::Error {
    let msg = format!("{e:#}");
    warn!("{msg}");
    ttrpc_err(Code::INTERNAL, msg)
}

fn not_found(id: &str) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(Code::NOT_FOUND, format!("process {id} not found"))
}

fn unsupported(what: &str) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        Code::UNIMPLEMENTED,
        format!("{what} is not supported by the hyperxl shim"),
    )
}

/// Waits for child process `pid` to end and reaps it; false if it is not our child
/// (a watcher this shim did not start).
fn wait_child(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(raw), None) {
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

impl Service {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Task `id`, locked, for `f`.
    fn with_task<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Task) -> TtrpcResult<R>,
    ) -> TtrpcResult<R> {
        let mut tasks = self.tasks();
        let t = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        f(t)
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

    /// Task `id`'s running VM, as recorded.
    fn running_vm(&self, id: &str) -> TtrpcResult<(VmStore, VmState)> {
        let vm_id = self.with_task(id, |t| t.running_vm(id))?;
        let vms = self.vms()?;
        let vm = vms.load(&vm_id).map_err(internal)?;
        Ok((vms, vm))
    }

    /// Boots task `id`'s VM and starts carrying its stdio and waiting for its end.
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
        // The app's stdio: an attach session for its input and (with a terminal) its
        // output; without a terminal its output is the console, copied from the log.
        let (session_io, stdout, terminal) = {
            let mut tasks = self.tasks();
            let t = tasks
                .get_mut(id)
                .ok_or_else(|| anyhow::anyhow!("task {id} gone"))?;
            t.vm_id = Some(vm_id.clone());
            t.pid = pid;
            let stdio = t.app.stdio.clone();
            let io = t.app.start_session()?;
            let io = (stdio.terminal || io.interactive()).then_some(io);
            (io, stdio.stdout, stdio.terminal)
        };
        let ended = Arc::new(AtomicBool::new(false));
        let copier = (!terminal).then(|| {
            let (vms, vm_id, ended) = (vms.clone(), vm_id.clone(), ended.clone());
            std::thread::spawn(move || copy_output(&vms, &vm_id, &stdout, &ended))
        });
        let session = session_io.map(|io| {
            let (state_dir, vm_id) = (self.state_dir.clone(), vm_id.clone());
            std::thread::spawn(move || {
                let interactive = io.interactive();
                let run = io.streams(terminal).and_then(|streams| {
                    exec::attach_app_in(&state_dir, &vm_id, terminal, interactive, streams)
                        .map_err(std::io::Error::other)
                });
                if let Err(e) = run {
                    warn!("the app's stdio in VM {vm_id}: {e:#}");
                }
            })
        });
        let this = self.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            let outputs = [copier, session];
            this.await_exit(&vms, &id, &vm_id, pid, &ended, outputs)
        });
        Ok(pid)
    }

    /// Waits for the VM's end (its watcher's exit, when it is our child: no polling),
    /// lets its output reach the FIFOs, records the exit and tells containerd.
    fn await_exit(
        &self,
        vms: &VmStore,
        id: &str,
        vm_id: &str,
        pid: u32,
        ended: &AtomicBool,
        outputs: [Option<JoinHandle<()>>; 2],
    ) {
        // The watcher records the end before it exits; if it is not ours, or died
        // first, the wait below polls (and reconciles) until the end is recorded.
        wait_child(pid);
        let host = Host::connect();
        let code = match control::wait_exited(vms, &host, vm_id, None) {
            Ok(Some(vm)) => vm.exit_code.unwrap_or(EXIT_CRASHED),
            Ok(None) => EXIT_KILLED,
            Err(e) => {
                warn!("waiting for task {id}: {e:#}");
                EXIT_CRASHED
            }
        };
        ended.store(true, Ordering::SeqCst);
        for handle in outputs.into_iter().flatten() {
            let _ = handle.join();
        }
        self.exited(id, "", pid, code);
    }

    /// Starts exec `exec_id` of task `id` in its VM; its end is recorded and published
    /// from a thread of its own.
    fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (vm_id, request, io) = self.with_task(id, |t| {
            let vm_id = t.running_vm(id)?;
            let e = t.execs.get_mut(exec_id).ok_or_else(|| not_found(exec_id))?;
            if e.process.status != Status::CREATED {
                return Err(ttrpc_err(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} was started already"),
                ));
            }
            let io = e.process.start_session().map_err(internal)?;
            Ok((vm_id, e.request.clone(), io))
        })?;
        let pid = std::process::id();
        let this = self.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let code = match run_exec(&this.state_dir, &vm_id, request, io) {
                Ok(code) => code,
                Err(e) => {
                    warn!("exec {exec_id} in task {id}: {e:#}");
                    EXIT_CRASHED
                }
            };
            this.exited(&id, &exec_id, pid, code);
        });
        Ok(pid)
    }

    /// The app (`exec_id` empty) or an exec ended with `code`: recorded, and told to
    /// containerd (TaskExit).
    fn exited(&self, id: &str, exec_id: &str, pid: u32, code: i32) {
        let at = now();
        let exit_status = u32::try_from(code).unwrap_or(255);
        self.finish(id, exec_id, exit_status, at.clone());
        let event = TaskExit {
            container_id: id.to_string(),
            id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
            pid,
            exit_status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
    }

    /// Records the end of the app (`exec_id` empty) or an exec, and wakes the waiters.
    fn finish(&self, id: &str, exec_id: &str, status: u32, at: Timestamp) {
        let mut tasks = self.tasks();
        if let Some(p) = tasks.get_mut(id).and_then(|t| t.process_mut(exec_id).ok()) {
            p.finish(status, at);
        }
        self.tasks.changed.notify_all();
    }

    /// Pauses or resumes the task's VM (Xen's pause: its vCPUs stop, nothing else).
    fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<()> {
        let (_, vm) = self.running_vm(id)?;
        control::set_paused(&Host::connect(), &vm, paused).map_err(internal)?;
        self.with_task(id, |t| {
            if t.app.exit.is_none() {
                t.app.status = if paused {
                    Status::PAUSED
                } else {
                    Status::RUNNING
                };
            }
            Ok(())
        })?;
        let container_id = id.to_string();
        if paused {
            let event = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event));
        } else {
            let event = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event));
        }
        Ok(())
    }
}

/// Runs `request` in VM `vm_id` with the process's FIFOs as its stdio; returns its exit
/// code.
fn run_exec(
    state_dir: &Path,
    vm_id: &str,
    request: ExecRequest,
    io: SessionIo,
) -> anyhow::Result<i32> {
    let opts = ExecOptions {
        interactive: io.interactive(),
        request,
        detach_keys: false,
    };
    exec::exec_in(state_dir, vm_id, &opts, io.streams(true)?)
}

/// Copies the VM's console log (the app's output, without the init's and kernel's own
/// lines) to the task's stdout FIFO until `ended` is set and the log is read to its
/// end.
fn copy_output(vms: &VmStore, vm_id: &str, stdout: &str, ended: &AtomicBool) {
    // A client already gone (`ctr run -d`) is no output: the log is still followed to
    // the end, so the task's end is not held up.
    let mut out = crate::process::open_output(stdout).unwrap_or_else(|e| {
        warn!("opening the task's stdout {stdout}: {e}");
        None
    });
    let until = || Ok(ended.load(Ordering::SeqCst));
    let result = hyperxl_core::vm::logs::read_log_until(vms, vm_id, false, until, |raw| {
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
            return Err(ttrpc_err(Code::ALREADY_EXISTS, format!("task {id} exists")));
        }
        let bundle = PathBuf::from(&req.bundle);
        let oci_spec = OciSpec::load(bundle.join("config.json")).map_err(internal)?;
        let machine = oci::machine(&oci_spec).map_err(internal)?;
        let mut spec = oci::spec(&oci_spec).map_err(internal)?;
        // The client's choice, not the bundle's (`ctr run -t` sets both).
        spec.terminal = req.terminal;
        // Input comes over an attach session; a terminal's first output waits for it.
        spec.open_stdin = !req.stdin.is_empty();
        spec.attached = req.terminal;
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
            rootfs::RootfsError::Refused(why) => ttrpc_err(Code::FAILED_PRECONDITION, why),
            e => internal(e),
        })?;
        let pid = std::process::id();
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.tasks().insert(
            id.clone(),
            Task {
                bundle: bundle.clone(),
                machine,
                spec,
                disk,
                vm_id: None,
                pid,
                app: Process::new(stdio),
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
            let pid = self.start_exec(&req.id, &req.exec_id)?;
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
        self.with_task(&req.id, |t| match t.app.status {
            Status::CREATED => Ok(()),
            _ => Err(ttrpc_err(
                Code::FAILED_PRECONDITION,
                format!("task {} was started already", req.id),
            )),
        })?;
        let pid = match self.boot(&req.id) {
            Ok(pid) => pid,
            Err(e) => {
                self.finish(&req.id, "", EXIT_CRASHED as u32, now());
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
        self.with_task(&req.id, |t| {
            let bundle = t.bundle.to_string_lossy();
            Ok(t.process(&req.exec_id)?
                .state(&req.id, &req.exec_id, &bundle, t.pid))
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut tasks = self.tasks();
        loop {
            let t = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if let Some((exit_status, at)) = t.process(&req.exec_id)?.exit.clone() {
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
        let signal = i32::try_from(req.signal)
            .map_err(|_| ttrpc_err(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        if !req.exec_id.is_empty() {
            // To the exec'd process, through its session.
            return self.with_task(&req.id, |t| {
                let p = t.process(&req.exec_id)?;
                if p.exit.is_some() || !p.ask(Control::Signal(signal)) {
                    return Err(ttrpc_err(
                        Code::NOT_FOUND,
                        format!("exec {} is not running", req.exec_id),
                    ));
                }
                Ok(api::Empty::default())
            });
        }
        let (vm_id, started) = self.with_task(&req.id, |t| {
            let running = t.vm_id.clone().filter(|_| t.app.exit.is_none());
            Ok((running, t.vm_id.is_some()))
        })?;
        let Some(vm_id) = vm_id else {
            if !started {
                // Not started: nothing runs; it ends as a runc task killed before start.
                self.finish(&req.id, "", 128 + req.signal, now());
            }
            return Ok(api::Empty::default());
        };
        let vms = self.vms()?;
        let host = Host::connect();
        let vm = vms.load(&vm_id).map_err(internal)?;
        if signal == libc::SIGKILL {
            control::kill(&vms, &host, &vm).map_err(internal)?;
        } else {
            // Any other signal goes to the app, as runc's shim delivers it to the
            // container's first process; the task runs on if the app does.
            exec::signal_app(&vms, &host, vm, signal)
                .map_err(|e| ttrpc_err(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            return self.with_task(&req.id, |t| {
                let pid = t.pid;
                let p = t.process(&req.exec_id)?;
                if p.status == Status::RUNNING {
                    return Err(ttrpc_err(
                        Code::FAILED_PRECONDITION,
                        format!("exec {} is running", req.exec_id),
                    ));
                }
                let (exit_status, exited_at) = p.exit.clone().unwrap_or_default();
                t.execs.remove(&req.exec_id);
                Ok(api::DeleteResponse {
                    pid,
                    exit_status,
                    exited_at: Some(exited_at).into(),
                    ..Default::default()
                })
            });
        }
        let (bundle, pid, (exit_status, exited_at)) = self.with_task(&req.id, |t| {
            if t.vm_id.is_some() && t.app.exit.is_none() {
                return Err(ttrpc_err(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is running: kill it first", req.id),
                ));
            }
            Ok((
                t.bundle.clone(),
                t.pid,
                t.app.exit.clone().unwrap_or_default(),
            ))
        })?;
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
        let pid = self.with_task(&req.id, |t| Ok(t.pid))?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.with_task(&req.id, |t| {
                t.process_mut(&req.exec_id)?.close_stdin();
                Ok(())
            })?;
        }
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

    /// What Xen knows of the VM, as cgroup v2 metrics: CPU time of its vCPUs, its
    /// memory (all of it is the guest's, used or not) and limit.
    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics};
        let (_, vm) = self.running_vm(&req.id)?;
        let info = vm
            .domid
            .and_then(|d| Host::connect().info(d, &vm.domain_name()))
            .ok_or_else(|| internal(format!("VM {} has no domain", vm.name)))?;
        let metrics = Metrics {
            cpu: Some(CPUStat {
                usage_usec: info.cpu_time_ns / 1000,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: info.memory_kib * 1024,
                usage_limit: info.max_memory_kib * 1024,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let stats = containerd_shim::util::convert_to_any(Box::new(metrics)).map_err(internal)?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false)?;
        Ok(api::Empty::default())
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
        self.with_task(&req.id, |t| {
            if t.execs.contains_key(&req.exec_id) {
                return Err(ttrpc_err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let process = Process::new(stdio);
            t.execs
                .insert(req.exec_id.clone(), Exec { request, process });
            Ok(())
        })?;
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event));
        Ok(api::Empty::default())
    }

    /// The guest terminal follows the client's (ctr resizes at start and on SIGWINCH).
    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let size = (u16::try_from(req.height), u16::try_from(req.width));
        let (Ok(rows), Ok(cols)) = size else {
            return Err(ttrpc_err(
                Code::INVALID_ARGUMENT,
                "terminal size out of range".into(),
            ));
        };
        self.with_task(&req.id, |t| {
            t.process(&req.exec_id)?.ask(Control::Resize { rows, cols });
            Ok(())
        })?;
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
