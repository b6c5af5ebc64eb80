//! The storage flags of `run` (and keys of deployment files), parsed: `-v`, `--tmpfs`,
//! `--read-only`, `--storage-opt size=`.

use std::path::PathBuf;

use hyperxl_contract::mounts::valid_target;

/// Why a storage flag is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed `-v`.
    #[error("invalid volume {0:?}: expected NAME:/PATH[:ro], /HOST/DIR:/PATH:ro or /PATH")]
    Malformed(String),
    /// An option other than `ro`/`rw`.
    #[error("invalid volume {spec:?}: unknown option {option:?} (only ro and rw are known)")]
    UnknownOption {
        /// The flag.
        spec: String,
        /// The option.
        option: String,
    },
    /// A host directory without `:ro`.
    #[error("host directory {0} can only be mounted read-only (add :ro): dom0 never mounts what a guest wrote, so there is no shared read-write directory; use a named volume for data the VM writes")]
    HostDirReadWrite(String),
    /// A relative host path.
    #[error("invalid volume source {0:?}: a host directory must be an absolute path, a volume name has no '/'")]
    RelativeHostPath(String),
    /// A bad target path.
    #[error("invalid mount target {0:?}: must be an absolute path below / without . or .. parts")]
    BadTarget(String),
    /// Malformed `--tmpfs`.
    #[error("invalid --tmpfs {spec:?}: {why}")]
    Tmpfs {
        /// The flag.
        spec: String,
        /// Why.
        why: String,
    },
    /// Malformed `--mount`.
    #[error("invalid --mount {spec:?}: {why}")]
    Mount {
        /// The flag.
        spec: String,
        /// Why.
        why: String,
    },
    /// Malformed `--storage-opt`.
    #[error(
        "invalid --storage-opt {0:?}: the one option is size=SIZE (e.g. size=2g), at least 16m"
    )]
    StorageOpt(String),
}

/// One `-v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeArg {
    /// `NAME:/path[:ro]`: a named volume, created if missing.
    Named {
        /// The volume.
        name: String,
        /// Where in the guest.
        target: String,
        /// `:ro`.
        readonly: bool,
    },
    /// `/path`: a fresh anonymous volume.
    Anonymous {
        /// Where in the guest.
        target: String,
    },
    /// `/host/dir:/path:ro`: a read-only snapshot of a dom0 directory.
    HostDir {
        /// The directory on dom0.
        host: PathBuf,
        /// Where in the guest.
        target: String,
    },
}

impl VolumeArg {
    /// Where it is mounted in the guest.
    pub fn target(&self) -> &str {
        match self {
            VolumeArg::Named { target, .. }
            | VolumeArg::Anonymous { target }
            | VolumeArg::HostDir { target, .. } => target,
        }
    }
}

/// One `--tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsArg {
    /// Where in the guest.
    pub target: String,
    /// Its size limit in bytes.
    pub size: Option<u64>,
    /// Mode of its root.
    pub mode: Option<u32>,
}

/// Everything a VM asks of storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageRequest {
    /// `-v`.
    pub volumes: Vec<VolumeArg>,
    /// `--tmpfs`.
    pub tmpfs: Vec<TmpfsArg>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--storage-opt size=`: the writable layer on a scratch disk of this many bytes.
    pub scratch: Option<u64>,
}

fn target(spec: &str, t: &str) -> Result<String, RequestError> {
    if valid_target(t) {
        Ok(hyperxl_contract::mounts::normal_target(t).to_string())
    } else {
        let _ = spec;
        Err(RequestError::BadTarget(t.to_string()))
    }
}

/// Parses one `-v` as Docker spells it.
pub fn parse_volume(spec: &str) -> Result<VolumeArg, RequestError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, dest, opts) = match parts.as_slice() {
        [dest] => {
            return Ok(VolumeArg::Anonymous {
                target: target(spec, dest)?,
            })
        }
        [source, dest] => (*source, *dest, ""),
        [source, dest, opts] => (*source, *dest, *opts),
        _ => return Err(RequestError::Malformed(spec.to_string())),
    };
    if source.is_empty() || dest.is_empty() {
        return Err(RequestError::Malformed(spec.to_string()));
    }
    let mut readonly = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "readonly" => readonly = true,
            "rw" => readonly = false,
            other => {
                return Err(RequestError::UnknownOption {
                    spec: spec.to_string(),
                    option: other.to_string(),
                })
            }
        }
    }
    let target = target(spec, dest)?;
    if source.starts_with('/') {
        if !readonly {
            return Err(RequestError::HostDirReadWrite(source.to_string()));
        }
        return Ok(VolumeArg::HostDir {
            host: PathBuf::from(source),
            target,
        });
    }
    if source.contains('/') || source.starts_with('.') || source.starts_with('~') {
        return Err(RequestError::RelativeHostPath(source.to_string()));
    }
    Ok(VolumeArg::Named {
        name: source.to_string(),
        target,
        readonly,
    })
}

/// Parses one `--tmpfs /path[:size=N,mode=OCTAL]`.
pub fn parse_tmpfs(spec: &str) -> Result<TmpfsArg, RequestError> {
    let bad = |why: &str| RequestError::Tmpfs {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let (dest, opts) = spec.split_once(':').unwrap_or((spec, ""));
    let target = target(spec, dest)?;
    let mut arg = TmpfsArg {
        target,
        size: None,
        mode: None,
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                let n = super::store::parse_bytes(v)
                    .filter(|n| *n >= 4096)
                    .ok_or_else(|| bad("size must be at least 4k, e.g. size=64m"))?;
                arg.size = Some(n);
            }
            Some(("mode", v)) => {
                let m = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad("mode must be octal, at most 7777"))?;
                arg.mode = Some(m);
            }
            _ if matches!(o, "rw" | "nosuid" | "nodev") => {}
            _ => return Err(bad(&format!("unknown option {o:?} (known: size=, mode=)"))),
        }
    }
    Ok(arg)
}

/// What one `--mount` stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArg {
    /// A `-v`.
    Volume(VolumeArg),
    /// A `--tmpfs`.
    Tmpfs(TmpfsArg),
}

/// Parses one `--mount type=volume|bind|tmpfs,source=..,target=..[,readonly]` (Docker's
/// long form) into the `-v` or `--tmpfs` it stands for.
pub fn parse_mount(spec: &str) -> Result<MountArg, RequestError> {
    let bad = |why: &str| RequestError::Mount {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let (mut kind, mut source, mut target, mut readonly) = ("volume", None, None, false);
    let (mut size, mut mode) = (None, None);
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k {
            "type" => kind = v,
            "source" | "src" => source = Some(v),
            "target" | "dst" | "destination" => target = Some(v),
            "readonly" | "ro" => readonly = matches!(v, "" | "true" | "1"),
            "tmpfs-size" => size = Some(v),
            "tmpfs-mode" => mode = Some(v),
            _ => return Err(bad(&format!("unknown field {k:?}"))),
        }
    }
    let target = target.ok_or_else(|| bad("target= is missing"))?;
    let ro = if readonly { ":ro" } else { "" };
    match (kind, source) {
        ("volume", Some(src)) if !src.is_empty() => {
            parse_volume(&format!("{src}:{target}{ro}")).map(MountArg::Volume)
        }
        ("volume", _) => parse_volume(target).map(MountArg::Volume),
        ("bind", Some(src)) if src.starts_with('/') => {
            parse_volume(&format!("{src}:{target}{ro}")).map(MountArg::Volume)
        }
        ("bind", _) => Err(bad("a bind mount needs an absolute source=")),
        ("tmpfs", None) => {
            let mut opts = Vec::new();
            if let Some(s) = size {
                opts.push(format!("size={s}"));
            }
            if let Some(m) = mode {
                opts.push(format!("mode={m}"));
            }
            parse_tmpfs(&format!("{target}:{}", opts.join(","))).map(MountArg::Tmpfs)
        }
        ("tmpfs", Some(_)) => Err(bad("a tmpfs has no source")),
        (other, _) => Err(bad(&format!(
            "unknown type {other:?} (volume, bind, tmpfs)"
        ))),
    }
}

/// Parses `--storage-opt size=SIZE`.
pub fn parse_storage_opt(opt: &str) -> Result<u64, RequestError> {
    opt.strip_prefix("size=")
        .and_then(|v| super::store::parse_size(v).ok())
        .ok_or_else(|| RequestError::StorageOpt(opt.to_string()))
}

/// The request made of `run`'s flags.
pub fn from_flags(
    volumes: &[String],
    tmpfs: &[String],
    read_only: bool,
    storage_opts: &[String],
) -> Result<StorageRequest, RequestError> {
    let mut scratch = None;
    for o in storage_opts {
        scratch = Some(parse_storage_opt(o)?);
    }
    Ok(StorageRequest {
        volumes: volumes
            .iter()
            .map(|v| parse_volume(v))
            .collect::<Result<_, _>>()?,
        tmpfs: tmpfs
            .iter()
            .map(|t| parse_tmpfs(t))
            .collect::<Result<_, _>>()?,
        read_only,
        scratch,
    })
}

/// Adds `--mount` entries to a request.
pub fn add_mounts(req: &mut StorageRequest, mounts: &[String]) -> Result<(), RequestError> {
    for m in mounts {
        match parse_mount(m)? {
            MountArg::Volume(v) => req.volumes.push(v),
            MountArg::Tmpfs(t) => req.tmpfs.push(t),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        assert_eq!(
            parse_volume("data:/data").unwrap(),
            VolumeArg::Named {
                name: "data".into(),
                target: "/data".into(),
                readonly: false
            }
        );
        assert_eq!(
            parse_volume("data:/data/:ro").unwrap(),
            VolumeArg::Named {
                name: "data".into(),
                target: "/data".into(),
                readonly: true
            }
        );
        assert_eq!(
            parse_volume("/var/lib/x").unwrap(),
            VolumeArg::Anonymous {
                target: "/var/lib/x".into()
            }
        );
        assert_eq!(
            parse_volume("/srv/conf:/etc/app:ro").unwrap(),
            VolumeArg::HostDir {
                host: "/srv/conf".into(),
                target: "/etc/app".into()
            }
        );
    }

    #[test]
    fn bad_volumes() {
        assert!(matches!(
            parse_volume("/srv/conf:/etc/app"),
            Err(RequestError::HostDirReadWrite(_))
        ));
        assert!(matches!(
            parse_volume("/srv/conf:/etc/app:rw"),
            Err(RequestError::HostDirReadWrite(_))
        ));
        assert!(matches!(
            parse_volume("data:/d:ro,z"),
            Err(RequestError::UnknownOption { .. })
        ));
        assert!(matches!(
            parse_volume("./conf:/etc/app:ro"),
            Err(RequestError::RelativeHostPath(_))
        ));
        assert!(matches!(
            parse_volume("a/b:/d"),
            Err(RequestError::RelativeHostPath(_))
        ));
        assert!(matches!(
            parse_volume("data:rel"),
            Err(RequestError::BadTarget(_))
        ));
        assert!(matches!(
            parse_volume("data:/"),
            Err(RequestError::BadTarget(_))
        ));
        assert!(matches!(
            parse_volume("data:/a/../etc"),
            Err(RequestError::BadTarget(_))
        ));
        for m in ["", "a:b:c:d", ":/d", "data:"] {
            assert!(parse_volume(m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn tmpfs() {
        assert_eq!(
            parse_tmpfs("/tmp").unwrap(),
            TmpfsArg {
                target: "/tmp".into(),
                size: None,
                mode: None
            }
        );
        assert_eq!(
            parse_tmpfs("/x:size=1m,mode=700").unwrap(),
            TmpfsArg {
                target: "/x".into(),
                size: Some(1 << 20),
                mode: Some(0o700)
            }
        );
        for bad in [
            "x",
            "/x:size=",
            "/x:size=1",
            "/x:mode=99",
            "/x:exec",
            "/:size=1m",
        ] {
            assert!(parse_tmpfs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts() {
        assert_eq!(
            parse_mount("type=volume,source=data,target=/d,readonly").unwrap(),
            MountArg::Volume(VolumeArg::Named {
                name: "data".into(),
                target: "/d".into(),
                readonly: true
            })
        );
        assert_eq!(
            parse_mount("src=data,dst=/d").unwrap(),
            MountArg::Volume(VolumeArg::Named {
                name: "data".into(),
                target: "/d".into(),
                readonly: false
            })
        );
        assert_eq!(
            parse_mount("type=volume,target=/d").unwrap(),
            MountArg::Volume(VolumeArg::Anonymous {
                target: "/d".into()
            })
        );
        assert_eq!(
            parse_mount("type=bind,source=/srv,target=/s,readonly=true").unwrap(),
            MountArg::Volume(VolumeArg::HostDir {
                host: "/srv".into(),
                target: "/s".into()
            })
        );
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700").unwrap(),
            MountArg::Tmpfs(TmpfsArg {
                target: "/t".into(),
                size: Some(1 << 20),
                mode: Some(0o700)
            })
        );
        assert!(matches!(
            parse_mount("type=bind,source=/srv,target=/s"),
            Err(RequestError::HostDirReadWrite(_))
        ));
        for bad in [
            "type=nfs,target=/d",
            "source=data",
            "type=bind,source=rel,target=/d,ro",
            "type=tmpfs,source=x,target=/t",
            "type=volume,target=/d,bogus=1",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_opt() {
        assert_eq!(parse_storage_opt("size=1g"), Ok(1 << 30));
        for bad in ["size=1m", "size=", "quota=1g", "1g"] {
            assert!(parse_storage_opt(bad).is_err(), "{bad}");
        }
    }
}
