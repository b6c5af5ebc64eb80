//! One process of a task as containerd sees it (the task's app, or an exec'd process):
//! its stdio FIFOs, its status and exit, and what a running session carrying its stdio
//! to the VM is asked (resize, signals, end of input).

use std::fs::{File, OpenOptions};
use std::io::Write;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use hyperxl_core::vm::exec::{control_channel, Control, ControlReceiver, ControlSender, Streams};

/// containerd's names for a process's stdio (FIFOs; empty: none) and whether it runs on
/// a terminal.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    /// The FIFO the client writes the process's input to.
    pub stdin: String,
    /// The FIFO the process's output goes to (its terminal's, with `terminal`).
    pub stdout: String,
    /// The FIFO its stderr goes to (none with a terminal).
    pub stderr: String,
    /// It runs on a terminal in the guest.
    pub terminal: bool,
}

/// The process's status and exit as containerd asks for them, and the handles of its
/// session.
pub struct Process {
    /// Its FIFOs.
    pub stdio: Stdio,
    /// CREATED, RUNNING, PAUSED (a task's) or STOPPED.
    pub status: Status,
    /// Its exit status and time, once it ended.
    pub exit: Option<(u32, Timestamp)>,
    /// The write end of the stdin FIFO, held until containerd's `CloseIO` (as runc's
    /// shim holds one): the process reads EOF once the client closed its input, not
    /// merely because the client has not opened the FIFO yet.
    stdin_keeper: Option<File>,
    /// Requests to its running session.
    control: Option<ControlSender>,
}

/// What a session needs, opened before its thread starts (stdin) or by it (the output
/// FIFOs: an open for writing waits for the reader).
pub struct SessionIo {
    stdin: Option<File>,
    stdout: String,
    stderr: String,
    control: ControlReceiver,
}

impl Process {
    /// A process not started yet.
    pub fn new(stdio: Stdio) -> Self {
        Process {
            stdio,
            status: Status::CREATED,
            exit: None,
            stdin_keeper: None,
            control: None,
        }
    }

    /// Records its end (the first one counts); its session is no longer asked anything.
    pub fn finish(&mut self, status: u32, at: Timestamp) {
        if self.exit.is_none() {
            self.exit = Some((status, at));
        }
        self.status = Status::STOPPED;
        self.control = None;
    }

    /// It runs: opens its stdin FIFO (with the keeper) for a session and returns what
    /// the session's thread takes.
    pub fn start_session(&mut self) -> std::io::Result<SessionIo> {
        let stdin = if self.stdio.stdin.is_empty() {
            None
        } else {
            let (reader, keeper) = open_stdin(&self.stdio.stdin)?;
            self.stdin_keeper = Some(keeper);
            Some(reader)
        };
        let (tx, rx) = control_channel()?;
        self.control = Some(tx);
        self.status = Status::RUNNING;
        Ok(SessionIo {
            stdin,
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            control: rx,
        })
    }

    /// `CloseIO`: the client closed its input; the process reads EOF once it read the
    /// rest.
    pub fn close_stdin(&mut self) {
        self.stdin_keeper = None;
    }

    /// Asks its session for something (a resize, a signal); false if none runs.
    pub fn ask(&self, what: Control) -> bool {
        self.control.as_ref().is_some_and(|c| c.send(what))
    }

    /// containerd's `State` of it.
    pub fn state(&self, id: &str, exec_id: &str, bundle: &str, pid: u32) -> api::StateResponse {
        let (exit_status, exited_at) = self.exit.clone().unwrap_or_default();
        api::StateResponse {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            bundle: bundle.to_string(),
            pid,
            status: self.status.into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status,
            exited_at: self.exit.as_ref().map(|_| exited_at).into(),
            ..Default::default()
        }
    }
}

impl SessionIo {
    /// The session's streams; `output`: its stdout and stderr go to the FIFOs (else
    /// they are dropped: a task's app without a terminal writes to the console, which
    /// is copied from the log). A missing FIFO drops that stream.
    pub fn streams(self, output: bool) -> std::io::Result<Streams> {
        let writer = |path: &str| -> std::io::Result<Box<dyn Write + Send>> {
            let fifo = match output {
                true => open_output(path)?,
                false => None,
            };
            Ok(match fifo {
                Some(f) => Box::new(f),
                None => Box::new(std::io::sink()),
            })
        };
        Ok(Streams {
            stdin: self.stdin,
            stdout: Some(writer(&self.stdout)?),
            stderr: Some(writer(&self.stderr)?),
            control: Some(self.control),
            errors: None,
        })
    }

    /// Whether the session carries the process's input.
    pub fn interactive(&self) -> bool {
        self.stdin.is_some()
    }
}

/// Opens an output FIFO for writing if its reader (the client) has it open; `None` for
/// no FIFO, or a reader already gone (`ctr run -d` exits right after the start): a
/// plain open would wait for a reader that never comes, and with it the end of the
/// task. The client opens its ends before it asks for the process, so a live one is
/// there. Writes block once open (the client's pace).
pub fn open_output(path: &str) -> std::io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return Ok(None);
    }
    let f = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) => return Err(e),
    };
    nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok(Some(f))
}

/// Opens a stdin FIFO without waiting for its writer (a plain open blocks until one
/// comes): our reading end, blocking once open, and a writing end of our own that
/// keeps the reader from seeing EOF until it is dropped.
fn open_stdin(path: &str) -> std::io::Result<(File, File)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // There is a reader now (ours): this open does not wait.
    let keeper = OpenOptions::new().write(true).open(path)?;
    nix::fcntl::fcntl(
        reader.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok((reader, keeper))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn fifo(dir: &std::path::Path, name: &str) -> String {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn stdin_reads_eof_only_after_close_io_and_the_client_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Process::new(Stdio {
            stdin: fifo(dir.path(), "in"),
            ..Default::default()
        });
        let io = p.start_session().unwrap();
        assert!(io.interactive());
        let mut reader = io.streams(false).unwrap().stdin.unwrap();
        // The client comes, writes and goes: its data arrives, no EOF yet.
        {
            let mut client = OpenOptions::new().write(true).open(&p.stdio.stdin).unwrap();
            client.write_all(b"abc").unwrap();
        }
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        let fd = std::os::fd::AsFd::as_fd(&reader);
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        assert_eq!(
            nix::poll::poll(&mut fds, 50u16).unwrap(),
            0,
            "no EOF before CloseIO"
        );
        p.close_stdin();
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn an_output_fifo_without_a_reader_is_no_output_and_no_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "out");
        // No reader (the client went away): at once, nothing.
        assert!(open_output(&path).unwrap().is_none());
        assert!(open_output("").unwrap().is_none());
        // With a reader: what is written arrives.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        open_output(&path)
            .unwrap()
            .unwrap()
            .write_all(b"hi")
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
    }

    #[test]
    fn a_finished_process_keeps_its_first_exit_and_takes_no_requests() {
        let mut p = Process::new(Stdio::default());
        let io = p.start_session().unwrap();
        assert!(!io.interactive());
        assert!(p.ask(Control::Signal(libc::SIGTERM)));
        assert_eq!(io.control.take(), [Control::Signal(libc::SIGTERM)]);
        p.finish(7, Timestamp::default());
        p.finish(137, Timestamp::default());
        assert_eq!(p.exit.as_ref().map(|e| e.0), Some(7));
        assert_eq!(p.status, Status::STOPPED);
        assert!(!p.ask(Control::Signal(libc::SIGTERM)));
    }
}
