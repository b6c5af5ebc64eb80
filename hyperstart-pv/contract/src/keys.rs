//! xenstore key names of the contract.
//!
//! Relative keys (no leading `/`) are resolved by xenstored against the caller's
//! `/local/domain/<domid>`: the guest uses them as they are, dom0 through [`abs`].
//!
//! dom0's side: before unpausing, write [`spec_path`] (and later [`SHUTDOWN`]) below
//! `/local/domain/<domid>/hyperxl`, whose permissions must be `n0 r<domid>` (owner dom0,
//! guest read-only; libxl gives `/local/domain/<domid>` exactly that and new nodes
//! inherit their parent's). The guest writes only below its own `data/`, which libxl
//! makes guest-writable. A stop request is best sent through [`SHUTDOWN`]: the guest
//! kernel's own handler also consumes `control/shutdown` (it acknowledges by writing "").

/// dom0's directory for the guest: the spec, stop requests, exec sessions (guest
/// read-only).
pub const SPEC_DIR: &str = "hyperxl";
/// The spec JSON, written by dom0, read-only for the guest.
pub const SPEC: &str = "hyperxl/spec";
/// The contract's own shutdown request, written by dom0 (any non-empty value; dom0
/// writes [`STOP_REQUEST`]).
pub const SHUTDOWN: &str = "hyperxl/shutdown";
/// The value dom0 writes to [`SHUTDOWN`] (`hyperxl stop`, a watcher's SIGTERM).
pub const STOP_REQUEST: &str = "stop";
/// Exec sessions: dom0 announces each one's vchan at `hyperxl/exec/<ID>` (`ring-ref`,
/// `event-channel`, guest read-only); the guest connects and speaks
/// [`crate::control`] on it. dom0 removes the directory when the session ends.
pub const EXEC_DIR: &str = "hyperxl/exec";
/// Xen's standard shutdown request key (`poweroff`, `halt`, `reboot`), as `xl shutdown`.
pub const CONTROL_SHUTDOWN: &str = "control/shutdown";
/// The guest's status directory (guest-writable `data/`).
pub const STATUS_DIR: &str = "data/hyperxl";

/// Status keys under [`STATUS_DIR`].
pub mod status {
    /// `booting` / `started` / `exited` / `failed`.
    pub const STATE: &str = "data/hyperxl/state";
    /// Written (value `1`) right after the app was exec'ed.
    pub const STARTED: &str = "data/hyperxl/started";
    /// The app's exit code as decimal text (128+N for signal N).
    pub const EXIT_CODE: &str = "data/hyperxl/exit-code";
    /// A one-line error text (exec failure or init failure).
    pub const ERROR: &str = "data/hyperxl/error";
}

/// `/local/domain/<domid>`.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// The absolute form of a relative contract key for a domain.
pub fn abs(domid: u32, key: &str) -> String {
    format!("/local/domain/{domid}/{key}")
}

/// `/local/domain/<domid>/hyperxl/spec`.
pub fn spec_path(domid: u32) -> String {
    abs(domid, SPEC)
}

/// True when a `control/shutdown` value asks the guest to stop.
pub fn is_shutdown_request(value: &str) -> bool {
    matches!(value.trim_end_matches('\0'), "poweroff" | "halt" | "reboot")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(spec_path(3), "/local/domain/3/hyperxl/spec");
        assert_eq!(
            abs(3, status::EXIT_CODE),
            "/local/domain/3/data/hyperxl/exit-code"
        );
        assert!(status::STATE.starts_with(STATUS_DIR));
        for dom0s in [SPEC, SHUTDOWN, EXEC_DIR] {
            assert!(dom0s.starts_with(&format!("{SPEC_DIR}/")), "{dom0s}");
        }
    }

    #[test]
    fn shutdown_values() {
        assert!(is_shutdown_request("poweroff"));
        assert!(is_shutdown_request("halt"));
        assert!(!is_shutdown_request(""));
        assert!(!is_shutdown_request("suspend"));
    }
}
