//! The registry side of a pull: one repository's endpoints, authentication (anonymous,
//! Basic, Bearer tokens), retries, and manifests fetched and verified by digest.
//!
//! Credentials go to a token realm only when that is safe (see `credentials_allowed`):
//! a challenge that came over TLS may send them to an `https` realm on any host (as
//! Docker Hub's `auth.docker.io`); a challenge that came over plain http (a local or
//! `--insecure` registry) only to a realm on the registry's own host. Any other realm
//! gets an anonymous token request. Redirects never carry the `Authorization` header.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::pull::{PullError, PullOptions};
use crate::reference::Reference;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A connection to one repository of one registry, with its auth state.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    /// Whether `base` is https: a challenge read from it came over TLS.
    tls: bool,
    registry: String,
    repository: String,
    creds: Option<Credentials>,
    authorization: Mutex<Option<String>>,
    pub(crate) attempts: u32,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

fn is_local(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.ends_with(".localhost")
}

impl Registry {
    /// Prepares requests for `r`'s repository.
    pub fn new(r: &Reference, opts: &PullOptions) -> Result<Registry, PullError> {
        let scheme = if is_local(r.registry()) || opts.insecure.iter().any(|i| i == r.registry()) {
            "http"
        } else {
            "https"
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("hyperxl/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Registry {
            agent,
            base: format!("{scheme}://{}/v2/{}", r.api_host(), r.repository()),
            tls: scheme == "https",
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            creds: opts.auth.lookup(r.registry())?,
            authorization: Mutex::new(None),
            attempts: opts.attempts.max(1),
        })
    }

    /// Checks that the registry accepts our credentials (for `hyperxl login`).
    pub fn check_login(&self) -> Result<(), PullError> {
        let root = self
            .base
            .split("/v2/")
            .next()
            .unwrap_or_default()
            .to_string()
            + "/v2/";
        let resp = self.get(&root, None)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            _ => Err(self.status_error(&root, resp)),
        }
    }

    pub(crate) fn status_error(
        &self,
        url: &str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> PullError {
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return PullError::Unauthorized {
                registry: self.registry.clone(),
            };
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(512)
            .read_to_string()
            .unwrap_or_default();
        PullError::Status {
            url: url.to_string(),
            status,
            body: crate::text::sanitise(&body.trim().chars().take(200).collect::<String>()),
        }
    }

    /// GET with auth and retries; a 401 triggers one round of authentication.
    pub(crate) fn get(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, PullError> {
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(auth) = self.authorization.lock().expect("not poisoned").clone() {
                req = req.header("Authorization", auth);
            }
            match req.call() {
                Ok(resp) if resp.status() == 401 && !authenticated => {
                    authenticated = true;
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    self.authenticate(&challenge)?;
                }
                Ok(resp)
                    if (resp.status().is_server_error() || resp.status() == 429)
                        && attempt < self.attempts =>
                {
                    backoff(attempt)
                }
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < self.attempts && transient(&e) => backoff(attempt),
                Err(e) => {
                    return Err(PullError::Http {
                        url: url.to_string(),
                        error: Box::new(e),
                    })
                }
            }
        }
    }

    fn authenticate(&self, challenge: &str) -> Result<(), PullError> {
        let unauthorized = || PullError::Unauthorized {
            registry: self.registry.clone(),
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let value = match scheme.to_ascii_lowercase().as_str() {
            "basic" => self.creds.as_ref().ok_or_else(unauthorized)?.basic(),
            "bearer" => format!("Bearer {}", self.token(&parse_challenge(params))?),
            _ => return Err(unauthorized()),
        };
        *self.authorization.lock().expect("not poisoned") = Some(value);
        Ok(())
    }

    fn token(&self, params: &HashMap<String, String>) -> Result<String, PullError> {
        let bad = |detail: &str| PullError::Token {
            registry: self.registry.clone(),
            detail: detail.to_string(),
        };
        let realm = params
            .get("realm")
            .ok_or_else(|| bad("no realm in challenge"))?;
        let realm_uri: ureq::http::Uri = realm.parse().map_err(|_| bad("realm is not a URL"))?;
        if !matches!(realm_uri.scheme_str(), Some("http" | "https")) || realm_uri.host().is_none() {
            return Err(bad("realm is not an http(s) URL"));
        }
        let base_host = self
            .base
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let send_creds = credentials_allowed(self.tls, base_host, &realm_uri);
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(service) = params.get("service") {
            req = req.query("service", service);
        }
        if let Some(c) = self.creds.as_ref().filter(|_| send_creds) {
            req = req.header("Authorization", c.basic());
        }
        let mut resp = req.call().map_err(|e| PullError::Http {
            url: realm.clone(),
            error: Box::new(e),
        })?;
        if !resp.status().is_success() {
            return Err(self.status_error(realm, resp));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| PullError::Http {
                url: realm.clone(),
                error: Box::new(e),
            })?;
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| bad("not JSON"))?;
        t.token.or(t.access_token).ok_or_else(|| bad("no token"))
    }

    /// Fetches a manifest by tag or digest: (bytes, media type, digest).
    pub(crate) fn manifest(
        &self,
        reference: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, String, Digest), PullError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let mut resp = self.get(&url, Some(ACCEPT))?;
        if !resp.status().is_success() {
            return Err(self.status_error(&url, resp));
        }
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| PullError::Http {
                url: url.clone(),
                error: Box::new(e),
            })?;
        let actual = Digest::of_bytes(&body);
        let expected = reference.parse::<Digest>().ok().or(announced);
        if let Some(expected) = expected {
            if expected != actual {
                return Err(PullError::ManifestDigest { expected, actual });
            }
        }
        Ok((body, media, actual))
    }

    pub(crate) fn blob_url(&self, d: &Digest) -> String {
        format!("{}/blobs/{d}", self.base)
    }
}

/// The host of `host[:port]` (IPv6 literals keep their brackets), lower case.
fn host_only(hostport: &str) -> String {
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => hostport,
    };
    host.to_ascii_lowercase()
}

/// Whether the registry's credentials may go to a token `realm` named in a challenge
/// from the registry at `registry_host`:
/// - a challenge received over TLS may name a realm on any host (Docker Hub's is
///   `auth.docker.io`), but only an `https` one: credentials never go out in clear text
///   because an authenticated response said so;
/// - a challenge received over plain http (a local registry, or one configured
///   insecure) could have been written by anyone on the path, so the realm must be on
///   the registry's own host (any port); the insecure allowance covers that host only.
///
/// Otherwise the token is requested anonymously.
pub(crate) fn credentials_allowed(
    challenge_over_tls: bool,
    registry_host: &str,
    realm: &ureq::http::Uri,
) -> bool {
    if challenge_over_tls {
        realm.scheme_str() == Some("https")
    } else {
        realm
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case(&host_only(registry_host)))
    }
}

pub(crate) fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
}

fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
    )
}

/// `realm="...",service="...",scope="..."` -> map.
fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = tail.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let m = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(m["realm"], "https://auth.docker.io/token");
        assert_eq!(m["service"], "registry.docker.io");
        assert_eq!(m["scope"], "repository:library/busybox:pull");
        let m = parse_challenge(r#"realm=x, service="a,b""#);
        assert_eq!(m["realm"], "x");
        assert_eq!(m["service"], "a,b");
    }

    #[test]
    fn defect9_credentials_follow_only_trusted_realms() {
        let uri = |s: &str| s.parse::<ureq::http::Uri>().unwrap();
        // Over TLS: any https realm (Docker Hub), never an http one.
        assert!(credentials_allowed(
            true,
            "registry-1.docker.io",
            &uri("https://auth.docker.io/token")
        ));
        assert!(!credentials_allowed(
            true,
            "registry.example",
            &uri("http://registry.example/token")
        ));
        assert!(!credentials_allowed(
            true,
            "registry.example",
            &uri("http://evil.example/token")
        ));
        // Over plain http (an insecure registry): its own host only, any port.
        assert!(credentials_allowed(
            false,
            "127.0.0.1:5000",
            &uri("http://127.0.0.1:5001/token")
        ));
        assert!(credentials_allowed(
            false,
            "Reg.Lan:5000",
            &uri("https://reg.lan/token")
        ));
        assert!(!credentials_allowed(
            false,
            "127.0.0.1:5000",
            &uri("http://127.0.0.2:5000/token")
        ));
        assert!(!credentials_allowed(
            false,
            "reg.lan:5000",
            &uri("https://auth.evil.example/token")
        ));
        assert_eq!(host_only("[::1]:5000"), "[::1]");
    }

    #[test]
    fn local_registries_are_plain_http() {
        assert!(is_local("localhost:5000"));
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("[::1]:5000"));
        assert!(!is_local("registry.example:5000"));
        assert!(!is_local("localhost.evil.com"));
    }
}
