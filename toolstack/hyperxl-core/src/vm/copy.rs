//! `hyperxl cp`: files between dom0 and a running VM, as tar streams over an exec
//! session whose guest half is the init's own tar code ([`Builtin`]), so it works on
//! an image without `tar`. What a guest sends is unpacked by [`hyperxl_tarcopy::unpack`]
//! with [`Limits::from_guest`]: nothing is written outside the destination, no symlink
//! is followed, set-id bits are dropped, and the size is bounded.

use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{bail, Context as _};
use hyperxl_contract::control::{Builtin, CopyPlace, ExecRequest};
use hyperxl_tarcopy::{Limits, Place};

use super::exec::{exec_with, Capture, ExecOptions, Streams};

/// One side of a copy, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A path in VM `vm` (relative paths are taken from `/`).
    Vm {
        /// The VM's name or id.
        vm: String,
        /// The path inside it, absolute.
        path: String,
    },
    /// A path here; `-` is a tar stream on stdin or stdout.
    Local(String),
}

impl Endpoint {
    /// Parses `docker cp`'s syntax: `VM:PATH` when a `:` comes before any `/`; write a
    /// local path with a colon as `./a:b`.
    pub fn parse(arg: &str) -> Endpoint {
        match arg.split_once(':') {
            Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => Endpoint::Vm {
                vm: vm.to_string(),
                path: if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                },
            },
            _ => Endpoint::Local(arg.to_string()),
        }
    }
}

/// How a source path asks to be placed: `SRC/.` copies a directory's contents.
fn place_of(src: &str) -> Place {
    if src.ends_with("/.") {
        Place::Contents
    } else {
        Place::Named
    }
}

/// A pipe whose ends no process we start inherits (its end must come when ours close).
fn pipe() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let (r, w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    Ok((r.into(), w.into()))
}

/// `cp VM:SRC DEST`: DEST `-` writes the tar stream to stdout.
pub fn copy_from(state_dir: &Path, vm: &str, src: &str, dest: &str) -> anyhow::Result<()> {
    let opts = ExecOptions {
        request: ExecRequest::builtin(Builtin::CopyOut {
            path: src.trim_end_matches("/.").to_string(),
        }),
        interactive: false,
        detach_keys: false,
    };
    let captured = Capture::new(4096);
    if dest == "-" {
        let streams = Streams {
            stderr: Some(Box::new(captured.clone())),
            ..Streams::default()
        };
        let code = exec_with(state_dir, vm, &opts, streams)?;
        if code != 0 {
            bail!("copying {vm}:{src}: {}", captured.line());
        }
        return Ok(());
    }
    let (r, w) = pipe()?;
    let dest_path = Path::new(dest).to_path_buf();
    let place = place_of(src);
    // The name we asked for: the guest does not get to choose it.
    let top = hyperxl_tarcopy::top_name(Path::new(src));
    let unpacker = std::thread::Builder::new()
        .name("unpack".into())
        .spawn(move || {
            let input = std::io::BufReader::with_capacity(64 << 10, r);
            hyperxl_tarcopy::unpack(input, &dest_path, place, Some(&top), &Limits::from_guest())
        })
        .context("starting the unpack thread")?;
    let streams = Streams {
        stdout: Some(Box::new(w)),
        stderr: Some(Box::new(captured.clone())),
        ..Streams::default()
    };
    // The session's end drops the pipe's write end: the unpacker then reads the end.
    let session = exec_with(state_dir, vm, &opts, streams);
    let unpacked = unpacker
        .join()
        .map_err(|_| anyhow::anyhow!("the unpack thread panicked"))?;
    // What we refused comes first, whatever the guest said or did then; then a
    // failed session; then the guest's own complaint (it found nothing to send).
    if let Err(e @ hyperxl_tarcopy::CopyError::Refused(_)) = unpacked {
        return Err(e).with_context(|| format!("copying {vm}:{src} to {dest}"));
    }
    let code = session?;
    match (code, unpacked) {
        (0, Ok(_)) => Ok(()),
        (c, _) if c != 0 && !captured.line().is_empty() => {
            bail!("copying {vm}:{src}: {}", captured.line())
        }
        (_, Err(e)) => Err(e).with_context(|| format!("copying {vm}:{src} to {dest}")),
        (c, Ok(_)) => bail!("copying {vm}:{src}: the VM's copy ended with code {c}"),
    }
}

/// `cp SRC VM:DEST`: SRC `-` reads a tar stream from stdin, unpacked into directory
/// DEST as it is.
pub fn copy_to(state_dir: &Path, src: &str, vm: &str, dest: &str) -> anyhow::Result<()> {
    let captured = Capture::new(4096);
    let place = match src {
        "-" => CopyPlace::Into,
        s if s.ends_with("/.") => CopyPlace::Contents,
        _ => CopyPlace::Named,
    };
    let opts = ExecOptions {
        request: ExecRequest::builtin(Builtin::CopyIn {
            path: dest.to_string(),
            place,
        }),
        interactive: true,
        detach_keys: false,
    };
    let (streams, packer) = if src == "-" {
        let streams = Streams {
            stderr: Some(Box::new(captured.clone())),
            ..Streams::default()
        };
        (streams, None)
    } else {
        let src_path = Path::new(src.trim_end_matches("/.")).to_path_buf();
        std::fs::symlink_metadata(&src_path).with_context(|| src.to_string())?;
        let (r, w) = pipe()?;
        let packer = std::thread::Builder::new()
            .name("pack".into())
            .spawn(move || {
                let out = std::io::BufWriter::with_capacity(64 << 10, w);
                hyperxl_tarcopy::pack(&src_path, out)
            })
            .context("starting the pack thread")?;
        let streams = Streams {
            stdin: Some(r),
            stderr: Some(Box::new(captured.clone())),
            ..Streams::default()
        };
        (streams, Some(packer))
    };
    // The session's end drops the pipe's read end, so a packer still writing stops.
    let code = exec_with(state_dir, vm, &opts, streams)?;
    if let Some(p) = packer {
        let packed = p
            .join()
            .map_err(|_| anyhow::anyhow!("the pack thread panicked"))?;
        // A local read error is the cause of whatever the guest then said; a broken
        // pipe is only the guest's end closing first.
        let broken_pipe = matches!(&packed, Err(hyperxl_tarcopy::CopyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe);
        if code != 0 && broken_pipe {
            bail!("copying to {vm}:{dest}: {}", captured.line());
        }
        let stats = packed.with_context(|| format!("reading {src}"))?;
        if stats.skipped > 0 {
            eprintln!(
                "hyperxl: left out {} devices, FIFOs or sockets under {src}",
                stats.skipped
            );
        }
    }
    if code != 0 {
        bail!("copying to {vm}:{dest}: {}", captured.line());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_docker_cp() {
        let vm = |vm: &str, path: &str| Endpoint::Vm {
            vm: vm.into(),
            path: path.into(),
        };
        assert_eq!(Endpoint::parse("web:/etc/hosts"), vm("web", "/etc/hosts"));
        assert_eq!(Endpoint::parse("web:etc"), vm("web", "/etc"));
        assert_eq!(Endpoint::parse("web:"), vm("web", "/"));
        assert_eq!(Endpoint::parse("./a:b"), Endpoint::Local("./a:b".into()));
        assert_eq!(Endpoint::parse("/x/y:z"), Endpoint::Local("/x/y:z".into()));
        assert_eq!(Endpoint::parse(":x"), Endpoint::Local(":x".into()));
        assert_eq!(Endpoint::parse("-"), Endpoint::Local("-".into()));
    }
}
