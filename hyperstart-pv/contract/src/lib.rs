//! The host-guest contract of hyperxl: spec format, xenstore key names, version.
//!
//! dom0 (the toolstack) and the guest init (hyperstart-pv) both import this crate; it is
//! the one written-down place for what crosses the boundary.
//!
//! - dom0 writes the [`Spec`] as JSON to [`keys::spec_path`] before unpausing the
//!   domain, with permissions that let the guest read but not write it.
//! - The guest reports under its own `data/hyperxl/` ([`keys::status`]): `state`
//!   ([`State`]), `started`, `exit-code` and `error`.
//! - A shutdown request is `control/shutdown` = `poweroff`/`halt` (what `xl shutdown`
//!   writes) or the contract's own [`keys::SHUTDOWN`] key.
//!
//! ```
//! let json = r#"{"version":1,"args":["/bin/sh","-c","exit 7"]}"#;
//! let spec = hyperxl_contract::Spec::from_json(json.as_bytes()).unwrap();
//! assert_eq!(spec.rootfs.device, "/dev/xvda");
//! ```

pub mod console;
pub mod control;
pub mod env;
pub mod exit;
pub mod job;
pub mod keys;
pub mod mounts;
pub mod net;
pub mod path;
pub mod spec;
pub mod user;

pub use spec::{
    Disk, Rlimit, RlimitName, Spec, SpecError, CONTRACT_VERSION, DEFAULT_STOP_GRACE_SECS,
};

/// What the guest reports in `data/hyperxl/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A pre-booted VM (`hyperxl pool`): the init waits for its spec.
    Pooled,
    /// The init runs and prepares the root filesystem.
    Booting,
    /// The app was exec'ed.
    Started,
    /// The app exited; `exit-code` holds its code.
    Exited,
    /// The init itself failed; `error` says why.
    Failed,
}

impl State {
    /// The value written to xenstore.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pooled => "pooled",
            State::Booting => "booting",
            State::Started => "started",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }

    /// Parses a value read from xenstore.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pooled" => State::Pooled,
            "booting" => State::Booting,
            "started" => State::Started,
            "exited" => State::Exited,
            "failed" => State::Failed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn state_roundtrip() {
        for s in [State::Booting, State::Started, State::Exited, State::Failed] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("running"), None);
    }
}
