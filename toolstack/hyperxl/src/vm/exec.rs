//! `hyperxl exec`: a process in a running VM, over a vchan of its own (the control
//! channel, [`hyperxl_contract::control`]).
//!
//! dom0 serves the vchan (libxenvchan grants dom0's pages; the guest maps them), so the
//! guest can neither make dom0 map its memory nor open a session dom0 did not create.
//! Everything the guest writes is untrusted: the ring indices are checked before every
//! read ([`VchanServer::check`]), frames are decoded from a buffer of at most one
//! header and one payload, and a session whose guest stops answering ends with an error.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyperxl_contract::control::{
    self, ExecRequest, Frame, CONTROL_VERSION, HEADER_LEN, MAX_PAYLOAD,
};
use hyperxl_contract::keys;
use libxl::{ClientState, VchanServer};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::host::{reconcile_all, Host};
use super::state::VmStore;

/// Ring size each way.
const RING_BYTES: usize = 64 * 1024;
/// How long `exec` waits for a booting VM's app to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest may take to pick a session up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// What `hyperxl exec` asks for.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The process.
    pub request: ExecRequest,
    /// Pass our stdin to it (`-i`); otherwise it reads EOF at once.
    pub interactive: bool,
    /// Start it and return (`-d`): its output is dropped.
    pub detach: bool,
}

/// Runs `opts` in VM `which`; returns the process's exit code.
pub fn exec(state_dir: &std::path::Path, which: &str, opts: &ExecOptions) -> anyhow::Result<i32> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    let mut vm = vms.find(which)?;
    // A VM just started with `run -d` may still be booting: its init listens for
    // sessions once the app runs, so wait for that (as long as a boot may take).
    let deadline = Instant::now() + START_TIMEOUT;
    while vm.status.can_stop() && vm.started_at.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        vm = vms.load(&vm.id)?;
    }
    let domid = match (vm.status.can_stop(), vm.domid) {
        (true, Some(d)) if vm.started_at.is_some() => d,
        (true, Some(_)) => bail!("VM {} has not started its app yet", vm.name),
        _ => bail!("VM {} is not running", vm.name),
    };
    let ctx = libxl::Context::new().context("connecting to libxl")?;
    let id = &super::state::new_id()[..12];
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
    s.session(&ctx, domid, &vm.name, opts)
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

    /// Waits for the event channel (or `extra`, or the timeout); takes the event.
    fn wait(&mut self, extra: Option<BorrowedFd<'_>>, timeout: Duration) -> anyhow::Result<bool> {
        // SAFETY: the fd is the vchan's event channel, open while self.server lives.
        let vfd = unsafe { BorrowedFd::borrow_raw(self.server.fd()) };
        let mut fds = vec![PollFd::new(vfd, PollFlags::POLLIN)];
        if let Some(fd) = extra {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let ms = PollTimeout::from(timeout.as_millis().min(10_000) as u16);
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("poll: {e}"),
        }
        let fired = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let extra_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if fired {
            self.server.ack()?;
        }
        Ok(extra_ready)
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
            self.wait(None, Duration::from_millis(500))?;
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
    ) -> anyhow::Result<i32> {
        let stdin = std::io::stdin();
        let mut stdin_open = opts.interactive;
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr();
        let mut error: Option<String> = None;
        let mut hello = false;
        let mut last_check = Instant::now();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
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
                    Frame::Started { .. } if opts.detach => return Ok(0),
                    Frame::Started { .. } => {}
                    Frame::Stdout(d) => {
                        out.write_all(&d)?;
                        out.flush()?;
                    }
                    Frame::Stderr(d) => err.write_all(&d)?,
                    Frame::Error(m) => error = Some(super::host::terminal_safe(&m)),
                    Frame::Exit(code) => {
                        if let Some(m) = error {
                            eprintln!("hyperxl: {m}");
                        }
                        return Ok(code);
                    }
                    other => bail!("VM {name} sent an unexpected frame (kind {})", other.kind()),
                }
            }
            // Our stdin, while the VM keeps up.
            if stdin_open && self.outbuf.len() < 2 * MAX_PAYLOAD {
                let ready = self.wait(Some(stdin.as_fd()), Duration::ZERO)?;
                if ready {
                    let n = stdin.lock().read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        stdin_open = false;
                        self.queue(&Frame::CloseStdin)?;
                    } else {
                        self.queue(&Frame::Stdin(buf[..n].to_vec()))?;
                    }
                    continue;
                }
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
            if last_check.elapsed() > Duration::from_secs(1) {
                last_check = Instant::now();
                if !matches!(ctx.domain_info(libxl::DomId(domid)), Ok(Some(_))) {
                    bail!("VM {name} stopped during the exec");
                }
            }
            if !drained && decoded {
                continue; // more is waiting in the ring: no event will say so
            }
            let extra = (stdin_open && self.outbuf.len() < 2 * MAX_PAYLOAD).then(|| stdin.as_fd());
            self.wait(extra, Duration::from_millis(1000))?;
        }
    }
}
