//! Typed errors of the xenstore client.

use std::fmt;
use std::io;

/// An errno name returned by xenstored in an `XS_ERROR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsErrno {
    /// `ENOENT`: no such node.
    NoEntry,
    /// `EACCES`: permission denied.
    Access,
    /// `EEXIST`: node exists.
    Exists,
    /// `EAGAIN`: transaction conflict, retry it.
    Again,
    /// `EINVAL`: bad argument.
    Invalid,
    /// `ENOSPC`: quota exceeded.
    NoSpace,
    /// `EISDIR`: is a directory.
    IsDir,
    /// `EBUSY`: busy.
    Busy,
    /// `EROFS`: read-only.
    ReadOnly,
    /// `ENOSYS`: not implemented.
    NoSys,
    /// `EIO`: I/O error.
    Io,
    /// `E2BIG`: argument too long.
    TooBig,
    /// `EQUOTA`: domain quota exceeded.
    Quota,
    /// Any other name, kept verbatim.
    Unknown(String),
}

impl XsErrno {
    /// Maps an errno name as sent by xenstored.
    pub fn from_name(name: &str) -> XsErrno {
        match name {
            "ENOENT" => XsErrno::NoEntry,
            "EACCES" => XsErrno::Access,
            "EEXIST" => XsErrno::Exists,
            "EAGAIN" => XsErrno::Again,
            "EINVAL" => XsErrno::Invalid,
            "ENOSPC" => XsErrno::NoSpace,
            "EISDIR" => XsErrno::IsDir,
            "EBUSY" => XsErrno::Busy,
            "EROFS" => XsErrno::ReadOnly,
            "ENOSYS" => XsErrno::NoSys,
            "EIO" => XsErrno::Io,
            "E2BIG" => XsErrno::TooBig,
            "EQUOTA" => XsErrno::Quota,
            other => XsErrno::Unknown(other.to_string()),
        }
    }

    /// The errno name as xenstored spells it.
    pub fn name(&self) -> &str {
        match self {
            XsErrno::NoEntry => "ENOENT",
            XsErrno::Access => "EACCES",
            XsErrno::Exists => "EEXIST",
            XsErrno::Again => "EAGAIN",
            XsErrno::Invalid => "EINVAL",
            XsErrno::NoSpace => "ENOSPC",
            XsErrno::IsDir => "EISDIR",
            XsErrno::Busy => "EBUSY",
            XsErrno::ReadOnly => "EROFS",
            XsErrno::NoSys => "ENOSYS",
            XsErrno::Io => "EIO",
            XsErrno::TooBig => "E2BIG",
            XsErrno::Quota => "EQUOTA",
            XsErrno::Unknown(s) => s,
        }
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of the xenstore client.
#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    /// Opening the socket or device failed.
    #[error("cannot open xenstore at {path}: {source}")]
    Open {
        /// The socket or device path.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Neither the xenstored socket nor the xenbus device exists.
    #[error("no xenstore: neither {socket} nor {device} exists")]
    NotAvailable {
        /// Socket path tried.
        socket: String,
        /// Device paths tried.
        device: String,
    },
    /// Reading or writing the connection failed.
    #[error("xenstore I/O: {0}")]
    Io(#[from] io::Error),
    /// xenstored answered `XS_ERROR`.
    #[error("xenstore {op} {path}: {errno}")]
    Server {
        /// The operation ("read", "write", ...).
        op: &'static str,
        /// The path (or other first argument) of the request.
        path: String,
        /// The errno name returned.
        errno: XsErrno,
    },
    /// The peer broke the protocol (unexpected reply, bad payload).
    #[error("xenstore protocol error: {0}")]
    Protocol(String),
    /// A request payload larger than the protocol allows.
    #[error("xenstore request of {0} bytes exceeds the 4096-byte payload limit")]
    TooLong(usize),
    /// A permission string that is not `[nrwb]<domid>`.
    #[error("invalid xenstore permission {0:?}")]
    BadPerm(String),
}

impl XenstoreError {
    /// The errno name when xenstored refused the request.
    pub fn errno(&self) -> Option<&XsErrno> {
        match self {
            XenstoreError::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }

    /// True when xenstored answered `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(&XsErrno::NoEntry)
    }
}
