//! Published ports: Docker's `-p [IP:][HOST:]GUEST[/tcp|/udp]`.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A transport protocol a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// As nftables and Docker spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// What `-p` asked for; the host port may be left to hyperxl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRequest {
    /// Only this dom0 address (`None`: all of them).
    pub host_ip: Option<Ipv4Addr>,
    /// The dom0 port (`None`: any free one).
    pub host_port: Option<u16>,
    /// The guest's port.
    pub guest_port: u16,
    /// The protocol.
    pub proto: Proto,
}

/// One published port of a VM, as recorded and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMap {
    /// Only this dom0 address (`None`: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    /// The dom0 port.
    pub host_port: u16,
    /// The guest's port.
    pub guest_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl fmt::Display for PortMap {
    /// `0.0.0.0:8080->80/tcp`, as `docker ps` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }
}

/// A `-p` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port mapping {0:?}: expected [IP:][HOST:]GUEST[/tcp|/udp], ports 1-65535")]
pub struct PublishError(pub String);

fn port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Parses one `-p` value.
pub fn parse(spec: &str) -> Result<PortRequest, PublishError> {
    let bad = || PublishError(spec.to_string());
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some(_) => return Err(bad()),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host_port, guest) = match parts.as_slice() {
        [g] => (None, None, *g),
        [h, g] => (None, Some(port(h).ok_or_else(bad)?), *g),
        [ip, h, g] => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let host = if h.is_empty() {
                None
            } else {
                Some(port(h).ok_or_else(bad)?)
            };
            (Some(ip).filter(|ip| !ip.is_unspecified()), host, *g)
        }
        _ => return Err(bad()),
    };
    Ok(PortRequest {
        host_ip,
        host_port,
        guest_port: port(guest).ok_or_else(bad)?,
        proto,
    })
}

/// The image's `ExposedPorts` keys (`80/tcp`, `53/udp`, `8080`) as requests for any free
/// host port (`-P`); keys that do not parse are skipped.
pub fn exposed(keys: &[String]) -> Vec<PortRequest> {
    keys.iter().filter_map(|k| parse(k).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_forms() {
        let p = parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.guest_port, p.proto),
            (None, Some(8080), 80, Proto::Tcp)
        );
        let p = parse("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.proto, Proto::Udp);
        let p = parse("80").unwrap();
        assert_eq!((p.host_port, p.guest_port), (None, 80));
        let p = parse("127.0.0.1::80").unwrap();
        assert_eq!((p.host_ip, p.host_port), (Some(Ipv4Addr::LOCALHOST), None));
        let p = parse("0.0.0.0:81:80").unwrap();
        assert_eq!(p.host_ip, None, "0.0.0.0 is every address");
    }

    #[test]
    fn malformed_is_refused() {
        for bad in [
            "",
            "x",
            "8080:",
            ":80",
            "0:80",
            "65536:80",
            "8080:80/sctp",
            "1.2.3:80:80",
            "a:b:c:d",
            "8080:80/",
            "-1:80",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shown_as_docker_does() {
        let m = PortMap {
            host_ip: None,
            host_port: 8080,
            guest_port: 80,
            proto: Proto::Tcp,
        };
        assert_eq!(m.to_string(), "0.0.0.0:8080->80/tcp");
    }

    #[test]
    fn exposed_ports() {
        let r = exposed(&["80/tcp".into(), "53/udp".into(), "junk/x".into()]);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|p| p.host_port.is_none()));
    }
}
