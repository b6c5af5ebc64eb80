//! Tar streams for `hyperxl cp`, the same code on both sides of the control channel:
//! [`pack`] writes a file, symlink or directory tree as a tar stream with one top-level
//! entry; [`unpack`] puts such a stream where `docker cp` would, treating it as hostile.
//! dom0 unpacks what a guest sends (`cp VM:SRC DEST`); the guest init unpacks what dom0
//! sends (`cp SRC VM:DEST`) and packs what dom0 asks for, so `cp` needs no `tar` in the
//! image.
//!
//! # What a stream can do on unpack
//! Nothing outside the destination. Every entry name is split into components and
//! refused if absolute, if any component is `..`, empty after `.`s, over 255 bytes, or
//! if it has a NUL; every entry must sit under the stream's first (top) entry. Every
//! write goes through a directory opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from the destination's own directory, so a symlink, whether the
//! stream made it or it was there before, is never followed, and the last component is
//! created with `O_EXCL | O_NOFOLLOW` after an old non-directory in its place was
//! removed (so nothing is written through an old symlink or hard link). Only
//! directories, regular files and symlinks are created (symlinks are stored as they
//! are, never followed here); hard links, devices, FIFOs and sparse files are refused.
//! Files and directories get the stream's permission bits (set-id and sticky bits only
//! with [`Limits::keep_special_bits`]) and modification time, and are owned by whoever
//! unpacks. The total file bytes and the number of entries are bounded
//! ([`Limits`]), and GNU long-name and PAX records over their limits are refused before
//! the tar parser reads them ([`guard`]).

pub mod guard;
pub mod text;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use guard::{Guard, HeaderError, RecordLimits};

/// Bytes of directory names [`unpack`] keeps to set their modes at the end.
const MAX_DIR_BYTES: usize = 64 << 20;

/// Bounds on what [`unpack`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of file data.
    pub max_bytes: u64,
    /// Entries (files, directories, symlinks).
    pub max_entries: u64,
    /// Keep set-uid, set-gid and sticky bits (the guest, for the user's own files);
    /// dom0 drops them from what a guest sends.
    pub keep_special_bits: bool,
    /// GNU long-name/long-link and PAX record limits.
    pub records: RecordLimits,
}

impl Limits {
    /// Limits for a stream from a guest into dom0: 16 GiB, a million entries, no set-id
    /// bits.
    pub fn from_guest() -> Limits {
        Limits {
            max_bytes: 16 << 30,
            max_entries: 1 << 20,
            keep_special_bits: false,
            records: RecordLimits {
                name: 64 << 10,
                pax: 1 << 20,
            },
        }
    }

    /// Limits for a stream from dom0 into the guest (the user's own files).
    pub fn into_guest() -> Limits {
        Limits {
            keep_special_bits: true,
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
            ..Limits::from_guest()
        }
    }
}

/// Where [`unpack`] puts a stream, as `docker cp` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The stream's top entry becomes `DEST/TOP` if `DEST` is a directory, else `DEST`
    /// itself (created, or replaced if it is a file and the top entry is one too).
    Named,
    /// `SRC/.`: the top directory's contents go into `DEST` (created if missing).
    Contents,
    /// `cp - VM:DEST`: any tar stream, its entries as they are, into directory `DEST`.
    Into,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A source path could not be read.
    #[error("{path}: {source}")]
    Source {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The destination is missing or unusable.
    #[error("{path}: {reason}")]
    Destination {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The stream is not one [`unpack`] accepts (see the module docs).
    #[error("refused: {0}")]
    Refused(String),
    /// The stream ended before its first entry (the sender found nothing to send).
    #[error("the stream holds nothing")]
    Empty,
    /// Writing the stream (pack) or an entry (unpack) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CopyError {
    let what = what.into();
    move |source| CopyError::Io { what, source }
}

fn errno_err(what: impl Into<String>) -> impl FnOnce(Errno) -> CopyError {
    let what = what.into();
    move |e| CopyError::Io {
        what,
        source: io::Error::from(e),
    }
}

/// What [`pack`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    /// Entries written.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Devices, FIFOs and sockets left out.
    pub skipped: u64,
}

/// The name a source's top entry gets: its last component (`/` for the root itself is
/// `root`, as there is no other).
pub fn top_name(src: &Path) -> String {
    let trimmed = src.as_os_str().as_bytes();
    let trimmed = trimmed.strip_suffix(b"/.").unwrap_or(trimmed);
    let name = Path::new(OsStr::from_bytes(trimmed))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(n) if n != "." && n != ".." => n,
        _ => "root".to_string(),
    }
}

/// Writes `src` (not followed if it is a symlink) as a tar stream whose top entry is
/// named [`top_name`]`(src)`; a directory's tree follows in name order, symlinks inside
/// it are stored, not followed. Devices, FIFOs and sockets are left out and counted.
///
/// The tree is walked by descriptor: each entry is looked at (`fstatat`, no follow) and
/// opened (`openat`, `O_NOFOLLOW | O_NONBLOCK`) relative to its directory's descriptor,
/// and the open descriptor must still be what was looked at. So a directory swapped for
/// a symlink while the walk runs is never followed out of `src`, and a file swapped for
/// a FIFO is never waited on.
pub fn pack<W: Write>(src: &Path, out: W) -> Result<PackStats, CopyError> {
    let shown = src.display().to_string();
    let source_err = |path: &str| {
        let path = text::sanitise(path);
        move |e: Errno| CopyError::Source {
            path,
            source: io::Error::from(e),
        }
    };
    let trimmed = src.as_os_str().as_bytes();
    let trimmed = trimmed.strip_suffix(b"/.").unwrap_or(trimmed);
    let src = Path::new(OsStr::from_bytes(trimmed));
    // The source itself, in the directory the user named (their path, theirs to follow).
    let (parent, name) = match (src.parent(), src.file_name()) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n.to_os_string(),
        ),
        // `/`, `.`, `..`: open it as a directory of its own.
        _ => (src, std::ffi::OsString::from(".")),
    };
    let parent_fd = open_dir(parent).map_err(|e| match e {
        CopyError::Destination { path, reason } => CopyError::Source {
            path,
            source: io::Error::other(reason),
        },
        e => e,
    })?;
    let mut tar = tar::Builder::new(out);
    let mut stats = PackStats::default();
    // (the directory it is in, its name there, its name in the stream), depth first.
    let mut todo = vec![(
        std::rc::Rc::new(parent_fd),
        name,
        PathBuf::from(top_name(src)),
    )];
    while let Some((dir, name, in_stream)) = todo.pop() {
        let what = format!("{shown}: {}", in_stream.display());
        let st = fstatat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(source_err(&what))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let mut header = tar::Header::new_gnu();
        header.set_mode(st.st_mode & 0o7777);
        header.set_uid(u64::from(st.st_uid));
        header.set_gid(u64::from(st.st_gid));
        header.set_mtime(st.st_mtime.max(0) as u64);
        header.set_size(0);
        let write_err = io_err(format!(
            "writing {}",
            text::sanitise(&in_stream.to_string_lossy())
        ));
        match kind {
            SFlag::S_IFLNK => {
                let target = readlinkat(Some(dir.as_raw_fd()), name.as_os_str())
                    .map_err(source_err(&what))?;
                header.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut header, &in_stream, &target)
                    .map_err(write_err)?;
            }
            SFlag::S_IFDIR | SFlag::S_IFREG => {
                let flags = OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC
                    | if kind == SFlag::S_IFDIR {
                        OFlag::O_DIRECTORY
                    } else {
                        OFlag::empty()
                    };
                let fd = openat(
                    Some(dir.as_raw_fd()),
                    name.as_os_str(),
                    flags,
                    Mode::empty(),
                )
                .map_err(source_err(&what))?;
                // SAFETY: openat returned a new descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let now = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(source_err(&what))?;
                if (now.st_ino, now.st_dev, now.st_mode & libc::S_IFMT)
                    != (st.st_ino, st.st_dev, st.st_mode & libc::S_IFMT)
                {
                    return Err(CopyError::Source {
                        path: text::sanitise(&what),
                        source: io::Error::other("changed while it was copied"),
                    });
                }
                if kind == SFlag::S_IFDIR {
                    header.set_entry_type(tar::EntryType::Directory);
                    tar.append_data(&mut header, &in_stream, io::empty())
                        .map_err(write_err)?;
                    let dup = fd.try_clone().map_err(|e| CopyError::Source {
                        path: text::sanitise(&what),
                        source: e,
                    })?;
                    let mut listing =
                        nix::dir::Dir::from_fd(dup.into_raw_fd()).map_err(source_err(&what))?;
                    let mut children: Vec<std::ffi::OsString> = Vec::new();
                    for entry in listing.iter() {
                        let entry = entry.map_err(source_err(&what))?;
                        let n = entry.file_name().to_bytes();
                        if n != b"." && n != b".." {
                            children.push(OsStr::from_bytes(n).to_os_string());
                        }
                    }
                    children.sort();
                    let this = std::rc::Rc::new(fd);
                    for c in children.into_iter().rev() {
                        let child_name = in_stream.join(&c);
                        todo.push((this.clone(), c, child_name));
                    }
                } else {
                    // The size at open: a file that grows or shrinks meanwhile is cut
                    // or padded so the stream stays well formed.
                    let size = now.st_size.max(0) as u64;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    let file = File::from(fd);
                    let data = file.take(size).chain(io::repeat(0)).take(size);
                    tar.append_data(&mut header, &in_stream, data)
                        .map_err(write_err)?;
                    stats.bytes += size;
                }
            }
            _ => {
                stats.skipped += 1;
                continue;
            }
        }
        stats.entries += 1;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err("ending the stream"))?;
    Ok(stats)
}

/// What [`unpack`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries created.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// An entry name checked and split into components (see the module docs).
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, CopyError> {
    let shown = || text::sanitise_bytes(raw);
    if raw.starts_with(b"/") {
        return Err(CopyError::Refused(format!("absolute name {:?}", shown())));
    }
    if raw.contains(&0) || raw.len() > 4096 {
        return Err(CopyError::Refused(format!("bad name {:?}", shown())));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(CopyError::Refused(format!("name with '..': {:?}", shown()))),
            c if c.len() > 255 => {
                return Err(CopyError::Refused(format!(
                    "name component too long: {:?}",
                    shown()
                )))
            }
            c => out.push(c.to_vec()),
        }
    }
    if out.is_empty() {
        return Err(CopyError::Refused(format!("empty name {:?}", shown())));
    }
    Ok(out)
}

/// Opens `rel` (components) under `root` as a directory, never following a symlink and
/// never leaving `root`.
fn open_dir_beneath(root: &OwnedFd, rel: &[Vec<u8>]) -> Result<OwnedFd, Errno> {
    let path = if rel.is_empty() {
        b".".to_vec()
    } else {
        rel.join(&b'/')
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(root.as_raw_fd(), OsStr::from_bytes(&path), how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file type of `name` in `dir`, not following a symlink; None if it is not there.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<SFlag>, Errno> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the stream's entries land: the directory they go under, and what the top
/// entry's name becomes there.
struct Target {
    root: OwnedFd,
    /// Replace the top component with this; None: keep it. With [`Place::Contents`]
    /// into an existing directory the top component is dropped (`Some(empty)`).
    top: Option<Vec<u8>>,
}

fn open_dir(path: &Path) -> Result<OwnedFd, CopyError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CopyError::Destination {
        path: path.display().to_string(),
        reason: io::Error::from(e).to_string(),
    })?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Decides where a stream whose top entry is (or is not) a directory goes (the rules of
/// `docker cp`).
fn target(dest: &Path, place: Place, top_is_dir: bool) -> Result<Target, CopyError> {
    let shown = dest.display().to_string();
    let refuse = |reason: &str| CopyError::Destination {
        path: shown.clone(),
        reason: reason.to_string(),
    };
    let meta = match std::fs::metadata(dest) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(refuse(&e.to_string())),
    };
    let dest_is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
    if place == Place::Into {
        if !dest_is_dir {
            return Err(refuse("not a directory (a stream is unpacked into one)"));
        }
        return Ok(Target {
            root: open_dir(dest)?,
            top: None,
        });
    }
    if place == Place::Contents && !top_is_dir {
        return Err(CopyError::Refused(
            "the source is not a directory (SRC/. copies a directory's contents)".into(),
        ));
    }
    if dest_is_dir {
        let top = (place == Place::Contents).then(Vec::new);
        return Ok(Target {
            root: open_dir(dest)?,
            top,
        });
    }
    if meta.is_some() && top_is_dir {
        return Err(refuse("cannot copy a directory over a file"));
    }
    if meta.is_none() && !top_is_dir && dest.as_os_str().as_bytes().ends_with(b"/") {
        return Err(refuse("no such directory"));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| refuse("names no file"))?
        .as_bytes()
        .to_vec();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Target {
        root: open_dir(&parent)?,
        top: Some(name),
    })
}

/// Unpacks `stream` at `dest` as [`Place`] says, within `limits`; see the module docs.
/// With `top`, the stream's top entry must have that name (dom0 names what it asked a
/// guest for: a guest must not choose the name its files get in an existing directory,
/// such as `.bashrc` in a home directory).
pub fn unpack<R: Read>(
    stream: R,
    dest: &Path,
    place: Place,
    top: Option<&str>,
    limits: &Limits,
) -> Result<UnpackStats, CopyError> {
    let mut archive = tar::Archive::new(Guard::new(stream, limits.records));
    let refused_io = |e: io::Error| match HeaderError::from_io(&e) {
        Some(h) => CopyError::Refused(h.to_string()),
        // The tar crate's messages quote entry names.
        None => CopyError::Refused(text::sanitise(&format!("not a tar stream: {e}"))),
    };
    let mut place_at: Option<Target> = None;
    let expected_top = top;
    let mut top: Option<Vec<u8>> = None;
    let mut stats = UnpackStats::default();
    // Directories' modes and times, set at the end (a read-only directory must still
    // take its entries), once per directory; their paths are bounded in bytes.
    let mut dirs: std::collections::BTreeMap<Vec<u8>, (u32, i64)> = Default::default();
    let mut dir_bytes = 0usize;
    for entry in archive.entries().map_err(refused_io)? {
        let mut entry = entry.map_err(refused_io)?;
        let header = entry.header();
        let etype = header.entry_type();
        let mode = header.mode().map_err(refused_io)?;
        let mtime = header.mtime().map_err(refused_io)? as i64;
        let size = header.entry_size().map_err(refused_io)?;
        let raw = entry.path_bytes().into_owned();
        let mut comps = components(&raw)?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(CopyError::Refused(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        if place != Place::Into {
            match &top {
                None if comps.len() == 1 => {
                    if expected_top.is_some_and(|t| t.as_bytes() != comps[0].as_slice()) {
                        return Err(CopyError::Refused(format!(
                            "the stream's top entry is {:?}, not {:?} as asked",
                            text::sanitise_bytes(&comps[0]),
                            expected_top.unwrap_or_default()
                        )));
                    }
                    top = Some(comps[0].clone())
                }
                None => {
                    return Err(CopyError::Refused(
                        "the first entry is not the top of the stream".into(),
                    ))
                }
                Some(t) if comps[0] != *t => {
                    return Err(CopyError::Refused(format!(
                        "{:?} is outside the stream's top entry",
                        text::sanitise_bytes(&raw)
                    )))
                }
                Some(_) => {}
            }
        }
        if place_at.is_none() {
            place_at = Some(target(dest, place, etype == tar::EntryType::Directory)?);
        }
        let t = place_at.as_ref().expect("set above");
        match &t.top {
            Some(name) if name.is_empty() => {
                comps.remove(0);
            }
            Some(name) => comps[0] = name.clone(),
            None => {}
        }
        let shown = text::sanitise_bytes(&comps.join(&b'/'));
        let Some((name, parent)) = comps.split_last() else {
            // The top directory itself, copied as contents into an existing one.
            continue;
        };
        let name = OsStr::from_bytes(name);
        let dir = open_dir_beneath(&t.root, parent).map_err(|e| match e {
            Errno::ENOENT => CopyError::Refused(format!("{shown}: comes before its directory")),
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => CopyError::Refused(format!(
                "{shown}: its directory is not a directory in the destination"
            )),
            e => CopyError::Io {
                what: shown.clone(),
                source: io::Error::from(e),
            },
        })?;
        let existing = kind_at(&dir, name).map_err(errno_err(shown.clone()))?;
        let perm_mask = if limits.keep_special_bits {
            0o7777
        } else {
            0o777
        };
        match etype {
            tar::EntryType::Directory => {
                match existing {
                    Some(SFlag::S_IFDIR) => {}
                    Some(_) => {
                        unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                            .map_err(errno_err(shown.clone()))?;
                        mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700))
                            .map_err(errno_err(shown.clone()))?;
                    }
                    None => mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700))
                        .map_err(errno_err(shown.clone()))?,
                }
                let mut full = parent.to_vec();
                full.push(name.as_bytes().to_vec());
                let key = full.join(&b'/');
                if !dirs.contains_key(&key) {
                    dir_bytes += key.len() + 64;
                    if dir_bytes > MAX_DIR_BYTES {
                        return Err(CopyError::Refused(
                            "too many directories (their names over 64 MiB)".into(),
                        ));
                    }
                }
                dirs.insert(key, (mode & perm_mask, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                stats.bytes = stats.bytes.saturating_add(size);
                if stats.bytes > limits.max_bytes {
                    return Err(CopyError::Refused(format!(
                        "more than {} bytes of files",
                        limits.max_bytes
                    )));
                }
                replace_non_dir(&dir, name, existing, &shown)?;
                let fd = openat(
                    Some(dir.as_raw_fd()),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno_err(shown.clone()))?;
                // SAFETY: openat returned a new descriptor that nothing else owns.
                let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(|e| {
                    match HeaderError::from_io(&e) {
                        Some(h) => CopyError::Refused(h.to_string()),
                        None => CopyError::Io {
                            what: shown.clone(),
                            source: e,
                        },
                    }
                })?;
                if copied != size {
                    return Err(CopyError::Refused(format!(
                        "{shown}: the stream ended inside it"
                    )));
                }
                fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode & perm_mask))
                    .map_err(errno_err(shown.clone()))?;
                let t = TimeSpec::new(mtime, 0);
                futimens(file.as_fd().as_raw_fd(), &t, &t).map_err(errno_err(shown.clone()))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        CopyError::Refused(format!("{shown}: a symlink without a target"))
                    })?
                    .into_owned();
                if link.is_empty() || link.contains(&0) || link.len() > 4096 {
                    return Err(CopyError::Refused(format!("{shown}: bad symlink target")));
                }
                replace_non_dir(&dir, name, existing, &shown)?;
                symlinkat(OsStr::from_bytes(&link), Some(dir.as_raw_fd()), name)
                    .map_err(errno_err(shown.clone()))?;
            }
            other => {
                return Err(CopyError::Refused(format!(
                "{shown}: {other:?} entries are not copied (only files, directories and symlinks)"
            )))
            }
        }
    }
    let Some(t) = place_at else {
        return Err(CopyError::Empty);
    };
    // Deepest first, so a directory made read-only does not stop its children's updates.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by_key(|(k, _)| std::cmp::Reverse(k.iter().filter(|&&b| b == b'/').count()));
    for (key, (mode, mtime)) in dirs {
        let shown = text::sanitise_bytes(&key);
        let rel: Vec<Vec<u8>> = key.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        let fd = open_dir_beneath(&t.root, &rel).map_err(errno_err(shown.clone()))?;
        let ts = TimeSpec::new(mtime, 0);
        futimens(fd.as_raw_fd(), &ts, &ts).map_err(errno_err(shown.clone()))?;
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(errno_err(shown))?;
    }
    Ok(stats)
}

/// Removes what is at `name` unless it is a directory (an error then): a new file or
/// symlink is created in its place, never written through it.
fn replace_non_dir(
    dir: &OwnedFd,
    name: &OsStr,
    existing: Option<SFlag>,
    shown: &str,
) -> Result<(), CopyError> {
    match existing {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => Err(CopyError::Destination {
            path: shown.to_string(),
            reason: "is a directory".into(),
        }),
        Some(_) => unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
            .map_err(errno_err(shown.to_string())),
    }
}

#[cfg(test)]
mod tests;
