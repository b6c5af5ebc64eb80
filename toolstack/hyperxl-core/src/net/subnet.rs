//! IPv4 subnets and the addresses hyperxl derives from them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 subnet such as `10.88.0.0/16`: the gateway is its first host, guests get the
/// rest (the last address is the broadcast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

/// A subnet that does not parse or leaves no room for guests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet {0:?}: expected an IPv4 network such as 10.88.0.0/16, with a prefix from /8 to /30")]
pub struct SubnetError(pub String);

impl Subnet {
    /// The network's address and prefix length, checked.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Self, SubnetError> {
        if !(8..=30).contains(&prefix) || u32::from(base) & !Self::mask_bits(prefix) != 0 {
            return Err(SubnetError(format!("{base}/{prefix}")));
        }
        Ok(Self { base, prefix })
    }

    fn mask_bits(prefix: u8) -> u32 {
        u32::MAX << (32 - u32::from(prefix))
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix) == u32::from(self.base)
    }

    /// dom0's address on the network: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// The addresses guests may have, lowest first: all hosts but the gateway.
    pub fn guest_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.base) + 2;
        let broadcast = u32::from(self.base) | !Self::mask_bits(self.prefix);
        (first..broadcast).map(Ipv4Addr::from)
    }

    /// Whether `ip` may be a guest's address here.
    pub fn is_guest_address(&self, ip: Ipv4Addr) -> bool {
        let broadcast = u32::from(self.base) | !Self::mask_bits(self.prefix);
        self.contains(ip) && u32::from(ip) > u32::from(self.base) + 1 && u32::from(ip) < broadcast
    }

    /// Whether two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Self::mask_bits(p);
        u32::from(self.base) & m == u32::from(other.base) & m
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SubnetError(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Subnet::new(base, prefix).map_err(|_| bad())
    }
}

impl TryFrom<String> for Subnet {
    type Error = SubnetError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// The MAC of the guest with address `ip`: locally administered (`02:`), `48` for
/// hyperxl, then the four address bytes. Unique wherever the address is.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x48, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_ranges() {
        let s: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let mut g = s.guest_addresses();
        assert_eq!(g.next(), Some(Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(s.guest_addresses().count(), 65536 - 3);
        assert!(s.is_guest_address(Ipv4Addr::new(10, 88, 255, 254)));
        assert!(
            !s.is_guest_address(Ipv4Addr::new(10, 88, 255, 255)),
            "broadcast"
        );
        assert!(!s.is_guest_address(Ipv4Addr::new(10, 88, 0, 1)), "gateway");
        assert!(!s.is_guest_address(Ipv4Addr::new(10, 89, 0, 5)));
        let small: Subnet = "198.19.7.0/30".parse().unwrap();
        assert_eq!(
            small.guest_addresses().collect::<Vec<_>>(),
            [Ipv4Addr::new(198, 19, 7, 2)]
        );
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/31",
            "10.0.0.0/7",
            "x/16",
            "10.88.0.0/16x",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"10.88.0.0/16\"");
        assert_eq!(serde_json::from_str::<Subnet>(&json).unwrap(), s);
    }

    #[test]
    fn overlaps() {
        let a: Subnet = "10.88.0.0/16".parse().unwrap();
        assert!(a.overlaps(&"10.88.4.0/24".parse().unwrap()));
        assert!(!a.overlaps(&"10.89.0.0/16".parse().unwrap()));
        assert!(a.overlaps(&"10.0.0.0/8".parse().unwrap()));
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(
            mac_string(mac_for(Ipv4Addr::new(10, 88, 0, 5))),
            "02:48:0a:58:00:05"
        );
        assert_eq!(mac_for(Ipv4Addr::new(10, 88, 0, 5))[0] & 1, 0, "unicast");
    }
}
