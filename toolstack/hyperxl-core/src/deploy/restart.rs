//! Restart policies as Docker spells them: `no`, `on-failure`, `on-failure:N`, `always`.

use std::fmt;

use serde::{Serialize, Serializer};

/// What to do when a VM's app exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Leave it stopped.
    #[default]
    No,
    /// Restart after a non-zero exit, at most `max` times (`None`: no limit).
    OnFailure {
        /// Restarts allowed in all; `None` for no limit.
        max: Option<u32>,
    },
    /// Restart after every exit; an explicit stop is the supervisor's business.
    Always,
}

/// A restart policy that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestartError {
    /// Not one of the known policies.
    #[error(
        "invalid restart policy {0:?}: use \"no\", \"on-failure\", \"on-failure:N\" or \"always\""
    )]
    Unknown(String),
    /// `on-failure:N` with an N that is not a whole number of at least 1.
    #[error("invalid restart count in {0:?}: N in \"on-failure:N\" must be a whole number of at least 1")]
    BadCount(String),
}

/// Parses a policy as `docker run --restart` takes it.
pub fn parse_restart(s: &str) -> Result<RestartPolicy, RestartError> {
    match s {
        "no" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "on-failure" => Ok(RestartPolicy::OnFailure { max: None }),
        _ => {
            let count = s
                .strip_prefix("on-failure:")
                .ok_or_else(|| RestartError::Unknown(s.to_owned()))?;
            // Digits only: `u32::from_str` would also take a leading `+`.
            let max = Some(count)
                .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u32>().ok())
                .filter(|&n| n >= 1)
                .ok_or_else(|| RestartError::BadCount(s.to_owned()))?;
            Ok(RestartPolicy::OnFailure { max: Some(max) })
        }
    }
}

impl RestartPolicy {
    /// Whether a VM whose app exited with `exit_code`, after `restarts_so_far` restarts,
    /// should be started again.
    pub fn should_restart(&self, exit_code: i32, restarts_so_far: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure { max } => {
                exit_code != 0 && max.is_none_or(|m| restarts_so_far < m)
            }
            RestartPolicy::Always => true,
        }
    }
}

/// The form [`parse_restart`] takes back.
impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure { max: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
            RestartPolicy::Always => f.write_str("always"),
        }
    }
}

/// Serialised as its string form, so a VM's fingerprint reads as the file does.
impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_policies_and_prints_them_back() {
        for (text, policy) in [
            ("no", RestartPolicy::No),
            ("always", RestartPolicy::Always),
            ("on-failure", RestartPolicy::OnFailure { max: None }),
            ("on-failure:2", RestartPolicy::OnFailure { max: Some(2) }),
        ] {
            assert_eq!(parse_restart(text), Ok(policy), "{text}");
            assert_eq!(policy.to_string(), text);
        }
    }

    #[test]
    fn rejects_other_policies() {
        for bad in ["", "No", "never", "unless-stopped", "always:3", " no"] {
            assert_eq!(parse_restart(bad), Err(RestartError::Unknown(bad.into())));
        }
        for bad in [
            "on-failure:",
            "on-failure:0",
            "on-failure:-1",
            "on-failure:+3",
            "on-failure:x",
            "on-failure:99999999999",
        ] {
            assert_eq!(parse_restart(bad), Err(RestartError::BadCount(bad.into())));
        }
    }

    #[test]
    fn no_never_restarts() {
        assert!(!RestartPolicy::No.should_restart(1, 0));
        assert!(!RestartPolicy::No.should_restart(0, 0));
    }

    #[test]
    fn always_restarts_on_any_exit() {
        assert!(RestartPolicy::Always.should_restart(0, 0));
        assert!(RestartPolicy::Always.should_restart(137, u32::MAX));
    }

    #[test]
    fn on_failure_counts_restarts() {
        let two = RestartPolicy::OnFailure { max: Some(2) };
        assert!(!two.should_restart(0, 0), "a clean exit is not a failure");
        assert!(two.should_restart(1, 0));
        assert!(two.should_restart(-1, 1));
        assert!(!two.should_restart(1, 2));
        assert!(!two.should_restart(1, 3));
        let unlimited = RestartPolicy::OnFailure { max: None };
        assert!(unlimited.should_restart(3, u32::MAX));
        assert!(!unlimited.should_restart(0, 0));
    }
}
