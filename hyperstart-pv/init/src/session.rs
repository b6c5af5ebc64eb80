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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hyperxl_contract::control::{
    self, ExecRequest, Frame, CONTROL_VERSION, HEADER_LEN, MAX_PAYLOAD,
};
use hyperxl_contract::{exit, keys, user, Rlimit};
use hyperxl_vchan::Vchan;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use xenstore_wire::{Transport, Xenstore};

use crate::console::say;
use crate::exec::{self, Launch, Stdio};

/// Sessions served at once; more wait for dom0 to end one.
const MAX_SESSIONS: usize = 64;
/// How long a new session may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    thread::spawn(move || {
        if let Err(e) = xs.watch(keys::EXEC_DIR, "exec") {
            say!("cannot watch {}: {e}", keys::EXEC_DIR);
            return;
        }
        let live = Arc::new(AtomicUsize::new(0));
        let mut seen = BTreeSet::new();
        loop {
            match xs.next_watch_event(None) {
                Ok(_) => {}
                Err(e) => {
                    say!("exec watch failed: {e}");
                    return;
                }
            }
            let ids = xs.directory(keys::EXEC_DIR).unwrap_or_default();
            // Forget sessions dom0 removed (their ids may not come back, but the set
            // must not grow without bound).
            seen.retain(|id| ids.contains(id));
            for id in ids {
                if seen.contains(&id) || live.load(Ordering::SeqCst) >= MAX_SESSIONS {
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
                let (app, live) = (app.clone(), live.clone());
                thread::spawn(move || {
                    if let Err(e) = serve(ring_ref, port, &app) {
                        say!("exec session {id}: {e}");
                    }
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    });
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
        if req.tty {
            return self.fail(
                exit::NOT_EXECUTABLE,
                "a tty for exec is not supported by this init yet",
            );
        }
        let who = req.user.clone().unwrap_or_else(|| app.user.clone());
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let user = match user::resolve(&who, &read("/etc/passwd"), &read("/etc/group")) {
            Ok(u) => u,
            Err(e) => return self.fail(exit::NOT_EXECUTABLE, &format!("user {who}: {e}")),
        };
        let workdir = req.workdir.clone().unwrap_or_else(|| app.workdir.clone());
        let prepared = exec::prepare_exec(&req, &app.env, user, &workdir, &app.rlimits);
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let stdio = Stdio::Fds {
            stdin: stdin_r.as_raw_fd(),
            stdout: stdout_w.as_raw_fd(),
            stderr: stderr_w.as_raw_fd(),
        };
        let pid = {
            // Held until the pid is registered: the reaper takes this lock before it
            // looks a reaped pid up, so a quick exit cannot be missed.
            let mut waiters = WAITERS.lock().unwrap_or_else(|e| e.into_inner());
            match exec::launch_with(&prepared, stdio).map_err(|e| e.to_string())? {
                Launch::Running(pid) => {
                    waiters.insert(pid.as_raw(), exit_w);
                    pid
                }
                Launch::Failed { code, message, .. } => {
                    drop(waiters);
                    return self.fail(code, &message);
                }
            }
        };
        drop((stdin_r, stdout_w, stderr_w));
        for fd in [&stdout_r, &stderr_r, &stdin_w, &exit_r] {
            let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        self.queue(&Frame::Started {
            pid: pid.as_raw() as u32,
        });
        self.serve_process(pid, stdin_w, [stdout_r, stderr_r], exit_r)
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
        stdin: OwnedFd,
        outputs: [OwnedFd; 2],
        exit_r: OwnedFd,
    ) -> Result<(), String> {
        let mut stdin = Some(std::fs::File::from(stdin));
        let mut stdin_pending: Vec<u8> = Vec::new();
        let mut close_stdin = false;
        let mut outs: [Option<std::fs::File>; 2] = outputs.map(|f| Some(std::fs::File::from(f)));
        let mut exit_r = std::fs::File::from(exit_r);
        let mut code: Option<i32> = None;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let _ = self.pump_vchan()?;
            // dom0's frames, one stdin chunk at a time (bounded: nothing more is
            // decoded while a chunk waits for the process to read it).
            while stdin_pending.is_empty() {
                let Some(f) = self.next_frame()? else { break };
                match f {
                    Frame::Stdin(d) => stdin_pending = d,
                    Frame::CloseStdin => close_stdin = true,
                    Frame::Signal(n) => {
                        if let Ok(sig) = Signal::try_from(n) {
                            let _ = kill(pid, sig);
                        }
                    }
                    Frame::Resize { .. } => {}
                    other => return Err(format!("unexpected frame {} in a session", other.kind())),
                }
            }
            if let Some(w) = stdin.as_mut() {
                if !stdin_pending.is_empty() {
                    match w.write(&stdin_pending) {
                        Ok(n) => {
                            stdin_pending.drain(..n);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => {
                            stdin_pending.clear();
                            stdin = None;
                        }
                    }
                }
                if close_stdin && stdin_pending.is_empty() {
                    stdin = None;
                }
            } else {
                stdin_pending.clear();
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
                // `exec -d`, or dom0 went away: the process runs on, its output dropped.
                self.outbuf.clear();
            }
            if code.is_none() {
                let mut c = [0u8; 4];
                if exit_r.read_exact(&mut c).is_ok() {
                    code = Some(i32::from_le_bytes(c));
                }
            }
            if let (Some(c), [None, None]) = (code, &outs) {
                self.queue(&Frame::Exit(c));
                return self.flush();
            }
            let drained = self.pump_vchan()?;
            if !drained && stdin_pending.is_empty() && !self.dom0_gone {
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
            if let Some(w) = stdin.as_ref().filter(|_| !stdin_pending.is_empty()) {
                extra.push(PollFd::new(w.as_fd(), PollFlags::POLLOUT));
            }
            self.wait(&extra, Duration::from_millis(1000))?;
        }
    }
}
