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
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use guard::{Guard, HeaderError, RecordLimits};

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
pub fn pack<W: Write>(src: &Path, out: W) -> Result<PackStats, CopyError> {
    let source_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| CopyError::Source { path, source }
    };
    let top = top_name(src);
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut stats = PackStats::default();
    // (path on disk, name in the stream), depth first, in name order.
    let mut todo = vec![(src.to_path_buf(), PathBuf::from(&top))];
    while let Some((path, name)) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(source_err(&path))?;
        let ft = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let write_err = io_err(format!("writing {}", name.display()));
        if ft.is_dir() {
            header.set_size(0);
            tar.append_data(&mut header, &name, io::empty())
                .map_err(write_err)?;
            let mut children: Vec<_> = std::fs::read_dir(&path)
                .map_err(source_err(&path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(source_err(&path))?;
            children.sort();
            for c in children.into_iter().rev() {
                todo.push((path.join(&c), name.join(&c)));
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(source_err(&path))?;
            header.set_size(0);
            tar.append_link(&mut header, &name, &target)
                .map_err(write_err)?;
        } else if ft.is_file() {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags_nofollow()
                .open(&path)
                .map_err(source_err(&path))?;
            // The size at open: a file that grows or shrinks meanwhile is cut or padded
            // so the stream stays well formed.
            let size = file.metadata().map_err(source_err(&path))?.len();
            header.set_size(size);
            let data = file.take(size).chain(io::repeat(0)).take(size);
            tar.append_data(&mut header, &name, data)
                .map_err(write_err)?;
            stats.bytes += size;
        } else {
            stats.skipped += 1;
            continue;
        }
        stats.entries += 1;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err("ending the stream"))?;
    Ok(stats)
}

/// `OpenOptions` with `O_NOFOLLOW`.
trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
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
    let shown = || String::from_utf8_lossy(raw).into_owned();
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
pub fn unpack<R: Read>(
    stream: R,
    dest: &Path,
    place: Place,
    limits: &Limits,
) -> Result<UnpackStats, CopyError> {
    let mut archive = tar::Archive::new(Guard::new(stream, limits.records));
    let refused_io = |e: io::Error| match HeaderError::from_io(&e) {
        Some(h) => CopyError::Refused(h.to_string()),
        None => CopyError::Refused(format!("not a tar stream: {e}")),
    };
    let mut place_at: Option<Target> = None;
    let mut top: Option<Vec<u8>> = None;
    let mut stats = UnpackStats::default();
    // Directories' modes and times, set at the end (a read-only directory must still
    // take its entries).
    let mut dirs: Vec<(Vec<Vec<u8>>, u32, i64)> = Vec::new();
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
                None if comps.len() == 1 => top = Some(comps[0].clone()),
                None => {
                    return Err(CopyError::Refused(
                        "the first entry is not the top of the stream".into(),
                    ))
                }
                Some(t) if comps[0] != *t => {
                    return Err(CopyError::Refused(format!(
                        "{:?} is outside the stream's top entry",
                        String::from_utf8_lossy(&raw)
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
        let shown = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
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
                dirs.push((full, mode & perm_mask, mtime));
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
        return Err(CopyError::Refused("an empty stream".into()));
    };
    // Deepest first, so a directory made read-only does not stop its children's updates.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (rel, mode, mtime) in dirs {
        let shown = String::from_utf8_lossy(&rel.join(&b'/')).into_owned();
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
