//! `hyperxl exec`: a process in a running VM, over a vchan of its own (the control
//! channel, [`hyperxl_contract::control`]).
//!
//! dom0 serves the vchan (libxenvchan grants dom0's pages; the guest maps them), so the
//! guest can neither make dom0 map its memory nor open a session dom0 did not create.
//! Everything the guest writes is untrusted: the ring indices are checked before every
//! read ([`VchanServer::check`]), frames are decoded from a buffer of at most one
//! header and one payload, and a session whose guest stops answering ends with an error.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyperxl_contract::control::{
    self, Builtin, ExecRequest, Frame, CONTROL_VERSION, HEADER_LEN, MAX_PAYLOAD, STDIN_WINDOW,
};
use hyperxl_contract::keys;
use libxl::{ClientState, DomainOps, VchanServer};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use xenstore_wire::Xenstore;

use super::host::{reconcile_all, Host};
use super::state::VmStore;

/// Ring size each way.
const RING_BYTES: usize = 64 * 1024;
/// How long `exec` waits for a booting VM's app to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest may take to pick a session up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an idle session asks libxl whether its domain still lives (and checks the
/// rings): a destroyed guest sends no event, nor does a guest that corrupted its ring
/// and went quiet. Everything else wakes the session at once (the guest's event, our
/// stdin, a control request, a signal).
const LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// What `hyperxl exec` asks for.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The process (with `tty` and `detach` as the user asked).
    pub request: ExecRequest,
    /// Pass our stdin to it (`-i`); otherwise it reads EOF at once.
    pub interactive: bool,
    /// Ctrl-P Ctrl-Q in our stdin ends the session and leaves the process running
    /// (`attach`, as Docker's detach keys).
    pub detach_keys: bool,
}

/// Docker's default detach sequence, Ctrl-P Ctrl-Q, found in a stream of keys.
#[derive(Debug, Default)]
pub struct DetachKeys {
    /// A Ctrl-P held back, in case a Ctrl-Q follows.
    held: bool,
}

impl DetachKeys {
    const CTRL_P: u8 = 0x10;
    const CTRL_Q: u8 = 0x11;

    /// The keys to pass on from `input`, and whether the sequence was typed (keys after
    /// it are dropped). A Ctrl-P followed by anything else is passed on with it.
    pub fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.held {
                self.held = false;
                if b == Self::CTRL_Q {
                    return (out, true);
                }
                out.push(Self::CTRL_P);
            }
            if b == Self::CTRL_P {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// Where a session's streams go; `None`: this process's own.
#[derive(Default)]
pub struct Streams {
    /// What is sent as the process's stdin (with `interactive`).
    pub stdin: Option<std::fs::File>,
    /// Where the process's stdout goes.
    pub stdout: Option<Box<dyn Write + Send>>,
    /// Where the process's stderr goes.
    pub stderr: Option<Box<dyn Write + Send>>,
    /// Requests from the caller while the session runs (the shim's `ResizePty` and
    /// `Kill`), taken at once (see [`control_channel`]); `None`: this process's own
    /// SIGWINCH and stop signals stand for them.
    pub control: Option<ControlReceiver>,
    /// Where the guest's one-line error about the session goes (`None`: our stderr,
    /// as `hyperxl: MESSAGE`).
    pub errors: Option<Capture>,
}

/// Makes a session's control channel: what is sent wakes the session's loop, which
/// otherwise sleeps on the guest's event channel and its stdin (no polling).
pub fn control_channel() -> std::io::Result<(ControlSender, ControlReceiver)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = std::sync::mpsc::channel();
    Ok((
        ControlSender { tx, wake: a },
        ControlReceiver { rx, wake: b },
    ))
}

/// The caller's end of a session's control channel.
#[derive(Debug)]
pub struct ControlSender {
    tx: std::sync::mpsc::Sender<Control>,
    wake: UnixStream,
}

impl ControlSender {
    /// Hands `what` to the session; false once the session has ended.
    pub fn send(&self, what: Control) -> bool {
        if self.tx.send(what).is_err() {
            return false;
        }
        // A full socket means a wake-up is pending already.
        let _ = (&self.wake).write(&[1]);
        true
    }
}

/// The session's end of its control channel.
#[derive(Debug)]
pub struct ControlReceiver {
    rx: std::sync::mpsc::Receiver<Control>,
    wake: UnixStream,
}

impl ControlReceiver {
    /// What was sent since the last call (and the wake-ups taken).
    pub fn take(&self) -> Vec<Control> {
        let mut sink = [0u8; 64];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }
}

/// What a caller with its own [`Streams::control`] asks of a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The process's terminal is now this size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send the process this signal.
    Signal(i32),
}

/// What a session's process writes, kept in memory up to a limit (the rest is dropped):
/// a builtin's table or error line, shown after it ended.
#[derive(Clone)]
pub struct Capture {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    limit: usize,
}

impl Capture {
    /// Keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Default::default(),
            limit,
        }
    }

    /// What was kept, line by line: the guest's text, to be made safe before printing.
    pub fn lines(&self) -> Vec<String> {
        let v = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&v)
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    /// The first line, trimmed and safe to print (an error message).
    pub fn line(&self) -> String {
        let first = self.lines().into_iter().next().unwrap_or_default();
        super::host::terminal_safe(first.trim())
    }
}

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut v = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.limit.saturating_sub(v.len());
        v.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The last stop signal (SIGINT, SIGTERM, SIGHUP) that reached `hyperxl exec`, not yet
/// handled; 0 if none.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
/// Set by SIGWINCH: the terminal changed size.
static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGWINCH {
        RESIZED.store(true, Ordering::SeqCst);
    } else {
        SIGNALLED.store(sig, Ordering::SeqCst);
    }
}

/// Catches SIGWINCH alone (`run -t`, `attach`: the stop signals stay with the caller).
pub fn install_winch_handler() {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to atomics, which is async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGWINCH, &act) };
}

/// Catches the stop signals (forwarded to the process, as `docker run`'s sig-proxy) and
/// SIGWINCH, without SA_RESTART so that poll(2) returns at once.
fn install_signal_handlers() {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
    ] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &act) };
    }
}

/// The local terminal's size (rows, columns), from stdout, stdin or stderr.
pub fn window_size() -> Option<(u16, u16)> {
    [1, 0, 2].into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through the pointer, valid for the call;
        // on a descriptor that is not a terminal it fails and writes nothing.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
        (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    })
}

/// Our stdin in raw mode (keys, ^C included, go to the VM's terminal as they are typed),
/// restored when dropped.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Puts our terminal in raw mode.
    pub fn enter() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("setting the terminal raw")?;
        Ok(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Our terminal's settings as they are now, put back when dropped whatever changed them
/// meanwhile (a thread's raw mode that may outlive its owner's wait).
pub struct TerminalSettings {
    saved: Termios,
}

impl TerminalSettings {
    /// Saves the settings, if stdin is a terminal.
    pub fn save() -> Option<Self> {
        tcgetattr(std::io::stdin()).ok().map(|saved| Self { saved })
    }
}

impl Drop for TerminalSettings {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Removes sessions left in VM `domid`'s xenstore by `hyperxl exec` processes that are
/// gone (killed before they could clean up): a session's id starts with its pid.
fn sweep_stale_sessions(domid: u32) {
    let Ok(mut xs) = Xenstore::open_default() else {
        return;
    };
    let base = format!("{}/{}", keys::domain_path(domid), keys::EXEC_DIR);
    for id in xs.directory(&base).unwrap_or_default() {
        let pid = id.split('-').next().and_then(|p| p.parse::<i32>().ok());
        let gone = pid.is_some_and(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                == Err(nix::errno::Errno::ESRCH)
        });
        if gone {
            let _ = xs.rm(&format!("{base}/{id}"));
        }
    }
}

/// Runs `opts` in VM `which`; returns the process's exit code.
pub fn exec(state_dir: &std::path::Path, which: &str, opts: &ExecOptions) -> anyhow::Result<i32> {
    exec_with(state_dir, which, opts, Streams::default())
}

/// Runs `opts` in VM `which` with `streams` (`hyperxl cp`); returns the exit code. Stop
/// signals end it as they end exec.
pub fn exec_with(
    state_dir: &std::path::Path,
    which: &str,
    opts: &ExecOptions,
    streams: Streams,
) -> anyhow::Result<i32> {
    let vms = VmStore::open(state_dir)?;
    reconcile_all(&vms, &Host::connect())?;
    install_signal_handlers();
    exec_on(&vms, which, opts, streams)
}

/// Runs `opts` in VM `which` for a caller that owns this process's signals (the
/// containerd shim): no handler is installed, nothing touches this process's terminal,
/// and resizes and signals come through `streams.control`. Returns the exit code.
pub fn exec_in(
    state_dir: &std::path::Path,
    which: &str,
    opts: &ExecOptions,
    streams: Streams,
) -> anyhow::Result<i32> {
    exec_on(&VmStore::open(state_dir)?, which, opts, streams)
}

/// The session of [`exec_with`] and [`exec_in`], once the caller set up what it owns.
fn exec_on(
    vms: &VmStore,
    which: &str,
    opts: &ExecOptions,
    streams: Streams,
) -> anyhow::Result<i32> {
    let vm = vms.find(which)?;
    run_session(vms, vm, opts, streams).map(|end| end.unwrap_or(0))
}

/// Sends `signal` to the app of a running VM (`kill -s`, a containerd task's `Kill`):
/// the guest's init delivers it, as `docker kill -s` does to a container's first
/// process. SIGKILL is not sent this way: destroying the domain is (`control::kill`).
pub fn signal_app(
    vms: &VmStore,
    host: &Host,
    vm: super::state::VmState,
    signal: i32,
) -> anyhow::Result<()> {
    let name = vm.name.clone();
    // A paused guest cannot answer (the session would wait for it).
    let paused = vm
        .domid
        .and_then(|d| host.info(d, &vm.domain_name()))
        .is_some_and(|info| info.paused);
    if paused {
        bail!("VM {name} is paused: unpause it first");
    }
    let opts = ExecOptions {
        request: ExecRequest::builtin(Builtin::Signal { signal }),
        interactive: false,
        detach_keys: false,
    };
    let errors = Capture::new(4096);
    let streams = Streams {
        stdout: Some(Box::new(std::io::sink())),
        stderr: Some(Box::new(std::io::sink())),
        errors: Some(errors.clone()),
        ..Streams::default()
    };
    match run_session(vms, vm, &opts, streams)? {
        Some(0) | None => Ok(()),
        Some(_) => bail!("signalling the app of VM {name}: {}", errors.line()),
    }
}

/// The app of VM `id`, attached for a caller that owns this process's signals and has
/// no terminal of its own (the containerd shim's task stdio): `streams` carry its
/// stdin (with `interactive`) and, for a tty app, its terminal's output; its size
/// comes through `streams.control`. Returns the app's exit code once the session ends.
pub fn attach_app_in(
    state_dir: &std::path::Path,
    id: &str,
    tty: bool,
    interactive: bool,
    streams: Streams,
) -> anyhow::Result<i32> {
    let vms = VmStore::open(state_dir)?;
    let vm = vms.load(id)?;
    let opts = ExecOptions {
        request: ExecRequest::attach_app(tty, 0, 0),
        interactive,
        detach_keys: false,
    };
    run_session(&vms, vm, &opts, streams).map(|end| end.unwrap_or(0))
}

/// `run -i`/`-t`, `attach`: connects our stdin (with `interactive`) and, for a tty app,
/// its terminal's output and size to the app of VM `id`, over an attach session once the
/// app runs. Returns None when the user detached (with `detach_keys`), else once the
/// session ended (the app closed its input or its terminal). The caller keeps the stop
/// signals and sets our terminal raw.
pub fn attach_app(
    state_dir: &std::path::Path,
    id: &str,
    tty: bool,
    interactive: bool,
    detach_keys: bool,
) -> anyhow::Result<Option<i32>> {
    let vms = VmStore::open(state_dir)?;
    let vm = vms.load(id)?;
    let (rows, cols) = window_size().filter(|_| tty).unwrap_or((0, 0));
    if tty {
        install_winch_handler();
    }
    let request = ExecRequest::attach_app(tty, rows, cols);
    let opts = ExecOptions {
        request,
        interactive,
        detach_keys,
    };
    run_session(&vms, vm, &opts, Streams::default())
}

/// One session with `vm`'s init, once its app runs; returns the exit code it reports.
fn run_session(
    vms: &VmStore,
    mut vm: super::state::VmState,
    opts: &ExecOptions,
    streams: Streams,
) -> anyhow::Result<Option<i32>> {
    // A VM just started with `run -d` may still be booting: its init listens for
    // sessions once the app runs, so wait for that (as long as a boot may take).
    let deadline = Instant::now() + START_TIMEOUT;
    while vm.status.can_stop() && vm.started_at.is_none() && Instant::now() < deadline {
        interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
        vm = vms.load(&vm.id)?;
    }
    let domid = match (vm.status.can_stop(), vm.domid) {
        (true, Some(d)) if vm.started_at.is_some() => d,
        (true, Some(_)) => bail!("VM {} has not started its app yet", vm.name),
        _ => bail!("VM {} is not running", vm.name),
    };
    let ctx = libxl::Context::new().context("connecting to libxl")?;
    sweep_stale_sessions(domid);
    let id = format!("{}-{}", std::process::id(), &super::state::new_id()[..8]);
    let path = format!("{}/{}/{id}", keys::domain_path(domid), keys::EXEC_DIR);
    let server = VchanServer::new(domid, &path, RING_BYTES, RING_BYTES)
        .with_context(|| format!("setting up the control channel to VM {}", vm.name))?;
    let mut s = Client {
        server,
        inbuf: Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD),
        outbuf: Vec::new(),
    };
    s.connect(&ctx, domid, &vm.name)?;
    s.queue(&Frame::Hello {
        version: CONTROL_VERSION,
    })?;
    s.queue(&Frame::Exec(opts.request.clone()))?;
    if !opts.interactive {
        s.queue(&Frame::CloseStdin)?;
    }
    s.session(&ctx, domid, &vm.name, opts, streams)
}

struct Client {
    server: VchanServer,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

impl Client {
    fn queue(&mut self, f: &Frame) -> anyhow::Result<()> {
        f.encode(&mut self.outbuf)?;
        Ok(())
    }

    /// Waits for the event channel (or one of `extra`, or the timeout); takes the event.
    fn wait(&mut self, extra: &[BorrowedFd<'_>], timeout: Duration) -> anyhow::Result<()> {
        // SAFETY: the fd is the vchan's event channel, open while self.server lives.
        let vfd = unsafe { BorrowedFd::borrow_raw(self.server.fd()) };
        let mut fds = vec![PollFd::new(vfd, PollFlags::POLLIN)];
        fds.extend(extra.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        let ms = PollTimeout::from(timeout.as_millis().min(10_000) as u16);
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("poll: {e}"),
        }
        let fired = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        if fired {
            self.server.ack()?;
        }
        Ok(())
    }

    fn connect(&mut self, ctx: &libxl::Context, domid: u32, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.server.client() {
                ClientState::Connected => return Ok(()),
                ClientState::Gone => bail!("VM {name} closed the control channel at once"),
                ClientState::Waiting => {}
            }
            if Instant::now() > deadline {
                bail!("VM {name} did not answer the exec request within {}s (is its init older than the control channel?)", CONNECT_TIMEOUT.as_secs());
            }
            if !matches!(ctx.domain_info(libxl::DomId(domid)), Ok(Some(_))) {
                bail!("VM {name} stopped");
            }
            interrupted()?;
            self.wait(&[], Duration::from_millis(500))?;
        }
    }

    /// Moves bytes both ways; checks the rings first (a hostile guest may have written
    /// anything there).
    fn pump(&mut self) -> anyhow::Result<bool> {
        if let Err(why) = self.server.check() {
            bail!("{why}");
        }
        // Once the guest's end is gone libxenvchan fails reads and writes: what it left
        // in the ring is still read first, then that is the end of its stream.
        let gone = |s: &Self| s.server.client() == ClientState::Gone;
        while !self.outbuf.is_empty() {
            let n = match self.server.write(&self.outbuf) {
                Ok(n) => n,
                Err(_) if gone(self) => {
                    self.outbuf.clear();
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            self.outbuf.drain(..n);
        }
        // Reads until the ring is empty (libxenvchan then asks the guest for an event)
        // or our buffer is full (then say so: the caller must not sleep on an event
        // nobody was asked to send).
        let cap = HEADER_LEN + MAX_PAYLOAD;
        let mut buf = vec![0u8; cap];
        let mut drained = false;
        while self.inbuf.len() < cap {
            let room = cap - self.inbuf.len();
            let n = match self.server.read(&mut buf[..room]) {
                Ok(n) => n,
                Err(_) if gone(self) => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                drained = true;
                break;
            }
            self.inbuf.extend_from_slice(&buf[..n]);
        }
        Ok(drained)
    }

    fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        match control::decode(&self.inbuf).context("the VM sent a malformed control frame")? {
            Some((f, n)) => {
                self.inbuf.drain(..n);
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    fn session(
        &mut self,
        ctx: &libxl::Context,
        domid: u32,
        name: &str,
        opts: &ExecOptions,
        streams: Streams,
    ) -> anyhow::Result<Option<i32>> {
        let tty = opts.request.tty;
        let detach = opts.request.detach;
        // Our own terminal only: a caller's stdin (the shim's FIFO) is nothing to set raw.
        let own_stdin = streams.stdin.is_none();
        let stdin = match streams.stdin {
            Some(f) => f,
            None => std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .context("stdin")?
                .into(),
        };
        let control = streams.control;
        let mut errors = streams.errors;
        let mut stdin_open = opts.interactive;
        // Stdin bytes the guest still has room for (it returns them as its process reads).
        let mut window = STDIN_WINDOW;
        // Raw only when the keys come from a terminal (the CLI checked that for -it);
        // an attach session's caller does that itself.
        let _raw = (tty && opts.interactive && !opts.request.attach && own_stdin)
            .then(RawTerminal::enter)
            .transpose()?;
        let mut detach_keys = opts.detach_keys.then(DetachKeys::default);
        // Locked per write, not for the session: a stdin-only session (run -i) must
        // not hold up whoever prints the console meanwhile.
        let mut out: Box<dyn Write> = match streams.stdout {
            Some(w) => w,
            None => Box::new(std::io::stdout()),
        };
        let mut err: Box<dyn Write> = match streams.stderr {
            Some(w) => w,
            None => Box::new(std::io::stderr()),
        };
        let mut error: Option<String> = None;
        let mut hello = false;
        let hello_deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut forwarded = false;
        let mut last_check = Instant::now();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let sig = SIGNALLED.swap(0, Ordering::SeqCst);
            if sig != 0 {
                if forwarded {
                    bail!("exec interrupted; the process may still run in VM {name}");
                }
                // The first one goes to the process; a second one stops waiting.
                forwarded = true;
                self.queue(&Frame::Signal(sig))?;
            }
            if control.is_none() && RESIZED.swap(false, Ordering::SeqCst) && tty {
                if let Some((rows, cols)) = window_size() {
                    self.queue(&Frame::Resize { rows, cols })?;
                }
            }
            for c in control.iter().flat_map(|r| r.take()) {
                match c {
                    Control::Resize { rows, cols } if tty => {
                        self.queue(&Frame::Resize { rows, cols })?
                    }
                    Control::Resize { .. } => {}
                    Control::Signal(sig) => self.queue(&Frame::Signal(sig))?,
                }
            }
            let drained = self.pump()?;
            let mut decoded = false;
            while let Some(f) = self.next_frame()? {
                decoded = true;
                match f {
                    Frame::Hello { version } if version == CONTROL_VERSION => hello = true,
                    Frame::Hello { version } => {
                        bail!("VM {name} speaks control protocol {version}, this hyperxl {CONTROL_VERSION}")
                    }
                    _ if !hello => bail!("VM {name} sent a frame before its hello"),
                    Frame::Started { .. } if detach => return Ok(Some(0)),
                    Frame::Started { .. } => {}
                    Frame::Stdout(d) => {
                        if let Err(e) = out.write_all(&d).and_then(|()| out.flush()) {
                            return self.stdout_failed(e);
                        }
                    }
                    Frame::Stderr(d) => {
                        // With a terminal, stderr shares it (and the raw mode).
                        let _ = err.write_all(&d);
                    }
                    Frame::StdinWindow(n) => {
                        window = window.saturating_add(n as usize).min(STDIN_WINDOW);
                    }
                    Frame::Error(m) => error = Some(super::host::terminal_safe(&m)),
                    Frame::Exit(code) => {
                        drop(_raw);
                        match (error, errors.as_mut()) {
                            (Some(m), Some(c)) => {
                                let _ = writeln!(c, "{m}");
                            }
                            (Some(m), None) => eprintln!("hyperxl: {m}"),
                            (None, _) => {}
                        }
                        return Ok(Some(code));
                    }
                    other => bail!("VM {name} sent an unexpected frame (kind {})", other.kind()),
                }
            }
            if !hello && Instant::now() > hello_deadline {
                bail!(
                    "VM {name} connected but did not answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                );
            }
            if self.server.client() == ClientState::Gone {
                // Whatever it left was read above; with no complete frame left, it ended
                // without an exit code.
                let before = self.inbuf.len();
                let _ = self.pump()?;
                if self.inbuf.len() == before && control::decode(&self.inbuf)?.is_none() {
                    bail!("VM {name} ended the session without an exit code");
                }
                continue;
            }
            if last_check.elapsed() >= LIVENESS_CHECK {
                last_check = Instant::now();
                if !matches!(ctx.domain_info(libxl::DomId(domid)), Ok(Some(_))) {
                    bail!("VM {name} stopped during the exec");
                }
            }
            // Our stdin, as far as the guest's window allows (polled alone: the vchan's
            // event is taken only where the ring is read right after).
            let want_stdin = stdin_open && window > 0;
            if want_stdin && readable(stdin.as_fd()) {
                let room = buf.len().min(window);
                match (&stdin).read(&mut buf[..room]) {
                    Ok(0) => {
                        stdin_open = false;
                        self.queue(&Frame::CloseStdin)?;
                    }
                    Ok(n) => {
                        window -= n;
                        let (keys, detached) = match detach_keys.as_mut() {
                            Some(d) => d.filter(&buf[..n]),
                            None => (buf[..n].to_vec(), false),
                        };
                        if !keys.is_empty() {
                            self.queue(&Frame::Stdin(keys))?;
                        }
                        if detached {
                            // What was typed before the keys goes first; then we leave
                            // (the init keeps the app's input for the next attach).
                            let _ = self.pump();
                            return Ok(None);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        stdin_open = false;
                        self.queue(&Frame::CloseStdin)?;
                    }
                }
                continue;
            }
            if !drained && decoded {
                continue; // more is waiting in the ring: no event will say so
            }
            let mut extra: Vec<BorrowedFd<'_>> = Vec::with_capacity(2);
            if want_stdin {
                extra.push(stdin.as_fd());
            }
            if let Some(c) = control.as_ref() {
                extra.push(c.wake.as_fd());
            }
            self.wait(&extra, LIVENESS_CHECK)?;
        }
    }

    /// Our stdout went away (`hyperxl exec VM cmd | head -1`): the process gets SIGPIPE
    /// as it would in a pipeline, and exec ends as a shell reports that (128 + 13).
    fn stdout_failed(&mut self, e: std::io::Error) -> anyhow::Result<Option<i32>> {
        if e.kind() != ErrorKind::BrokenPipe {
            return Err(e).context("writing the process's output");
        }
        self.queue(&Frame::Signal(libc::SIGPIPE))?;
        let _ = self.pump();
        Ok(Some(128 + libc::SIGPIPE))
    }
}

/// Fails if a stop signal came before there was a process to forward it to.
fn interrupted() -> anyhow::Result<()> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => Ok(()),
        sig => bail!("interrupted by signal {sig} before the process started"),
    }
}

/// Whether `fd` can be read without blocking (or is at its end).
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::DetachKeys;

    #[test]
    fn a_control_request_wakes_the_session_at_once() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;

        let (tx, rx) = super::control_channel().unwrap();
        let readable = |rx: &super::ControlReceiver| {
            let mut fds = [PollFd::new(rx.wake.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
        };
        assert!(!readable(&rx), "nothing sent, nothing to wake for");
        assert!(tx.send(super::Control::Signal(15)));
        assert!(tx.send(super::Control::Resize { rows: 2, cols: 3 }));
        assert!(readable(&rx));
        assert_eq!(
            rx.take(),
            [
                super::Control::Signal(15),
                super::Control::Resize { rows: 2, cols: 3 }
            ]
        );
        assert!(!readable(&rx), "the wake-ups are taken with the requests");
        // Many requests never block the sender (its socket fills; one wake suffices).
        for _ in 0..100_000 {
            assert!(tx.send(super::Control::Signal(1)));
        }
        assert_eq!(rx.take().len(), 100_000);
        drop(rx);
        assert!(!tx.send(super::Control::Signal(9)), "the session is gone");
    }

    #[test]
    fn ctrl_p_ctrl_q_detaches_and_anything_else_passes() {
        let mut d = DetachKeys::default();
        assert_eq!(d.filter(b"ls\r"), (b"ls\r".to_vec(), false));
        // Ctrl-P then another key: both go on.
        assert_eq!(d.filter(b"\x10a"), (b"\x10a".to_vec(), false));
        // The sequence split over two reads; keys before it go on, after it are dropped.
        assert_eq!(d.filter(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(d.filter(b"\x11rest"), (Vec::new(), true));
        let mut d = DetachKeys::default();
        assert_eq!(d.filter(b"ab\x10\x11cd"), (b"ab".to_vec(), true));
        // Ctrl-P Ctrl-P Ctrl-Q: the first Ctrl-P goes on, the rest detaches.
        let mut d = DetachKeys::default();
        assert_eq!(d.filter(b"\x10\x10\x11"), (b"\x10".to_vec(), true));
    }
}
