//! Errors of the libxl layer: libxl's own error codes (with errno), missing
//! Xen, timeouts, and configuration problems found before libxl is called.

use std::ffi::CStr;
use std::fmt;
use std::time::Duration;

use crate::config::ConfigError;
use crate::DomId;

/// A libxl error code: one of libxl's negative `ERROR_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub i32);

impl ErrorCode {
    /// `ERROR_FAIL`, libxl's generic failure.
    pub const FAIL: Self = Self(libxl_sys::ERROR_FAIL);
    /// `ERROR_INVAL`: bad argument.
    pub const INVAL: Self = Self(libxl_sys::ERROR_INVAL);
    /// `ERROR_TIMEDOUT`: e.g. the guest did not acknowledge a shutdown request
    /// within libxl's 60 s.
    pub const TIMEDOUT: Self = Self(libxl_sys::ERROR_TIMEDOUT);
    /// `ERROR_NOPARAVIRT`: the guest has no PV control (yet), so it cannot be
    /// asked to shut down.
    pub const NOPARAVIRT: Self = Self(libxl_sys::ERROR_NOPARAVIRT);
    /// `ERROR_DOMAIN_NOTFOUND`: no domain with that id.
    pub const DOMAIN_NOTFOUND: Self = Self(libxl_sys::ERROR_DOMAIN_NOTFOUND);
    /// `ERROR_NOMEM`: an allocation inside libxl failed.
    pub const NOMEM: Self = Self(libxl_sys::ERROR_NOMEM);

    /// The C name of the code, e.g. `ERROR_DOMAIN_NOTFOUND`, or `None` for a
    /// value libxl does not define.
    pub fn name(self) -> Option<String> {
        // SAFETY: libxl_error_to_string needs no context; it looks the value up
        // in a static table and returns a static string or NULL.
        let p = unsafe { libxl_sys::libxl_error_to_string(self.0) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p is non-NULL and points to a NUL-terminated static string.
        let name = unsafe { CStr::from_ptr(p) };
        // libxl spells them in lower case ("domain_notfound").
        Some(format!(
            "ERROR_{}",
            name.to_string_lossy().to_ascii_uppercase()
        ))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "libxl error {}", self.0),
        }
    }
}

/// Why an operation of the libxl layer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibxlError {
    /// This host does not run Xen (or is not dom0): the privcmd device is missing.
    #[error("Xen is not available on this host: {path} missing")]
    XenUnavailable {
        /// The device that was looked for.
        path: &'static str,
    },
    /// A libxl call returned an error code.
    // errno is not in the message: libxl reports through its code and its log, and
    // errno after a libxl call is usually stale (EINTR from its own child handling).
    #[error("{call} failed: {code}")]
    Call {
        /// The libxl function, e.g. `libxl_domain_create_new`.
        call: &'static str,
        /// libxl's code.
        code: ErrorCode,
        /// `errno` right after the call, when it was set.
        errno: Option<i32>,
    },
    /// A libxl call that returns a pointer returned NULL.
    #[error("{call} failed{}", errno_suffix(*.errno))]
    NullResult {
        /// The libxl function.
        call: &'static str,
        /// `errno` right after the call, when it was set.
        errno: Option<i32>,
    },
    /// The domain did not shut down or disappear within the timeout.
    #[error("domain {domid} still running after {timeout:?}")]
    Timeout {
        /// The domain waited for.
        domid: DomId,
        /// How long we waited.
        timeout: Duration,
    },
    /// A C allocation (`strdup`, `calloc`) failed.
    #[error("out of memory building a libxl structure")]
    OutOfMemory,
    /// The domain configuration was refused before reaching libxl.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl LibxlError {
    /// libxl's error code, for errors that came from a libxl call.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Call { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when libxl said the domain does not exist.
    pub fn is_domain_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::DOMAIN_NOTFOUND)
    }

    /// Builds a [`LibxlError::Call`] from a libxl return code, reading errno now.
    pub(crate) fn call(call: &'static str, rc: i32) -> Self {
        Self::Call {
            call,
            code: ErrorCode(rc),
            errno: last_errno(),
        }
    }

    /// Builds a [`LibxlError::NullResult`], reading errno now.
    pub(crate) fn null(call: &'static str) -> Self {
        Self::NullResult {
            call,
            errno: last_errno(),
        }
    }
}

/// Turns a libxl return code into a `Result` (0 is success, negative is an error).
pub(crate) fn check(call: &'static str, rc: i32) -> Result<(), LibxlError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(LibxlError::call(call, rc))
    }
}

fn last_errno() -> Option<i32> {
    std::io::Error::last_os_error()
        .raw_os_error()
        .filter(|&e| e != 0)
}

fn errno_suffix(errno: Option<i32>) -> String {
    match errno {
        Some(e) => format!(" (errno {e}: {})", std::io::Error::from_raw_os_error(e)),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_come_from_libxl() {
        assert_eq!(
            ErrorCode::DOMAIN_NOTFOUND.name().as_deref(),
            Some("ERROR_DOMAIN_NOTFOUND")
        );
        assert_eq!(ErrorCode::FAIL.to_string(), "ERROR_FAIL (-3)");
        assert_eq!(ErrorCode(-9999).name(), None);
    }

    #[test]
    fn call_error_keeps_errno_but_shows_the_code() {
        let e = LibxlError::Call {
            call: "libxl_domain_destroy",
            code: ErrorCode::DOMAIN_NOTFOUND,
            errno: Some(libc::ENOENT),
        };
        assert!(e.is_domain_not_found());
        let msg = e.to_string();
        assert!(
            msg.starts_with("libxl_domain_destroy failed: ERROR_DOMAIN_NOTFOUND"),
            "{msg}"
        );
        assert!(!msg.contains("errno"), "a stale errno misleads: {msg}");
        assert!(matches!(e, LibxlError::Call { errno: Some(2), .. }));
    }

    #[test]
    fn xen_unavailable_is_one_clear_line() {
        let e = LibxlError::XenUnavailable {
            path: "/dev/xen/privcmd",
        };
        assert_eq!(
            e.to_string(),
            "Xen is not available on this host: /dev/xen/privcmd missing"
        );
    }
}
