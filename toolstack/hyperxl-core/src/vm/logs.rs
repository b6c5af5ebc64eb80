//! Reading a VM's console log as its watcher writes it (`logs`, `attach`): the rotated
//! files, then the current one, followed across rotations until the VM ends.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use std::os::fd::AsFd;

use anyhow::Context as _;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::console::{self, LineSplitter};
use super::host::{reconcile_all, Host};
use super::monitor::is_init_line;
use super::state::VmStore;

/// Prints VM `id`'s console log on stdout (the init's and kernel's lines only with
/// `debug`), from its start (with the rotated files) or, with `from_end`, only what is
/// written from now on; with `follow`, until the VM ended.
pub fn print_log(
    vms: &VmStore,
    id: &str,
    debug: bool,
    follow: bool,
    from_end: bool,
) -> anyhow::Result<()> {
    read_log(vms, id, follow, from_end, |line| print_line(line, debug))
}

/// Prints one console line on stdout, as an attached `run` and `logs` show it: its
/// line ending normalised, the init's and kernel's own lines only with
/// `show_init_lines`.
pub fn print_line(raw: &[u8], show_init_lines: bool) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\r', '\n']);
    if show_init_lines || !is_init_line(text) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(())
}

/// Hands every line of VM `id`'s console log to `show`, from its start (with the
/// rotated files) or, with `from_end`, from now on; with `follow`, until the VM ended
/// (following the watcher's rotations).
pub fn read_log(
    vms: &VmStore,
    id: &str,
    follow: bool,
    from_end: bool,
    show: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    if !follow {
        return read_log_inner(vms, id, from_end, None, show);
    }
    let host = Host::connect();
    let mut ended = || -> anyhow::Result<bool> {
        let vms_now = reconcile_all(vms, &host)?;
        Ok(!vms_now.iter().any(|v| v.id == id && v.status.can_stop()))
    };
    // A watcher killed with SIGKILL records no end: reconcile finds it, once a second.
    read_log_inner(vms, id, from_end, Some((&mut ended, RECONCILE_EVERY)), show)
}

/// How often `logs -f` reconciles while nothing changes in the VM's directory.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long [`read_log_until`] sleeps when nothing changes (its caller's `ended` turns
/// true along with a change there: the end is recorded in the VM's directory).
const IDLE_CHECK: Duration = Duration::from_secs(10);

/// Hands every line of VM `id`'s console log to `show` (from its start, or with
/// `from_end` from now on), following it until `ended` says the VM's end is recorded,
/// and then one round more for what its watcher wrote before that. For a caller that
/// learns of the end itself (the containerd shim waits on the watcher process): no
/// reconcile, and an idle VM costs no wake-ups (the VM's directory is watched with
/// inotify; `ended` is asked on each change and every 10 s).
pub fn read_log_until(
    vms: &VmStore,
    id: &str,
    from_end: bool,
    mut ended: impl FnMut() -> anyhow::Result<bool>,
    show: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    read_log_inner(vms, id, from_end, Some((&mut ended, IDLE_CHECK)), show)
}

/// What ends following a log: asked after each change in the VM's directory, and after
/// the interval at the latest.
type Ended<'a> = (&'a mut dyn FnMut() -> anyhow::Result<bool>, Duration);

/// [`read_log_until`]; without `ended`, up to the log's end as it is now.
fn read_log_inner(
    vms: &VmStore,
    id: &str,
    from_end: bool,
    mut ended: Option<Ended<'_>>,
    mut show: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let path = vms.dir(id).join("console.log");
    // The watcher's writes to the log, its rotations and the end's record all change
    // the VM's directory: sleep until one does (polling if inotify is unavailable).
    let changes = ended.is_some().then(|| DirChanges::watch(&vms.dir(id)));
    let mut lines = LineSplitter::default();
    // The rotated files first (oldest first), each whole: they no longer change.
    let files = console::log_files(&path);
    let (current, rotated) = files.split_last().expect("log_files ends with the log");
    if !from_end {
        for old in rotated {
            if let Ok(mut f) = File::open(old) {
                copy_lines(&mut f, &mut lines, &mut show)?;
            }
        }
    }
    let mut reader = open_if_present(current)?;
    if let (true, Some(f)) = (from_end, reader.as_mut()) {
        f.seek(std::io::SeekFrom::End(0))
            .context("reading the console log")?;
    }
    let mut last_round = false;
    loop {
        if reader.is_none() {
            reader = open_if_present(&path)?;
        }
        if let Some(f) = reader.as_mut() {
            copy_lines(f, &mut lines, &mut show)?;
            if rotated_away(f, &path) {
                // The watcher rotated the log: finish the old file, go on with the new.
                copy_lines(f, &mut lines, &mut show)?;
                reader = open_if_present(&path)?;
                continue;
            }
        }
        if last_round {
            break;
        }
        let Some((ended, interval)) = ended.as_mut() else {
            break;
        };
        if ended()? {
            // One more round for what the watcher wrote before recording the end.
            std::thread::sleep(Duration::from_millis(200));
            last_round = true;
            continue;
        }
        match changes.as_ref().and_then(|c| c.as_ref()) {
            Some(c) => c.wait(*interval),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    // The VM has ended (or no -f): no rest of a last unfinished line is coming.
    let mut err = Ok(());
    lines.finish(|l| err = show(l));
    err?;
    Ok(())
}

/// Changes in a VM's directory, through inotify.
struct DirChanges(Inotify);

impl DirChanges {
    /// Watches `dir`; `None` if inotify is not available (then the caller polls).
    fn watch(dir: &Path) -> Option<Self> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mask = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF;
        ino.add_watch(dir, mask).ok()?;
        Some(DirChanges(ino))
    }

    /// Sleeps until something changed or `timeout` passed; takes the events.
    fn wait(&self, timeout: Duration) {
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::NONE);
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        if let Ok(n) = poll(&mut fds, ms) {
            if n > 0 {
                // Everything queued (non-blocking: an empty queue is EAGAIN).
                while matches!(self.0.read_events(), Ok(ev) if !ev.is_empty()) {}
            }
        }
    }
}

/// Opens the log if it exists yet.
fn open_if_present(path: &Path) -> anyhow::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Shows every complete line `f` holds from its position on (an unfinished last line
/// stays in `lines` until its rest arrives).
fn copy_lines(
    f: &mut File,
    lines: &mut LineSplitter,
    show: &mut impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut err = Ok(());
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        lines.push(&buf[..n], |l| {
            if err.is_ok() {
                err = show(l);
            }
        });
        std::mem::replace(&mut err, Ok(()))?;
    }
    Ok(())
}

/// Whether `path` now names another file than the open `f` (the log was rotated).
fn rotated_away(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(now)) => open.ino() != now.ino() || open.dev() != now.dev(),
        // Gone for a moment between rename and re-create: not a new file yet.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn following_a_log_wakes_on_its_changes_not_on_a_clock() {
        let dir = tempfile::tempdir().unwrap();
        let vms = VmStore::open(dir.path()).unwrap();
        let vm_dir = vms.dir("vm1");
        std::fs::create_dir_all(&vm_dir).unwrap();
        let log = vm_dir.join("console.log");
        std::fs::write(&log, b"one\n").unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (log, done, vm_dir) = (log.clone(), done.clone(), vm_dir.clone());
            std::thread::spawn(move || {
                for line in ["two\n", "thr", "ee\n"] {
                    std::thread::sleep(Duration::from_millis(700));
                    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                    f.write_all(line.as_bytes()).unwrap();
                }
                std::thread::sleep(Duration::from_millis(300));
                // The end as the watcher records it: a change in the VM's directory.
                done.store(true, Ordering::SeqCst);
                std::fs::write(vm_dir.join("state.json"), b"{}").unwrap();
            })
        };
        let asked = AtomicUsize::new(0);
        let mut got = Vec::new();
        read_log_until(
            &vms,
            "vm1",
            false,
            || {
                asked.fetch_add(1, Ordering::SeqCst);
                Ok(done.load(Ordering::SeqCst))
            },
            |l| {
                got.push(String::from_utf8_lossy(l).trim_end().to_string());
                Ok(())
            },
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(got, ["one", "two", "three"]);
        // 2.4 s of following: polling every 100 ms would have asked about 24 times; the
        // changes are 3 writes and the end (a write may show as two events).
        let asked = asked.load(Ordering::SeqCst);
        assert!((2..=10).contains(&asked), "asked {asked} times");
    }
}
