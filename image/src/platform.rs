//! Choosing one image from a manifest list / OCI index by platform.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Descriptor;

/// An `os/architecture[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`: what a Xen x86 guest runs.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

/// A `--platform` value that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?} (expected os/arch[/variant], e.g. linux/amd64)")]
pub struct PlatformError(pub String);

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(PlatformError(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The descriptor in `manifests` for `want`; a descriptor without a platform matches
/// only when it is the only one (single-image layouts).
pub fn choose<'a>(manifests: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let hit = manifests.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == want.os
                && p.architecture().to_string() == want.architecture
                && (want.variant.is_none() || p.variant().as_deref() == want.variant.as_deref())
        })
    });
    hit.or_else(|| match manifests {
        [only] if only.platform().is_none() => Some(only),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platforms() {
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap(),
            Platform::default()
        );
        assert_eq!(
            "linux/arm64/v8"
                .parse::<Platform>()
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
    }
}
