//! Jobs of dom0's helper VMs (see `hyperxl_contract::job`): a volume's tree to a tar
//! stream on a raw disk, and back. Runs in the initramfs; there is no image.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use hyperxl_contract::job::{parse_stream_header, stream_header, Job, STREAM_HEADER_LEN};
use nix::mount::{mount, umount, MsFlags};

use crate::error::{InitError, SysContext};
use crate::mounts::{sysfs_block, wait_for};

/// Where the volume is mounted.
const VOL: &str = "/mnt/vol";

/// Runs `job`; `Ok` once the stream or the volume is complete and synced.
pub fn run(job: &Job) -> Result<(), InitError> {
    for dev in job.devices() {
        wait_for(&sysfs_block(dev), Duration::from_secs(30))?;
        wait_for(dev, Duration::from_secs(30))?;
    }
    fs::create_dir_all(VOL).ctx(format!("mkdir {VOL}"))?;
    match job {
        Job::Export { volume, stream } => {
            // Read-only, on a writable device: ext4 replays a journal a destroyed
            // writer left, so the export holds everything that writer committed.
            mount_volume(volume, MsFlags::MS_RDONLY)?;
            let done = export(stream);
            let _ = umount(VOL);
            done
        }
        Job::Import { volume, stream } => {
            mount_volume(volume, MsFlags::empty())?;
            let done = import(stream);
            nix::unistd::sync();
            umount(VOL).ctx("unmount the volume")?;
            done
        }
    }
}

fn mount_volume(device: &str, flags: MsFlags) -> Result<(), InitError> {
    mount(Some(device), VOL, Some("ext4"), flags, None::<&str>)
        .ctx(format!("mount {device} (ext4) on {VOL}"))
}

/// Counts what passes through.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn export(stream: &str) -> Result<(), InitError> {
    let what = |w: &str| format!("export: {w}");
    let mut dev = OpenOptions::new()
        .write(true)
        .open(stream)
        .ctx(what("open the stream disk"))?;
    dev.seek(SeekFrom::Start(STREAM_HEADER_LEN as u64))
        .ctx(what("seek"))?;
    let out = Counting {
        inner: BufWriter::with_capacity(1 << 20, dev),
        count: 0,
    };
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir(".", VOL).ctx(what("the root directory"))?;
    let mut sockets = 0u64;
    add_tree(&mut tar, Path::new(VOL), Path::new(""), &mut sockets).ctx(what("add the tree"))?;
    if sockets > 0 {
        crate::console::say!("export: {sockets} sockets skipped (tar has no socket entries)");
    }
    let out = tar.into_inner().ctx(what("finish the archive"))?;
    let len = out.count;
    let mut dev = out
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx(what("flush"))?;
    dev.seek(SeekFrom::Start(0)).ctx(what("seek"))?;
    dev.write_all(&stream_header(len))
        .ctx(what("write the header"))?;
    dev.sync_all().ctx(what("sync the stream disk"))?;
    Ok(())
}

/// Adds `dir`'s entries under `rel`, sorted, without following symlinks; directories
/// recursively; sockets (which tar cannot hold) are counted in `sockets` and skipped;
/// mkfs's `lost+found` at the top is not the user's data.
fn add_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    sockets: &mut u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| !(rel.as_os_str().is_empty() && n == "lost+found"))
        .collect();
    names.sort();
    for name in names {
        let (path, inner) = (dir.join(&name), rel.join(&name));
        let kind = fs::symlink_metadata(&path)?.file_type();
        if kind.is_socket() {
            *sockets += 1;
        } else if kind.is_dir() {
            tar.append_dir(&inner, &path)?;
            add_tree(tar, &path, &inner, sockets)?;
        } else {
            tar.append_path_with_name(&path, &inner)?;
        }
    }
    Ok(())
}

fn import(stream: &str) -> Result<(), InitError> {
    let what = |w: &str| format!("import: {w}");
    let mut dev = File::open(stream).ctx(what("open the stream disk"))?;
    let mut header = [0u8; STREAM_HEADER_LEN];
    dev.read_exact(&mut header).ctx(what("read the header"))?;
    let len = parse_stream_header(&header).ok_or_else(|| InitError::Io {
        what: what("the stream disk"),
        source: io::Error::other("no stream header"),
    })?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, dev).take(len));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // `unpack` keeps every entry inside VOL (no `..`, no writing through symlinks).
    archive.unpack(VOL).ctx(what("unpack"))?;
    Ok(())
}
