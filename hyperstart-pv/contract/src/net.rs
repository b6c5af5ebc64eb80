//! The guest's network as dom0 hands it over, and the files the init writes from it.
//!
//! dom0 owns addressing: it leases the address, picks the gateway and the name servers,
//! and lists the peers a guest should know by name. The guest applies this before its
//! app starts (`lo` and `eth0`, the default route) and writes `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname` into its writable layer, as Docker does. With
//! no network (`--network none`) the spec has none, and only `lo` comes up.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The interface the guest's one vif appears as.
pub const GUEST_IFACE: &str = "eth0";
/// The MTU unless dom0 says otherwise (Ethernet's, what netback offers).
pub const DEFAULT_MTU: u32 = 1500;

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

/// One `/etc/hosts` line: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its names, first the canonical one.
    pub names: Vec<String>,
}

/// The guest's IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The guest's address on `eth0`.
    pub address: Ipv4Addr,
    /// Its prefix length (16 for a /16).
    pub prefix: u8,
    /// The default route's gateway (dom0's bridge address); none: no default route.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The MTU of `eth0`.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Name servers for `/etc/resolv.conf`.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Search domains for `/etc/resolv.conf`.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// Extra `/etc/hosts` entries (peers by name, `--add-host`).
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// A network that would make the guest misbehave or write a broken file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// A prefix length that leaves no room for a host and a gateway.
    #[error("network prefix /{0} is out of range (1 to 30)")]
    Prefix(u8),
    /// An MTU the kernel would refuse.
    #[error("MTU {0} is out of range (68 to 65535)")]
    Mtu(u32),
    /// A host name or search domain that is not a DNS name (a space or newline would
    /// add lines of its own to /etc/hosts or /etc/resolv.conf).
    #[error("{0:?} is not a valid host name")]
    Name(String),
    /// More than `/etc/resolv.conf` honours.
    #[error("at most 3 name servers and 6 search domains (as glibc and musl read them)")]
    TooMany,
}

/// Whether `name` is a DNS-style host name: letters, digits, '-', '_' and '.', at most
/// 253 bytes, not starting with '-' or '.'.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Network {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if !(1..=30).contains(&self.prefix) {
            return Err(NetworkError::Prefix(self.prefix));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(NetworkError::Mtu(self.mtu));
        }
        if self.dns.len() > 3 || self.dns_search.len() > 6 {
            return Err(NetworkError::TooMany);
        }
        let names = self.hosts.iter().flat_map(|h| h.names.iter());
        for name in names.chain(self.dns_search.iter()) {
            if !valid_hostname(name) {
                return Err(NetworkError::Name(name.clone()));
            }
        }
        Ok(())
    }
}

/// `/etc/hosts` as Docker writes it: loopback, then the guest's own address under its
/// hostname, then the extra entries.
pub fn hosts_file(hostname: &str, net: Option<&Network>) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    let Some(net) = net else { return out };
    if valid_hostname(hostname) {
        out.push_str(&format!("{}\t{hostname}\n", net.address));
    }
    for h in &net.hosts {
        let names: Vec<&str> = h
            .names
            .iter()
            .map(String::as_str)
            .filter(|n| valid_hostname(n))
            .collect();
        if !names.is_empty() {
            out.push_str(&format!("{}\t{}\n", h.ip, names.join(" ")));
        }
    }
    out
}

/// `/etc/resolv.conf` for the guest's network.
pub fn resolv_conf(net: &Network) -> String {
    let mut out = String::new();
    for ns in &net.dns {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    let search: Vec<&str> = net
        .dns_search
        .iter()
        .map(String::as_str)
        .filter(|d| valid_hostname(d))
        .collect();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network {
            address: Ipv4Addr::new(10, 88, 0, 5),
            prefix: 16,
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
            mtu: DEFAULT_MTU,
            dns: vec![Ipv4Addr::new(198, 18, 0, 53)],
            dns_search: vec!["example.test".into()],
            hosts: vec![HostEntry {
                ip: Ipv4Addr::new(10, 88, 0, 7),
                names: vec!["web".into(), "shop-web".into()],
            }],
        }
    }

    #[test]
    fn files_as_docker_writes_them() {
        let hosts = hosts_file("app", Some(&net()));
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("\n10.88.0.5\tapp\n"), "{hosts}");
        assert!(hosts.ends_with("10.88.0.7\tweb shop-web\n"), "{hosts}");
        assert_eq!(
            resolv_conf(&net()),
            "nameserver 198.18.0.53\nsearch example.test\n"
        );
        let none = hosts_file("app", None);
        assert!(!none.contains("app"), "no network: no own address line");
    }

    #[test]
    fn names_that_would_inject_lines_are_refused() {
        for bad in ["a b", "a\nb", "-x", ".x", "", "a;b"] {
            let mut n = net();
            n.hosts[0].names = vec![bad.into()];
            assert_eq!(n.validate(), Err(NetworkError::Name(bad.into())), "{bad:?}");
            // And the file writer drops them even if validation was skipped.
            assert!(
                !hosts_file("app", Some(&n)).contains("10.88.0.7"),
                "{bad:?}"
            );
        }
        let mut n = net();
        n.dns_search = vec!["x\nnameserver 1.2.3.4".into()];
        assert!(n.validate().is_err());
        assert!(!resolv_conf(&n).contains("1.2.3.4"));
    }

    #[test]
    fn limits() {
        let mut n = net();
        n.prefix = 31;
        assert_eq!(n.validate(), Err(NetworkError::Prefix(31)));
        let mut n = net();
        n.mtu = 10;
        assert_eq!(n.validate(), Err(NetworkError::Mtu(10)));
        let mut n = net();
        n.dns = vec![Ipv4Addr::LOCALHOST; 4];
        assert_eq!(n.validate(), Err(NetworkError::TooMany));
        net().validate().unwrap();
    }
}
