//! Exec sessions: processes dom0 starts in the running guest (`hyperxl exec`), each over
//! its own vchan (see [`hyperxl_contract::control`] for the protocol).
//!
//! dom0 creates every session: it grants the rings and announces them under
//! [`keys::EXEC_DIR`]`/<ID>`, a directory only dom0 can write; a listener thread here
//! watches that directory and serves each new session in a thread of its own. The
//! guest cannot open a session dom0 did not ask for.
//!
//! A session's process gets pipes for stdin, stdout and stderr, runs as the request
//! says (user, working directory, environment over the app's), and its exit code is
//! handed over by PID 1's reaper ([`reaped`]), which reaps every child.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hyperxl_contract::control::{
    self, Builtin, ExecRequest, Frame, CONTROL_VERSION, HEADER_LEN, MAX_PAYLOAD, STDIN_WINDOW,
};
use hyperxl_contract::{exit, keys, user, Rlimit};
use hyperxl_vchan::Vchan;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use xenstore_wire::{Transport, Xenstore};

use crate::console::say;
use crate::exec::{self, Launch, Stdio};

/// Sessions served at once; more wait for dom0 to end one.
const MAX_SESSIONS: usize = 64;
/// How long a new session may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the listener looks for sessions that waited for a free slot.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// What a session's process inherits from the app.
#[derive(Debug, Clone)]
pub struct AppDefaults {
    /// The app's environment.
    pub env: Vec<String>,
    /// The app's user, as the spec says it.
    pub user: String,
    /// The app's working directory.
    pub workdir: String,
    /// The app's resource limits.
    pub rlimits: Vec<Rlimit>,
}

/// How an attach session reaches the app's input (`run -i`, `run -t`), while no
/// session holds it.
enum AppInput {
    /// The write end of the app's stdin pipe.
    Pipe(OwnedFd),
    /// The app's pty master (its output is copied by [`spawn_tty_copier`]).
    Tty(OwnedFd),
}

static APP_INPUT: Mutex<Option<AppInput>> = Mutex::new(None);

/// Keeps the write end of the app's stdin pipe for attach sessions (`run -i`).
pub fn set_app_stdin(fd: OwnedFd) {
    *APP_INPUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(AppInput::Pipe(fd));
}

/// Where the tty copier also sends the app's output while a session is attached: the
/// session's generation and the write end of its pipe. Its lock also orders each chunk
/// of output before or after a new session (see [`TTY_BACKLOG`]).
static TTY_VIEWER: Mutex<Option<(u64, std::fs::File)>> = Mutex::new(None);
/// The app's output until the first session attached (the latest [`BACKLOG_BYTES`]),
/// handed to that session: `run -t` attaches once the app runs, and a shell's first
/// prompt or a short app's whole output comes before that. None once taken.
static TTY_BACKLOG: Mutex<Option<Vec<u8>>> = Mutex::new(None);
const BACKLOG_BYTES: usize = 64 << 10;
/// Set when the app's side of the pty closed: no later session gets the terminal.
static TTY_ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TTY_GENERATION: AtomicUsize = AtomicUsize::new(0);
/// Attach sessions of a tty app still running (the init waits for them to hand the
/// app's last output to dom0 before it powers off).
static TTY_ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// A pseudo-terminal of `rows` x `cols` (0: the kernel's default): (master, slave),
/// both close-on-exec (sessions fork concurrently).
pub fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("a terminal: {what}: {e}");
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| err("/dev/ptmx", &e))?;
    grantpt(&master).map_err(|e| err("grantpt", &e))?;
    unlockpt(&master).map_err(|e| err("unlockpt", &e))?;
    let name = ptsname_r(&master).map_err(|e| err("ptsname", &e))?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| err(&name, &e))?
        .into();
    let master = master
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err("dup", &e))?;
    set_window_size(&master, rows, cols);
    Ok((master, slave))
}

/// `run -t`: keeps the app's pty master for attach sessions and copies everything the
/// app writes to the console (so `logs` records it) and to the attached session, if
/// any. The receiver says when the app's side of the pty is closed and all its output
/// was copied.
pub fn spawn_tty_copier(master: OwnedFd) -> Result<std::sync::mpsc::Receiver<()>, String> {
    let input = master
        .try_clone()
        .map_err(|e| format!("dup of the pty: {e}"))?;
    *APP_INPUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(AppInput::Tty(input));
    *TTY_BACKLOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    let (done, drained) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("tty".into())
        .spawn(move || {
            copy_tty(std::fs::File::from(master));
            let _ = done.send(());
        })
        .map_err(|e| format!("starting the tty copier: {e}"))?;
    Ok(drained)
}

fn copy_tty(mut master: std::fs::File) {
    let mut console = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
        .ok();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Sessions share the master's file description and set it non-blocking.
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::NONE);
        let n = match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            // EIO: every slave end is closed (the app and its children are gone).
            Err(_) => break,
        };
        if let Some(c) = console.as_mut() {
            let _ = c.write_all(&buf[..n]);
        }
        let viewer = {
            let viewer = TTY_VIEWER.lock().unwrap_or_else(|e| e.into_inner());
            if viewer.is_none() {
                let mut backlog = TTY_BACKLOG.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(b) = backlog.as_mut() {
                    b.extend_from_slice(&buf[..n]);
                    let over = b.len().saturating_sub(BACKLOG_BYTES);
                    b.drain(..over);
                }
            }
            viewer.as_ref().and_then(|(_, f)| f.try_clone().ok())
        };
        // Blocking: a session that stops reading holds the app up, as a terminal does;
        // a session that ends closes its read end and this write fails.
        if let Some(mut v) = viewer {
            let _ = v.write_all(&buf[..n]);
        }
    }
    // The attached session reads the end of its pipe; no later one gets the terminal.
    TTY_ENDED.store(true, Ordering::SeqCst);
    TTY_VIEWER.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// After the app exited: waits (at most `limit`) until its pty output was copied and an
/// attached session handed it to dom0; with `attached` (dom0 is coming: `run -t`), also
/// for that session to take what the app wrote before it came.
pub fn drain_tty(drained: &std::sync::mpsc::Receiver<()>, attached: bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    let _ = drained.recv_timeout(limit);
    let waiting = || {
        let unseen = attached
            && TTY_BACKLOG
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        unseen || TTY_ATTACHED.load(Ordering::SeqCst) > 0
    };
    while waiting() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Session processes by pid, with the pipe their exit code goes to.
static WAITERS: Mutex<BTreeMap<i32, OwnedFd>> = Mutex::new(BTreeMap::new());

/// Called by PID 1's reaper for every child that is not the app: hands a session
/// process's exit code to its session.
pub fn reaped(pid: Pid, code: i32) {
    let fd = WAITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid.as_raw());
    if let Some(fd) = fd {
        let _ = std::fs::File::from(fd).write_all(&code.to_le_bytes());
    }
}

/// Watches [`keys::EXEC_DIR`] on its own xenstore connection and serves new sessions.
pub fn spawn_listener<T: Transport + Send + 'static>(mut xs: Xenstore<T>, app: AppDefaults) {
    let app = Arc::new(app);
    let listener = thread::Builder::new().name("exec-listener".into());
    let started = listener.spawn(move || {
        if let Err(e) = xs.watch(keys::EXEC_DIR, "exec") {
            say!("cannot watch {}: {e}", keys::EXEC_DIR);
            return;
        }
        let live = Arc::new(AtomicUsize::new(0));
        let mut seen = BTreeSet::new();
        // Set when a session had to wait for a free slot: look again in a while even if
        // xenstore says nothing (a session ending writes nothing there).
        let mut waiting = false;
        loop {
            let timeout = waiting.then_some(RESCAN_INTERVAL);
            if let Err(e) = xs.next_watch_event(timeout) {
                say!("exec watch failed: {e}");
                return;
            }
            waiting = false;
            let ids = xs.directory(keys::EXEC_DIR).unwrap_or_default();
            // Forget sessions dom0 removed (their ids may not come back, but the set
            // must not grow without bound).
            seen.retain(|id| ids.contains(id));
            for id in ids {
                if seen.contains(&id) {
                    continue;
                }
                if live.load(Ordering::SeqCst) >= MAX_SESSIONS {
                    waiting = true;
                    continue;
                }
                let base = format!("{}/{id}", keys::EXEC_DIR);
                let num = |xs: &mut Xenstore<T>, key: &str| {
                    xs.read_string(&format!("{base}/{key}"))
                        .ok()
                        .and_then(|v| v.trim().parse::<u32>().ok())
                        .filter(|n| *n != 0)
                };
                let (Some(ring_ref), Some(port)) =
                    (num(&mut xs, "ring-ref"), num(&mut xs, "event-channel"))
                else {
                    continue; // not complete yet: the next event brings the rest
                };
                seen.insert(id.clone());
                live.fetch_add(1, Ordering::SeqCst);
                let (app, slot) = (app.clone(), live.clone());
                let session = thread::Builder::new().name(format!("exec-{id}"));
                let spawned = session.spawn(move || {
                    if let Err(e) = serve(ring_ref, port, &app) {
                        say!("exec session {id}: {e}");
                    }
                    slot.fetch_sub(1, Ordering::SeqCst);
                });
                if let Err(e) = spawned {
                    // No thread: dom0 times out on this session; the init lives on.
                    say!("cannot start an exec session: {e}");
                    live.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    });
    if let Err(e) = started {
        say!("cannot start the exec listener: {e}");
    }
}

/// One session, from connect to the process's exit code.
fn serve(ring_ref: u32, port: u32, app: &AppDefaults) -> Result<(), String> {
    let vchan = Vchan::connect(0, ring_ref, port).map_err(|e| e.to_string())?;
    let mut s = Session {
        vchan,
        inbuf: Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD),
        outbuf: Vec::new(),
        dom0_gone: false,
    };
    s.queue(&Frame::Hello {
        version: CONTROL_VERSION,
    });
    let req = s.request()?;
    s.run(req, app)
}

/// A session process's stdio: what the process gets, and the ends the session keeps.
struct Io {
    /// What the process's stdin, stdout and stderr become.
    child: Stdio,
    /// The process's ends, closed here once it started.
    child_ends: Vec<OwnedFd>,
    /// The session's ends: stdin's writer, then stdout's and stderr's readers (a pty's
    /// master serves as both stdin and the one output). Empty when detached.
    ours: Vec<OwnedFd>,
}

impl Io {
    /// Three pipes: stdout and stderr stay apart.
    fn pipes() -> Result<Self, String> {
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        Ok(Self {
            child: Stdio::Fds {
                stdin: stdin_r.as_raw_fd(),
                stdout: stdout_w.as_raw_fd(),
                stderr: stderr_w.as_raw_fd(),
            },
            child_ends: vec![stdin_r, stdout_w, stderr_w],
            ours: vec![stdin_w, stdout_r, stderr_r],
        })
    }

    /// A pseudo-terminal of `rows` x `cols` (0: the kernel's default); the process gets
    /// the slave as its controlling terminal, so the tty's line discipline turns dom0's
    /// ^C into SIGINT for the foreground job.
    fn pty(rows: u16, cols: u16) -> Result<Self, String> {
        let (master, slave) = open_pty(rows, cols)?;
        let dup = || {
            master
                .try_clone()
                .map_err(|e| format!("a terminal for exec: dup: {e}"))
        };
        let (input, output) = (dup()?, dup()?);
        Ok(Self {
            child: Stdio::Pty {
                slave: slave.as_raw_fd(),
            },
            child_ends: vec![slave],
            ours: vec![input, output],
        })
    }

    /// `/dev/null` for all three (`exec -d`).
    fn detached() -> Result<Self, String> {
        let null: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?
            .into();
        let fd = null.as_raw_fd();
        Ok(Self {
            child: Stdio::Fds {
                stdin: fd,
                stdout: fd,
                stderr: fd,
            },
            child_ends: vec![null],
            ours: Vec::new(),
        })
    }
}

/// Sets a pty's window size (the kernel sends SIGWINCH to its foreground job).
fn set_window_size(master: &impl AsRawFd, rows: u16, cols: u16) {
    if rows == 0 || cols == 0 {
        return;
    }
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call; the
    // fd is an open pty master.
    let _ = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &size) };
}

/// dom0's stdin on its way to a process: what dom0 sent that the process has not read
/// yet (at most [`STDIN_WINDOW`]: dom0 sends no more than the window we returned), and
/// how much the process took since we last said so.
struct StdinPump {
    writer: Option<std::fs::File>,
    pending: Vec<u8>,
    closing: bool,
    /// Bytes the process took, not yet returned to dom0 as window.
    owed: usize,
}

impl StdinPump {
    fn new(writer: Option<std::fs::File>) -> Self {
        Self {
            writer,
            pending: Vec::new(),
            closing: false,
            owed: 0,
        }
    }

    /// One Stdin frame. Once the process closed its stdin the bytes are dropped and no
    /// window comes back for them, so dom0 stops reading its own stdin.
    fn data(&mut self, d: Vec<u8>) -> Result<(), String> {
        if self.pending.len() + d.len() > STDIN_WINDOW {
            return Err("dom0 sent more stdin than its window".into());
        }
        if self.writer.is_some() {
            self.pending.extend_from_slice(&d);
        }
        Ok(())
    }

    /// CloseStdin: the process reads EOF once it read what is pending.
    fn close(&mut self) {
        self.closing = true;
    }

    /// Writes what the process takes without blocking.
    fn push(&mut self) {
        let Some(w) = self.writer.as_mut() else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match w.write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.owed += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // It closed its stdin or ended: nothing more can go in.
                Err(_) => {
                    self.writer = None;
                    self.pending.clear();
                    return;
                }
            }
        }
        if self.closing && self.pending.is_empty() {
            self.writer = None;
        }
    }

    /// Window to return to dom0: in chunks, or all of it once the process caught up.
    fn credit(&mut self) -> Option<Frame> {
        let due = self.owed >= MAX_PAYLOAD / 2 || (self.owed > 0 && self.pending.is_empty());
        due.then(|| Frame::StdinWindow(std::mem::take(&mut self.owed) as u32))
    }

    /// The writer to wait on, while bytes wait for it.
    fn poll_fd(&self) -> Option<PollFd<'_>> {
        self.writer
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|w| PollFd::new(w.as_fd(), PollFlags::POLLOUT))
    }
}

/// A tty attach session while it lives: the init waits for it before powering off, and
/// its end stops the copier's writes to it.
struct Attached(u64);

impl Attached {
    fn new(generation: u64) -> Self {
        TTY_ATTACHED.fetch_add(1, Ordering::SeqCst);
        Attached(generation)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut viewer = TTY_VIEWER.lock().unwrap_or_else(|e| e.into_inner());
        if viewer.as_ref().is_some_and(|(g, _)| *g == self.0) {
            viewer.take();
        }
        TTY_ATTACHED.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Session {
    vchan: Vchan,
    /// Bytes read from dom0, not yet decoded.
    inbuf: Vec<u8>,
    /// Frames for dom0, not yet written into the ring.
    outbuf: Vec<u8>,
    dom0_gone: bool,
}

impl Session {
    fn queue(&mut self, f: &Frame) {
        // Frames built here are valid and bounded; an error would be a bug.
        if let Err(e) = f.encode(&mut self.outbuf) {
            say!("exec session: cannot encode a frame: {e}");
        }
    }

    /// Moves bytes both ways as far as the ring allows; errors end the session. Says
    /// whether the incoming ring was read empty (only then was dom0 asked for an event
    /// when more comes: with a full buffer, the caller must come back without waiting).
    fn pump_vchan(&mut self) -> Result<bool, String> {
        while !self.outbuf.is_empty() {
            let n = self.vchan.write(&self.outbuf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            self.outbuf.drain(..n);
        }
        let cap = HEADER_LEN + MAX_PAYLOAD;
        let mut drained = false;
        while self.inbuf.len() < cap {
            let mut buf = vec![0u8; cap - self.inbuf.len()];
            let n = self.vchan.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                drained = true;
                break;
            }
            self.inbuf.extend_from_slice(&buf[..n]);
        }
        if !self.vchan.server_live() {
            self.dom0_gone = true;
        }
        Ok(drained)
    }

    /// The next complete frame from dom0, if one is buffered.
    fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        match control::decode(&self.inbuf).map_err(|e| e.to_string())? {
            Some((f, n)) => {
                self.inbuf.drain(..n);
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    /// Waits for the vchan's event, one of `extra`, or `timeout`; takes the vchan's
    /// event if there was one. Callers then try every fd without blocking.
    fn wait(&mut self, extra: &[PollFd<'_>], timeout: Duration) -> Result<(), String> {
        let ms = PollTimeout::from(timeout.as_millis().min(10_000) as u16);
        let fired = {
            let mut fds = vec![PollFd::new(self.vchan.as_fd(), PollFlags::POLLIN)];
            fds.extend_from_slice(extra);
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
        };
        if fired {
            self.vchan.ack_event().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// dom0's Hello and Exec.
    fn request(&mut self) -> Result<ExecRequest, String> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut hello = false;
        loop {
            let _ = self.pump_vchan()?;
            while let Some(f) = self.next_frame()? {
                match f {
                    Frame::Hello { version } if version == CONTROL_VERSION => hello = true,
                    Frame::Hello { version } => {
                        return Err(format!(
                            "dom0 speaks control protocol {version}, this init {CONTROL_VERSION}"
                        ))
                    }
                    Frame::Exec(req) if hello => return Ok(req),
                    other => {
                        return Err(format!(
                            "unexpected frame {} before the request",
                            other.kind()
                        ))
                    }
                }
            }
            if self.dom0_gone || Instant::now() > deadline {
                return Err("dom0 sent no request".into());
            }
            self.wait(&[], Duration::from_millis(500))?;
        }
    }

    /// Starts the process and serves its stdio until it exited and dom0 has its code.
    fn run(&mut self, req: ExecRequest, app: &AppDefaults) -> Result<(), String> {
        if req.attach {
            return self.attach(&req);
        }
        if let Some(Builtin::Signal { signal }) = req.builtin {
            // Done by the init itself: it alone knows the app's pid.
            return match crate::supervise::signal_app(signal) {
                Ok(()) => {
                    self.queue(&Frame::Exit(0));
                    self.flush()
                }
                Err(e) => self.fail(1, &e),
            };
        }
        let req = match req.builtin.as_ref().and_then(crate::builtin::as_exec) {
            Some(builtin) => builtin,
            None => req,
        };
        let who = req.user.clone().unwrap_or_else(|| app.user.clone());
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let user = match user::resolve(&who, &read("/etc/passwd"), &read("/etc/group")) {
            Ok(u) => u,
            Err(e) => return self.fail(exit::NOT_EXECUTABLE, &format!("user {who}: {e}")),
        };
        let workdir = req.workdir.clone().unwrap_or_else(|| app.workdir.clone());
        let prepared = exec::prepare_exec(&req, &app.env, user, &workdir, &app.rlimits);
        let io = if req.detach {
            Io::detached()
        } else if req.tty {
            Io::pty(req.rows, req.cols)
        } else {
            Io::pipes()
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => return self.fail(exit::NOT_EXECUTABLE, &e),
        };
        let (exit_r, exit_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let pid = {
            // Held until the pid is registered: the reaper takes this lock before it
            // looks a reaped pid up, so a quick exit cannot be missed. Holding it also
            // keeps other sessions from forking while this one's fds are being set up.
            let mut waiters = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
            match exec::launch_with(&prepared, io.child).map_err(|e| e.to_string())? {
                Launch::Running(pid) => {
                    if !req.detach {
                        waiters.insert(pid.as_raw(), exit_w);
                    }
                    pid
                }
                Launch::Failed { code, message, .. } => {
                    drop(waiters);
                    return self.fail(code, &message);
                }
            }
        };
        drop(io.child_ends);
        self.queue(&Frame::Started {
            pid: pid.as_raw() as u32,
        });
        if req.detach {
            // The process is on its own (the reaper reaps it); free the slot now.
            return self.flush();
        }
        for fd in io.ours.iter().chain([&exit_r]) {
            let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        self.serve_process(pid, io.ours, exit_r, req.tty)
    }

    /// `run -i`, `run -t`, `attach`: dom0's Stdin frames go to the app's stdin (its
    /// pipe, or its pty master), Resize sets the pty's size, and a tty app's output
    /// comes back as Stdout. One session at a time holds the input; when dom0 leaves
    /// without closing stdin (a detach), the next attach gets it back. Ends with
    /// Exit(0): for a pipe once it was closed or the app stopped reading, for a tty
    /// once the app's output ended.
    fn attach(&mut self, req: &ExecRequest) -> Result<(), String> {
        let taken = APP_INPUT.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (fd, tty) = match taken {
            Some(AppInput::Pipe(fd)) => (fd, false),
            Some(AppInput::Tty(fd)) if TTY_ENDED.load(Ordering::SeqCst) => {
                drop(fd);
                return self.fail(exit::NOT_EXECUTABLE, "the app's terminal is closed");
            }
            Some(AppInput::Tty(fd)) => (fd, true),
            None => {
                return self.fail(
                    exit::NOT_EXECUTABLE,
                    "the app has no open stdin or terminal (run without -i or -t), or another session is attached",
                )
            }
        };
        let result = self.serve_attach(req, &fd, tty);
        let put_back = match &result {
            Ok(keep) => *keep,
            Err(_) => tty,
        };
        if put_back {
            let back = if tty {
                AppInput::Tty(fd)
            } else {
                AppInput::Pipe(fd)
            };
            *APP_INPUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(back);
        }
        result.map(drop)
    }

    /// [`Self::attach`]'s loop; says whether the input is still usable by another.
    fn serve_attach(&mut self, req: &ExecRequest, fd: &OwnedFd, tty: bool) -> Result<bool, String> {
        self.queue(&Frame::Started { pid: 0 });
        let writer = fd.try_clone().map_err(|e| format!("dup: {e}"))?;
        let _ = fcntl(writer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        let mut stdin = StdinPump::new(Some(std::fs::File::from(writer)));
        let mut output = None;
        let _attached = if tty {
            set_window_size(fd, req.rows, req.cols);
            let (r, w) =
                pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| format!("pipe: {e}"))?;
            // The copier's writes block; only our read end is non-blocking.
            let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()));
            let generation = TTY_GENERATION.fetch_add(1, Ordering::SeqCst) as u64;
            let backlog = {
                let mut viewer = TTY_VIEWER.lock().unwrap_or_else(|e| e.into_inner());
                *viewer = Some((generation, std::fs::File::from(w)));
                TTY_BACKLOG.lock().unwrap_or_else(|e| e.into_inner()).take()
            };
            // What the app wrote before anyone attached comes first.
            for chunk in backlog.unwrap_or_default().chunks(MAX_PAYLOAD) {
                self.queue(&Frame::Stdout(chunk.to_vec()));
            }
            output = Some(std::fs::File::from(r));
            Some(Attached::new(generation))
        } else {
            None
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let drained = self.pump_vchan()?;
            while let Some(f) = self.next_frame()? {
                match f {
                    Frame::Stdin(d) => stdin.data(d)?,
                    Frame::CloseStdin => stdin.close(),
                    Frame::Resize { rows, cols } if tty => set_window_size(fd, rows, cols),
                    Frame::Signal(_) | Frame::Resize { .. } => {}
                    other => return Err(format!("unexpected frame {} in a session", other.kind())),
                }
            }
            stdin.push();
            if let Some(f) = stdin.credit() {
                self.queue(&f);
            }
            let mut output_ended = false;
            while let Some(r) = output
                .as_mut()
                .filter(|_| self.outbuf.len() < 2 * MAX_PAYLOAD)
            {
                match r.read(&mut buf) {
                    Ok(0) => {
                        output_ended = true;
                        output = None;
                    }
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        self.queue(&Frame::Stdout(data));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        output_ended = true;
                        output = None;
                    }
                }
            }
            if self.dom0_gone {
                // A detach (or dom0 went away): the input stays for the next session
                // unless it was closed or broken.
                return Ok(tty || (stdin.writer.is_some() && !stdin.closing));
            }
            let input_done = !tty && stdin.writer.is_none();
            if input_done || output_ended {
                self.queue(&Frame::Exit(0));
                self.flush()?;
                return Ok(tty);
            }
            if !drained {
                continue; // more frames wait in the ring: no event will say so
            }
            let mut extra: Vec<_> = stdin.poll_fd().into_iter().collect();
            if let Some(r) = output
                .as_ref()
                .filter(|_| self.outbuf.len() < 2 * MAX_PAYLOAD)
            {
                extra.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
            }
            self.wait(&extra, Duration::from_millis(1000))?;
        }
    }

    fn fail(&mut self, code: i32, message: &str) -> Result<(), String> {
        self.queue(&Frame::Error(message.chars().take(1000).collect()));
        self.queue(&Frame::Exit(code));
        self.flush()
    }

    /// Writes what is queued, waiting for room, until dom0 has it all (or is gone).
    fn flush(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.outbuf.is_empty() && !self.dom0_gone && Instant::now() < deadline {
            let _ = self.pump_vchan()?;
            if !self.outbuf.is_empty() {
                self.wait(&[], Duration::from_millis(500))?;
            }
        }
        Ok(())
    }

    fn serve_process(
        &mut self,
        pid: Pid,
        ours: Vec<OwnedFd>,
        exit_r: OwnedFd,
        tty: bool,
    ) -> Result<(), String> {
        let mut ours = ours.into_iter().map(std::fs::File::from);
        let mut stdin = StdinPump::new(ours.next());
        let mut outs: [Option<std::fs::File>; 2] = [ours.next(), ours.next()];
        let mut exit_r = std::fs::File::from(exit_r);
        let mut code: Option<i32> = None;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let _ = self.pump_vchan()?;
            // Everything dom0 sent is decoded (its stdin is bounded by the window), so a
            // Signal or Resize never waits behind stdin the process does not read.
            while let Some(f) = self.next_frame()? {
                match f {
                    Frame::Stdin(d) => stdin.data(d)?,
                    Frame::CloseStdin => stdin.close(),
                    // Not once it was reaped: its pid may be another process's by now.
                    Frame::Signal(n) if code.is_none() => {
                        if let Ok(sig) = Signal::try_from(n) {
                            let _ = kill(pid, sig);
                        }
                    }
                    Frame::Signal(_) => {}
                    Frame::Resize { rows, cols } => {
                        // The pty's master: stdin's end, or (stdin closed) the output's.
                        let master = stdin.writer.as_ref().or(outs[0].as_ref());
                        if let (true, Some(m)) = (tty, master) {
                            set_window_size(m, rows, cols);
                        }
                    }
                    other => return Err(format!("unexpected frame {} in a session", other.kind())),
                }
            }
            stdin.push();
            if let Some(f) = stdin.credit() {
                self.queue(&f);
            }
            // Its exit code first: output read after it is known is all there is.
            if code.is_none() {
                let mut c = [0u8; 4];
                if exit_r.read_exact(&mut c).is_ok() {
                    code = Some(i32::from_le_bytes(c));
                }
            }
            // The process's output, while dom0 keeps up (bounded backlog).
            for (i, out) in outs.iter_mut().enumerate() {
                while self.outbuf.len() < 2 * MAX_PAYLOAD {
                    let Some(r) = out.as_mut() else { break };
                    match r.read(&mut buf) {
                        Ok(0) => {
                            *out = None;
                        }
                        Ok(n) => {
                            if !self.dom0_gone {
                                let data = buf[..n].to_vec();
                                self.queue(&if i == 0 {
                                    Frame::Stdout(data)
                                } else {
                                    Frame::Stderr(data)
                                });
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => *out = None,
                    }
                }
            }
            if self.dom0_gone {
                // dom0 went away (its exec was interrupted): the process runs on, its
                // output dropped, until it ends.
                self.outbuf.clear();
            }
            // A pty's output has no end of its own while a background job still holds
            // the terminal: once the process exited and the pty is read empty, that is
            // the end (as docker exec -t).
            if tty && code.is_some() && outs[0].is_some() && self.outbuf.len() < 2 * MAX_PAYLOAD {
                outs[0] = None;
            }
            if let (Some(c), [None, None]) = (code, &outs) {
                self.queue(&Frame::Exit(c));
                return self.flush();
            }
            let drained = self.pump_vchan()?;
            if !drained && !self.dom0_gone {
                continue; // more frames wait in the ring: no event will say so
            }
            let room = self.outbuf.len() < 2 * MAX_PAYLOAD;
            let mut extra = Vec::new();
            for f in outs.iter().flatten().filter(|_| room) {
                extra.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            if code.is_none() {
                extra.push(PollFd::new(exit_r.as_fd(), PollFlags::POLLIN));
            }
            extra.extend(stdin.poll_fd());
            self.wait(&extra, Duration::from_millis(1000))?;
        }
    }
}
