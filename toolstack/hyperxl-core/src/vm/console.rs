//! A VM's console, copied from its tty to `console.log` (and to stdout when attached).
//!
//! The guest decides what comes out of its console, so everything here is bounded:
//! - memory: the tty is read into one fixed buffer, and a line is cut at
//!   [`MAX_CONSOLE_LINE`] whatever the reads return (a guest that never sends a newline
//!   costs dom0 at most one line's buffer);
//! - disk: the log rotates as Docker's `json-file` driver does (`max-size`, `max-file`):
//!   `console.log` is closed at `max-size` and renamed to `console.log.1` (the oldest
//!   file beyond `max-file` is deleted). The size is taken from the file itself, so
//!   restarts of the same VM, each a new watcher process, share one bound;
//! - time: the copier sleeps in `poll(2)` on the tty, never in a busy loop.
//!
//! Writes to the log are best effort: a full disk drops lines, it never stops the copy
//! (and so never the VM, whose console would otherwise fill and block).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use anyhow::Context as _;
use hyperxl_contract::console::APP_EXITED;
use serde::{Deserialize, Serialize};

/// A console line longer than this is cut into pieces of this size.
pub const MAX_CONSOLE_LINE: usize = 16 * 1024;

/// How much of a VM's console dom0 keeps on disk (`run --log-opt`, as Docker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    /// `max-size`: bytes one log file may hold before it is rotated.
    pub max_size: u64,
    /// `max-file`: how many files (the current one included) are kept.
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 32 MiB x 2: at most 64 MiB of console per VM.
    fn default() -> Self {
        Self {
            max_size: 32 * 1024 * 1024,
            max_files: 2,
        }
    }
}

/// The smallest `max-size`: a cut line must always fit in one file.
const MIN_LOG_SIZE: u64 = 64 * 1024;
/// The most files a VM's log may be split into.
const MAX_LOG_FILES: u32 = 100;

/// A `--log-opt` that hyperxl does not understand.
#[derive(Debug, thiserror::Error)]
pub enum LogOptError {
    /// Not `max-size=SIZE` or `max-file=N`.
    #[error("unknown log option {0:?} (known: max-size=SIZE, max-file=N)")]
    Unknown(String),
    /// A size that does not parse or is too small.
    #[error("invalid max-size {0:?}: give a size such as 10m or 1g, at least 64k")]
    BadSize(String),
    /// A file count out of range.
    #[error("invalid max-file {0:?}: give a number from 1 to 100")]
    BadCount(String),
}

impl LogLimits {
    /// Applies one `KEY=VALUE` option (`max-size=10m`, `max-file=3`).
    pub fn apply(&mut self, opt: &str) -> Result<(), LogOptError> {
        match opt.split_once('=') {
            Some(("max-size", v)) => self.max_size = parse_log_size(v)?,
            Some(("max-file", v)) => self.max_files = parse_log_count(v)?,
            _ => return Err(LogOptError::Unknown(opt.to_owned())),
        }
        Ok(())
    }

    /// The limits `--log-opt` options ask for, on top of the defaults.
    pub fn from_opts<S: AsRef<str>>(opts: &[S]) -> Result<Self, LogOptError> {
        let mut limits = Self::default();
        for o in opts {
            limits.apply(o.as_ref())?;
        }
        Ok(limits)
    }
}

/// `10m`, `1g`, `65536`, `512k` (binary units, as Docker's `max-size`).
pub fn parse_log_size(v: &str) -> Result<u64, LogOptError> {
    let bad = || LogOptError::BadSize(v.to_owned());
    let lower = v.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let size = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if size < MIN_LOG_SIZE {
        return Err(bad());
    }
    Ok(size)
}

fn parse_log_count(v: &str) -> Result<u32, LogOptError> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LOG_FILES).contains(&n) => Ok(n),
        _ => Err(LogOptError::BadCount(v.to_owned())),
    }
}

/// Splits a byte stream into lines of at most [`MAX_CONSOLE_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `bytes`; `line` gets every complete line (with its `\n`) and every piece
    /// of a line cut at the limit (without one). Holds at most one line's worth.
    pub fn push(&mut self, mut bytes: &[u8], mut line: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let room = MAX_CONSOLE_LINE - self.partial.len();
            let take = match bytes[..bytes.len().min(room)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(nl) => nl + 1,
                None => bytes.len().min(room),
            };
            let (head, rest) = bytes.split_at(take);
            bytes = rest;
            if self.partial.is_empty() && (head.ends_with(b"\n") || take == room) {
                line(head);
                continue;
            }
            self.partial.extend_from_slice(head);
            if self.partial.ends_with(b"\n") || self.partial.len() >= MAX_CONSOLE_LINE {
                line(&self.partial);
                self.partial.clear();
            }
        }
    }

    /// The unfinished rest, if any (at the end of the console).
    pub fn finish(&mut self, line: impl FnOnce(&[u8])) {
        if !self.partial.is_empty() {
            line(&self.partial);
            self.partial.clear();
        }
    }

    /// Bytes held for an unfinished line.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.partial.len()
    }
}

/// `console.log` and its rotated predecessors, `console.log.1` (newest) and up.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    limits: LogLimits,
}

impl ConsoleLog {
    /// Opens (creating, mode 0600) the log at `path`, continuing from its current size.
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<Self> {
        let file = open_log_file(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            limits,
        })
    }

    /// Appends one line (a cut piece gets its own newline, so the log stays line by line).
    /// Best effort: a failed write (a full disk) drops the line.
    pub fn write_line(&mut self, line: &[u8]) {
        let newline = !line.ends_with(b"\n");
        let len = line.len() as u64 + u64::from(newline);
        if self.size > 0 && self.size + len > self.limits.max_size {
            self.rotate();
        }
        if self.file.is_none() {
            // The last rotation could not reopen the file (a full disk, say): try again.
            self.reopen();
        }
        if self.size > 0 && self.size + len > self.limits.max_size {
            // Rotation failed: drop the line rather than grow past the bound.
            return;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut piece = Vec::with_capacity(line.len() + 1);
        piece.extend_from_slice(line);
        if newline {
            piece.push(b'\n');
        }
        // O_APPEND: a short write of a failed call still lands at the end; count what the
        // file really holds next time we rotate.
        if file.write_all(&piece).is_ok() {
            self.size += len;
        } else {
            self.size = file.metadata().map_or(self.size, |m| m.len());
        }
    }

    /// Renames `console.log` to `console.log.1` (shifting older ones up, dropping the
    /// oldest) and starts an empty one.
    fn rotate(&mut self) {
        self.file = None;
        let keep = self.limits.max_files.max(1);
        if keep == 1 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(rotated(&self.path, keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
            }
            let _ = fs::rename(&self.path, rotated(&self.path, 1));
        }
        // Older files from a larger max-file than today's are stale too.
        for n in keep..=MAX_LOG_FILES {
            if fs::remove_file(rotated(&self.path, n)).is_err() && n > keep {
                break;
            }
        }
        self.reopen();
    }

    /// Opens `console.log` again, its size taken from the file (a failed rename above
    /// leaves the old one in place, and the bound must still hold).
    fn reopen(&mut self) {
        self.file = open_log_file(&self.path).ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }
}

/// `console.log.N`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A VM's log files, oldest first (`console.log.N`, ..., `console.log.1`, `console.log`).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=MAX_LOG_FILES)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}

fn open_log_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Where console lines go besides the log.
pub type LineSink = Box<dyn FnMut(&[u8]) + Send>;

/// Ends a console copier: a flag, and a pipe whose other end sits in the copier's `poll`
/// beside the console, so the copier sleeps until the guest prints or it is stopped (an
/// idle VM costs its watcher no wake-ups). It also tells the watcher when the init's
/// last line of a run ([`hyperxl_contract::console::APP_EXITED`]) came through.
#[derive(Debug)]
pub struct CopierStop {
    flag: AtomicBool,
    wake_read: std::os::fd::OwnedFd,
    wake_write: std::os::fd::OwnedFd,
    app_exited: Mutex<bool>,
    app_exited_cv: Condvar,
}

impl CopierStop {
    /// A stop not yet given.
    pub fn new() -> io::Result<Self> {
        let (wake_read, wake_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok(Self {
            flag: AtomicBool::new(false),
            wake_read,
            wake_write,
            app_exited: Mutex::new(false),
            app_exited_cv: Condvar::new(),
        })
    }

    /// Waits until the copier passed on the init's "app exited" line, at most
    /// `timeout`; whether it did.
    pub fn wait_app_exited(&self, timeout: std::time::Duration) -> bool {
        let Ok(seen) = self.app_exited.lock() else {
            return false;
        };
        self.app_exited_cv
            .wait_timeout_while(seen, timeout, |seen| !*seen)
            .is_ok_and(|(seen, _)| *seen)
    }

    fn note_app_exited(&self) {
        if let Ok(mut seen) = self.app_exited.lock() {
            *seen = true;
            self.app_exited_cv.notify_all();
        }
    }

    /// Tells the copier to drain what is pending and end.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // The pipe stays readable from now on; a full pipe is as good as a written one.
        let _ = nix::unistd::write(&self.wake_write, &[1]);
    }

    fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Copies the console tty at `tty` to the log (and every line to `sink`) until `stop`
/// is given and nothing more is pending.
pub fn spawn_copier(
    tty: &Path,
    log: ConsoleLog,
    sink: Option<LineSink>,
    skip_until: Option<&'static str>,
    stop: Arc<CopierStop>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // Non-blocking, so a wake-up without data never blocks; never our ctty.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(tty)
        .with_context(|| format!("opening the console {}", tty.display()))?;
    if let Ok(mut t) = nix::sys::termios::tcgetattr(&file) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ = nix::sys::termios::tcsetattr(&file, nix::sys::termios::SetArg::TCSANOW, &t);
    }
    Ok(thread::spawn(move || {
        // SIGINT/SIGTERM are for the watcher's thread, whose sleep they interrupt.
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        let mut stops = SigSet::empty();
        stops.add(Signal::SIGINT);
        stops.add(Signal::SIGTERM);
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stops), None);
        copy(file, log, sink, skip_until, &stop)
    }))
}

/// How long the copier pauses on a hung-up console (which polls ready at once).
const HUP_PAUSE_MS: u16 = 100;

/// How long the copier keeps draining after `done`: a guest that reported its exit
/// code and keeps printing must not hold its watcher (and so its teardown) forever.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The copy loop: poll, read into a fixed buffer, split, write. Runs until `stop` is
/// given and a last read found nothing (or [`DRAIN_LIMIT`] passed since). With
/// `skip_until`, every line before the first that ends so is dropped (a
/// pooled VM's boot, which is not its app's).
pub fn copy(
    mut src: File,
    mut log: ConsoleLog,
    mut sink: Option<LineSink>,
    skip_until: Option<&str>,
    stop: &CopierStop,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = LineSplitter::default();
    let mut gate = skip_until;
    let mut emit = |line: &[u8]| {
        if let Some(marker) = gate {
            // Ends with: a kernel message may share the console line the init began.
            if !line.trim_ascii_end().ends_with(marker.as_bytes()) {
                return;
            }
            gate = None;
        }
        log.write_line(line);
        if let Some(sink) = sink.as_mut() {
            sink(line);
        }
        // Anywhere in the line: a kernel message may share it.
        if contains(line, APP_EXITED.as_bytes()) {
            stop.note_app_exited();
        }
    };
    let mut ending_since: Option<std::time::Instant> = None;
    loop {
        let ending = stop.is_stopped();
        if ending {
            let since = *ending_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > DRAIN_LIMIT {
                break;
            }
        }
        let mut fds = [
            PollFd::new(src.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.wake_read.as_fd(), PollFlags::POLLIN),
        ];
        // Asleep until the guest prints or the stop comes: no timeout.
        let timeout = if ending {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        let ready = poll(&mut fds, timeout);
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        let mut got = 0;
        if matches!(ready, Ok(n) if n > 0) && !revents.is_empty() {
            match src.read(&mut buf) {
                Ok(n) => got = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: the pty's other side is gone for now (xenconsoled reopens it).
                Err(_) => {}
            }
            lines.push(&buf[..got], &mut emit);
        }
        if got == 0 {
            if ending {
                break;
            }
            if revents.contains(PollFlags::POLLHUP) || revents.contains(PollFlags::POLLERR) {
                // A hung-up tty polls ready at once: do not spin on it.
                thread::sleep(std::time::Duration::from_millis(u64::from(HUP_PAUSE_MS)));
            }
        }
    }
    lines.finish(&mut emit);
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut most_held = 0;
        for c in chunks {
            s.push(c, |l| out.push(l.to_vec()));
            most_held = most_held.max(s.held());
        }
        s.finish(|l| out.push(l.to_vec()));
        (out, most_held)
    }

    #[test]
    fn lines_come_out_whole_whatever_the_reads_return() {
        let (out, _) = split_all(&[b"hel", b"lo\nwor", b"ld\n", b"\n", b"tail"]);
        assert_eq!(out, [&b"hello\n"[..], b"world\n", b"\n", b"tail"]);
    }

    /// Defect 1 (issue 10): a guest that never sends a newline grew the watcher's
    /// buffer without bound when reads returned "would block" mid-line.
    #[test]
    fn defect1_a_line_without_newline_is_cut_at_the_cap_in_small_reads() {
        let chunk = vec![b'A'; 1000];
        let chunks: Vec<&[u8]> = std::iter::repeat_n(&chunk[..], 5000).collect();
        let (out, most_held) = split_all(&chunks);
        assert!(most_held < MAX_CONSOLE_LINE, "held {most_held}");
        assert!(out.iter().all(|l| l.len() <= MAX_CONSOLE_LINE));
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), 5_000_000);
        assert_eq!(out.len(), 5_000_000usize.div_ceil(MAX_CONSOLE_LINE));
    }

    #[test]
    fn defect1_one_huge_read_is_cut_too() {
        let big = vec![b'B'; 3 * MAX_CONSOLE_LINE + 5];
        let (out, most_held) = split_all(&[&big, b"\n"]);
        assert_eq!(most_held, 5);
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_CONSOLE_LINE, MAX_CONSOLE_LINE, MAX_CONSOLE_LINE, 6]
        );
    }

    fn total_size(path: &Path) -> u64 {
        log_files(path)
            .iter()
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    /// Defect 1 (issue 10): the cap counted from 0 in each watcher process, so a VM
    /// restarted again and again grew its log without bound.
    #[test]
    fn defect1_the_log_stays_bounded_across_watcher_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let limits = LogLimits {
            max_size: MIN_LOG_SIZE,
            max_files: 2,
        };
        let line = [b'x'; 999];
        for _restart in 0..3 {
            // Each restart is a new watcher process: a fresh ConsoleLog on the same file.
            let mut log = ConsoleLog::open(&path, limits).unwrap();
            for _ in 0..1000 {
                log.write_line(&line);
            }
        }
        let total = total_size(&path);
        assert!(total <= 2 * MIN_LOG_SIZE, "{total} bytes kept");
        assert!(total > MIN_LOG_SIZE, "the newest lines are kept: {total}");
        assert_eq!(log_files(&path).len(), 2);
        let newest = fs::read(&path).unwrap();
        let mut last = [b'x'; 1000];
        last[999] = b'\n';
        assert!(newest.ends_with(&last), "whole lines, the newest last");
    }

    #[test]
    fn defect1_a_long_line_cannot_bypass_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let limits = LogLimits {
            max_size: MIN_LOG_SIZE,
            max_files: 1,
        };
        let mut log = ConsoleLog::open(&path, limits).unwrap();
        let mut s = LineSplitter::default();
        let big = vec![b'C'; 10 * 1024 * 1024];
        s.push(&big, |l| log.write_line(l));
        assert!(total_size(&path) <= MIN_LOG_SIZE);
    }

    #[test]
    fn the_log_is_private_to_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        ConsoleLog::open(&path, LogLimits::default()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_copier_bounds_a_newline_free_stream_and_drains_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let (reader, mut writer) = (File::from(reader), File::from(writer));
        let log = ConsoleLog::open(&path, LogLimits::default()).unwrap();
        let seen = Arc::new(Mutex::new((0usize, 0usize)));
        let s2 = seen.clone();
        let sink: LineSink = Box::new(move |l: &[u8]| {
            let mut s = s2.lock().unwrap();
            s.0 += 1;
            s.1 = s.1.max(l.len());
        });
        let stop = Arc::new(CopierStop::new().unwrap());
        let s3 = stop.clone();
        let t = thread::spawn(move || copy(reader, log, Some(sink), None, &s3));
        for _ in 0..64 {
            writer.write_all(&[b'z'; 65536]).unwrap();
        }
        writer.write_all(b"end\n").unwrap();
        drop(writer);
        stop.stop();
        t.join().unwrap();
        let (count, longest) = *seen.lock().unwrap();
        assert_eq!(longest, MAX_CONSOLE_LINE);
        assert_eq!(count, 64 * 65536 / MAX_CONSOLE_LINE + 1);
        let text = fs::read(&path).unwrap();
        assert_eq!(text.len(), 64 * 65536 + count - 1 + 4);
    }

    /// A pooled VM's boot lines are neither shown nor logged: only what follows the
    /// marker (its line too), and a later copy of the marker is an ordinary line.
    #[test]
    fn lines_before_the_marker_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let (reader, mut writer) = (File::from(reader), File::from(writer));
        let log = ConsoleLog::open(&path, LogLimits::default()).unwrap();
        let shown = Arc::new(Mutex::new(Vec::<String>::new()));
        let s2 = shown.clone();
        let sink: LineSink = Box::new(move |l: &[u8]| {
            s2.lock()
                .unwrap()
                .push(String::from_utf8_lossy(l).into_owned());
        });
        let stop = Arc::new(CopierStop::new().unwrap());
        let s3 = stop.clone();
        let t = thread::spawn(move || copy(reader, log, Some(sink), Some("MARK"), &s3));
        writer
            .write_all(b"boot secret\nMARKER-ish\n[ 0.5] blkfront: xvda1MARK\r\napp 1\nMARK\n")
            .unwrap();
        drop(writer);
        stop.stop();
        t.join().unwrap();
        let shown = shown.lock().unwrap().clone();
        // A kernel message that began the marker's console line does not hide it.
        assert_eq!(
            shown,
            ["[ 0.5] blkfront: xvda1MARK\r\n", "app 1\n", "MARK\n"]
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[ 0.5] blkfront: xvda1MARK\r\napp 1\nMARK\n"
        );
    }

    /// The watcher drains the console up to the init's last line of a run, not for a
    /// fixed time: the copier says when that line came through, and only after a pooled
    /// VM's gate opened (a line from its boot does not count).
    #[test]
    fn the_init_s_last_line_is_noticed_only_when_it_came_through() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let (reader, mut writer) = (File::from(reader), File::from(writer));
        let log = ConsoleLog::open(&dir.path().join("console.log"), LogLimits::default()).unwrap();
        let stop = Arc::new(CopierStop::new().unwrap());
        let s2 = stop.clone();
        let t = thread::spawn(move || copy(reader, log, None, Some("MARK"), &s2));
        let wait = std::time::Duration::from_millis(200);
        // Before the gate: ignored.
        writer
            .write_all(format!("{APP_EXITED}0\nMARK\napp output\n").as_bytes())
            .unwrap();
        assert!(!stop.wait_app_exited(wait));
        // Not a whole line yet.
        writer.write_all(APP_EXITED.as_bytes()).unwrap();
        assert!(!stop.wait_app_exited(wait));
        // A kernel message may share the line.
        writer.write_all(b"3[ 1.2] xen: oops\n").unwrap();
        assert!(stop.wait_app_exited(std::time::Duration::from_secs(5)));
        drop(writer);
        stop.stop();
        t.join().unwrap();
    }

    /// From a review: a guest that reported its exit code and kept printing held its
    /// watcher in the console drain for ever, so its domain was never torn down.
    #[test]
    fn the_drain_after_the_end_is_bounded_in_time() {
        let dir = tempfile::tempdir().unwrap();
        // A console that always has more to say.
        let endless = File::open("/dev/zero").unwrap();
        let limits = LogLimits {
            max_size: MIN_LOG_SIZE,
            max_files: 1,
        };
        let log = ConsoleLog::open(&dir.path().join("console.log"), limits).unwrap();
        let stop = CopierStop::new().unwrap();
        stop.stop();
        let begun = std::time::Instant::now();
        copy(endless, log, None, None, &stop);
        let took = begun.elapsed();
        assert!(took < DRAIN_LIMIT * 3, "drained for {took:?}");
    }

    #[test]
    fn log_opts_parse_as_dockers() {
        let l = LogLimits::from_opts(&["max-size=10m", "max-file=3"]).unwrap();
        assert_eq!((l.max_size, l.max_files), (10 << 20, 3));
        assert_eq!(parse_log_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_log_size("512K").unwrap(), 512 << 10);
        for bad in ["", "10x", "1k", "-5m", "99999999999999g"] {
            assert!(parse_log_size(bad).is_err(), "{bad}");
        }
        assert!(LogLimits::from_opts(&["max-file=0"]).is_err());
        assert!(LogLimits::from_opts(&["compress=true"]).is_err());
    }
}
