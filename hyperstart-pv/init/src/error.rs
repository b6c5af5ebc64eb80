//! Errors of the init.

use std::io;

/// Everything that can stop the init before or while running the app.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A syscall failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        source: nix::Error,
    },
    /// File I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// xenstore failed.
    #[error(transparent)]
    Xenstore(#[from] xenstore_wire::XenstoreError),
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] hyperxl_contract::SpecError),
    /// The user could not be resolved.
    #[error(transparent)]
    User(#[from] hyperxl_contract::user::UserError),
    /// Neither /dev/xen/xenbus nor xenfs' /proc/xen/xenbus is usable (not a Xen guest?).
    #[error("no xenbus device: /dev/xen/xenbus missing and xenfs unusable ({0})")]
    NoXenbus(Box<InitError>),
    /// Configuring an interface failed.
    #[error(transparent)]
    Net(#[from] hyperxl_netconf::NetconfError),
    /// The app's terminal could not be set up (`run -t`).
    #[error("{0}")]
    Terminal(String),
    /// A device did not show up in time.
    #[error("{0} did not appear within {1} s")]
    Timeout(String, u64),
}

/// Adds a description to a nix result.
pub trait SysContext<T> {
    /// Wraps the error with `what`.
    fn ctx(self, what: impl Into<String>) -> Result<T, InitError>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, InitError> {
        self.map_err(|source| InitError::Sys {
            what: what.into(),
            source,
        })
    }
}

impl<T> SysContext<T> for io::Result<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, InitError> {
        self.map_err(|source| InitError::Io {
            what: what.into(),
            source,
        })
    }
}
