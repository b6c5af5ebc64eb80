//! `volume export` and `volume import`: a volume's tree as a tar stream, moved by a
//! helper VM so dom0 never mounts or parses what a guest wrote.
//!
//! The helper VM boots the usual HyperKernel and init with no image and no network; its
//! disks are the volume (read-write: an export's read-only mount then replays a journal
//! a destroyed writer left) and a raw stream disk, a sparse file under the volume store.
//! Export: the guest writes `header + tar` to the stream disk and dom0 copies the bytes
//! the header announces (never more than the file holds) to the output. Import: dom0
//! writes `header + input` and the guest unpacks it into the volume.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use hyperxl_contract::job::{parse_stream_header, stream_header, Job, STREAM_HEADER_LEN};

use super::store::VolumeStore;
use super::{AttachedDisk, DiskKind};
use crate::vm::launch::{self, Prepared};
use crate::vm::machine::Guest;
use crate::vm::state::VmStore;

/// A stream file under the volume store, removed when dropped.
struct StreamFile(PathBuf);

impl StreamFile {
    fn create(store_dir: &Path, size: u64) -> anyhow::Result<(StreamFile, File)> {
        sweep(store_dir);
        let path = store_dir.join(format!(
            ".stream-{}-{}",
            std::process::id(),
            crate::vm::state::new_id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let stream = StreamFile(path);
        file.set_len(size)
            .with_context(|| format!("sizing {}", stream.0.display()))?;
        Ok((stream, file))
    }
}

/// Removes stream files of processes that no longer run (a SIGKILLed export/import).
fn sweep(store_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(store_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".stream-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for StreamFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn disks(volume: &str, volume_file: PathBuf, stream: &Path, stream_ro: bool) -> Vec<AttachedDisk> {
    vec![
        AttachedDisk {
            kind: DiskKind::Volume,
            name: volume.to_string(),
            target: None,
            readonly: false,
            vdev: "xvdb".into(),
            file: Some(volume_file),
            loop_device: None,
            size: None,
        },
        AttachedDisk {
            kind: DiskKind::Stream,
            name: "stream".into(),
            target: None,
            readonly: stream_ro,
            vdev: "xvdc".into(),
            file: Some(stream.to_path_buf()),
            loop_device: None,
            size: None,
        },
    ]
}

/// Fails early if a VM holds volume `name` (the helper claims it read-write); checked
/// again, under the lock, when the helper's record is made.
fn check_free(vms: &VmStore, name: &str) -> anyhow::Result<()> {
    let wanted = disks(name, PathBuf::new(), Path::new(""), false);
    crate::volume::check_claims(&vms.list()?, "", &wanted)?;
    Ok(())
}

/// Boots the helper VM that exports volume `name` to the stream file, or imports the
/// stream file into it (volume `xvdb`, stream `xvdc`, read-only for an import), and
/// waits for it to succeed.
fn run_job(
    vms: &VmStore,
    store: &VolumeStore,
    name: &str,
    stream: &Path,
    export: bool,
    files: &Guest,
) -> anyhow::Result<()> {
    let (volume, stream_dev) = ("/dev/xvdb".to_string(), "/dev/xvdc".to_string());
    let (kind, job) = if export {
        let job = Job::Export {
            volume,
            stream: stream_dev,
        };
        ("export", job)
    } else {
        let job = Job::Import {
            volume,
            stream: stream_dev,
        };
        ("import", job)
    };
    let p = Prepared::helper(
        kind,
        job,
        disks(name, store.data_file(name), stream, !export),
        files.clone(),
    )?;
    // Ctrl-C stops the helper VM rather than leaving it behind.
    crate::vm::monitor::install_stop_handlers();
    let code = launch::run_helper(vms, p)?;
    if code != 0 {
        bail!("the {kind} helper VM failed (exit code {code}); its error is above");
    }
    Ok(())
}

/// Writes volume `name`'s tree as a tar stream to `out`; returns the bytes written.
pub fn export(
    state_dir: &Path,
    name: &str,
    files: &Guest,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let store = VolumeStore::open(state_dir)?;
    let volume = store.load(name)?;
    let vms = VmStore::open(state_dir)?;
    check_free(&vms, name)?;
    // A tar of a tree is about its size on the filesystem, often less; headers and
    // padding of many tiny files can add some: room for both, sparse.
    let size = volume.size + volume.size / 8 + (16 << 20);
    let (stream, _) = StreamFile::create(store.root(), size)?;
    run_job(&vms, &store, name, &stream.0, true, files)?;
    let mut file = File::open(&stream.0).context("opening the stream")?;
    let mut header = [0u8; STREAM_HEADER_LEN];
    file.read_exact(&mut header)
        .context("reading the stream header")?;
    let len = announced(&header, size)?;
    let copied = io::copy(&mut file.take(len), out).context("writing the archive")?;
    out.flush().context("writing the archive")?;
    Ok(copied)
}

/// The length a stream header written by the guest announces, believed only as far as
/// the stream file of `size` bytes goes.
fn announced(header: &[u8], size: u64) -> anyhow::Result<u64> {
    let len = parse_stream_header(header).context("the helper VM wrote no stream header")?;
    let avail = size.saturating_sub(STREAM_HEADER_LEN as u64);
    if len > avail {
        bail!("the helper VM announced {len} bytes, more than its stream disk holds");
    }
    Ok(len)
}

/// Unpacks the tar stream `input` into volume `name` (made with `size` if missing);
/// returns the bytes read.
pub fn import(
    state_dir: &Path,
    name: &str,
    size: u64,
    files: &Guest,
    input: &mut dyn Read,
) -> anyhow::Result<u64> {
    let store = VolumeStore::open(state_dir)?;
    let vms = VmStore::open(state_dir)?;
    check_free(&vms, name)?;
    // Ctrl-C while the archive is read ends the copy; the stream file is then removed.
    crate::vm::monitor::install_stop_handlers();
    let (stream, mut file) = StreamFile::create(store.root(), 0)?;
    file.seek(SeekFrom::Start(STREAM_HEADER_LEN as u64))?;
    let len = copy_until_stopped(input, &mut file).context("reading the archive")?;
    if len == 0 {
        bail!("the archive is empty");
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&stream_header(len))?;
    // A block device is whole sectors.
    let total = (STREAM_HEADER_LEN as u64 + len).div_ceil(512) * 512;
    file.set_len(total)?;
    file.sync_all()?;
    drop(file);
    let (_, made) = store.ensure(name, size, false, Default::default())?;
    let done = run_job(&vms, &store, name, &stream.0, false, files);
    if let Err(e) = done {
        // A volume made for this import goes with it; an existing one keeps what the
        // guest unpacked before it failed.
        if made {
            let _ = crate::volume::remove_unused(&store, &vms, name);
        }
        return Err(e);
    }
    Ok(len)
}

/// `io::copy` that ends early, with an error, on a stop signal.
fn copy_until_stopped(input: &mut dyn Read, out: &mut File) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if crate::vm::monitor::stop_requested() {
            bail!("interrupted");
        }
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_written_header_is_bounded_by_the_file() {
        assert_eq!(announced(&stream_header(1000), 2048).unwrap(), 1000);
        assert_eq!(announced(&stream_header(1536), 2048).unwrap(), 1536);
        assert!(announced(&stream_header(1537), 2048).is_err());
        assert!(announced(&stream_header(u64::MAX), 2048).is_err());
        assert!(announced(&stream_header(0), 100).is_ok());
        assert!(announced(&[0u8; 512], 1 << 20).is_err());
        assert!(announced(b"short", 1 << 20).is_err());
    }
}
