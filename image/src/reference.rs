//! Image references as Docker users write them, normalised as Docker does.
//!
//! `busybox` is `docker.io/library/busybox:latest`; `team/app` is
//! `docker.io/team/app:latest`; the first component is a registry when it contains a `.`
//! or a `:` or is `localhost` (`registry.example:5000/team/app:tag`); `name@sha256:<hex>`
//! pins a digest (a tag may stand beside it and is then only informative). The grammar is
//! Docker's (`distribution/reference`): lowercase path components separated by `/`, each
//! `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`; tags `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`;
//! names at most 255 characters.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry that names without a registry component refer to.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// Why an image reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The empty string.
    #[error("empty image reference")]
    Empty,
    /// Uppercase letters in the repository path.
    #[error("invalid image reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// A path component that is not `[a-z0-9]+` joined by separators.
    #[error("invalid image reference {reference:?}: bad repository component {component:?}")]
    BadComponent {
        /// The whole reference.
        reference: String,
        /// The offending component.
        component: String,
    },
    /// A registry host that is not a hostname or IP with an optional port.
    #[error("invalid image reference {reference:?}: bad registry {registry:?}")]
    BadRegistry {
        /// The whole reference.
        reference: String,
        /// The offending registry part.
        registry: String,
    },
    /// A tag outside `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid image reference {reference:?}: bad tag {tag:?}")]
    BadTag {
        /// The whole reference.
        reference: String,
        /// The offending tag.
        tag: String,
    },
    /// The repository name is longer than 255 characters.
    #[error("invalid image reference {0:?}: repository name longer than 255 characters")]
    NameTooLong(String),
    /// The part after `@` is not a valid digest.
    #[error("invalid image reference {reference:?}")]
    BadDigest {
        /// The whole reference.
        reference: String,
        /// Why the digest was refused.
        source: DigestError,
    },
}

/// A normalised image reference: registry, repository, tag and/or digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry host (and port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `latest` when neither tag nor digest was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same reference with another tag and no digest (used for `load` of tagged
    /// archives).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The short form Docker prints: `busybox:latest`, `team/app:1`, `host:5000/x:y`.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        self.with_suffix(name)
    }

    /// The host to contact for this registry (Docker Hub's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    fn with_suffix(&self, mut s: String) -> String {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_suffix(self.name()))
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => {
            let digest = d
                .parse::<Digest>()
                .map_err(|source| ReferenceError::BadDigest {
                    reference: s.to_string(),
                    source,
                })?;
            (rest, Some(digest))
        }
        None => (s, None),
    };
    // A tag is a `:` after the last `/` (a `:` before it is a registry port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                reference: s.to_string(),
                tag: tag.to_string(),
            });
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !valid_registry(first) {
                return Err(ReferenceError::BadRegistry {
                    reference: s.to_string(),
                    registry: first.to_string(),
                });
            }
            let registry = if first == "index.docker.io" {
                DOCKER_HUB
            } else {
                first
            };
            (registry.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if repository.is_empty() {
        return Err(ReferenceError::BadComponent {
            reference: s.to_string(),
            component: String::new(),
        });
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase(s.to_string()));
    }
    for component in repository.split('/') {
        if !valid_component(component) {
            return Err(ReferenceError::BadComponent {
                reference: s.to_string(),
                component: component.to_string(),
            });
        }
    }
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
        return Err(ReferenceError::NameTooLong(s.to_string()));
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_string()),
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or one or more `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-"+, followed by an alphanumeric.
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A hostname (labels of `[A-Za-z0-9-]`), or a bracketed IPv6 address, with an optional
/// `:port`.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip6, tail)) => {
                if ip6.is_empty() || !ip6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match tail.strip_prefix(':') {
                    Some(p) => ("ip6", Some(p)),
                    None if tail.is_empty() => ("ip6", None),
                    None => return false,
                }
            }
            None => return false,
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(norm("team/app"), "docker.io/team/app:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("registry.example:5000/team/app:tag"),
            "registry.example:5000/team/app:tag"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(
            norm("localhost:5000/a/b/c:v1.2"),
            "localhost:5000/a/b/c:v1.2"
        );
        assert_eq!(norm("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(norm("[::1]:5000/x:y"), "[::1]:5000/x:y");
        assert_eq!(
            norm("my_app-x__y.z"),
            "docker.io/library/my_app-x__y.z:latest"
        );
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "0".repeat(64));
        let r: Reference = format!("busybox@{d}").parse().unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), d);
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.familiar(), format!("busybox@{d}"));
        let r: Reference = format!("host:5000/x:1@{d}").parse().unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.manifest_reference(), d);
    }

    #[test]
    fn familiar_and_api_host() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r: Reference = "localhost:5000/a:b".parse().unwrap();
        assert_eq!(r.familiar(), "localhost:5000/a:b");
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.name(), "localhost:5000/a");
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!("".parse::<Reference>(), Err(ReferenceError::Empty));
        assert!(matches!(
            "BusyBox".parse::<Reference>(),
            Err(ReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            "busybox:".parse::<Reference>(),
            Err(ReferenceError::BadTag { .. })
        ));
        assert!(matches!(
            "busybox:-x".parse::<Reference>(),
            Err(ReferenceError::BadTag { .. })
        ));
        assert!(matches!(
            "busybox:a/b".parse::<Reference>(),
            Err(ReferenceError::BadRegistry { .. })
        ));
        assert!(matches!(
            "a//b".parse::<Reference>(),
            Err(ReferenceError::BadComponent { .. })
        ));
        assert!(matches!(
            "a/../b".parse::<Reference>(),
            Err(ReferenceError::BadComponent { .. })
        ));
        assert!(matches!(
            "-a".parse::<Reference>(),
            Err(ReferenceError::BadComponent { .. })
        ));
        assert!(matches!(
            "a___b".parse::<Reference>(),
            Err(ReferenceError::BadComponent { .. })
        ));
        assert!(matches!(
            "host:port/x".parse::<Reference>(),
            Err(ReferenceError::BadRegistry { .. })
        ));
        assert!(matches!(
            "busybox@sha256:abc".parse::<Reference>(),
            Err(ReferenceError::BadDigest { .. })
        ));
        assert!(matches!(
            "busybox@md5:abc".parse::<Reference>(),
            Err(ReferenceError::BadDigest { .. })
        ));
        let long = "a".repeat(300);
        assert!(matches!(
            long.parse::<Reference>(),
            Err(ReferenceError::NameTooLong(_))
        ));
        let tag = "t".repeat(129);
        assert!(matches!(
            format!("a:{tag}").parse::<Reference>(),
            Err(ReferenceError::BadTag { .. })
        ));
    }
}
