//! Reading a VM's console log as its watcher writes it (`logs`, `attach`): the rotated
//! files, then the current one, followed across rotations until the VM ends.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

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
    read_log_inner(vms, id, from_end, Some(&mut ended), show)
}

/// Hands every line of VM `id`'s console log to `show` (from its start, or with
/// `from_end` from now on), following it until `ended` says the VM's end is recorded,
/// and then one round more for what its watcher wrote before that. For a caller that
/// learns of the end itself (the containerd shim waits on the watcher process): no
/// reconcile round every 100 ms.
pub fn read_log_until(
    vms: &VmStore,
    id: &str,
    from_end: bool,
    mut ended: impl FnMut() -> anyhow::Result<bool>,
    show: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    read_log_inner(vms, id, from_end, Some(&mut ended), show)
}

/// [`read_log_until`]; without `ended`, up to the log's end as it is now.
fn read_log_inner(
    vms: &VmStore,
    id: &str,
    from_end: bool,
    mut ended: Option<&mut dyn FnMut() -> anyhow::Result<bool>>,
    mut show: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let path = vms.dir(id).join("console.log");
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
        let Some(ended) = ended.as_mut() else { break };
        if ended()? {
            // One more round for what the watcher wrote before recording the end.
            std::thread::sleep(Duration::from_millis(200));
            last_round = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The VM has ended (or no -f): no rest of a last unfinished line is coming.
    let mut err = Ok(());
    lines.finish(|l| err = show(l));
    err?;
    Ok(())
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
