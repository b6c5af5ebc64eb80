//! hyperxl's nftables rules: one `ip hyperxl` table (NAT, published ports, what guests
//! may reach) and one `bridge hyperxl` table (anti-spoofing per vif).
//!
//! Nothing outside these two tables is touched. The tables, chains and sets are written
//! once, by `nft`, when the first network is set up; per network, its bridge and subnet
//! are elements of sets (also by `nft`, at network set-up). Per VM there are no rules of
//! its own, only elements of sets and maps the shared chains look up, added and removed
//! in one netlink batch ([`super::nfnl`]): the vif, its MAC and address, the published
//! ports. Removing a VM deletes its elements, so nothing is left.
//!
//! The rules, with why:
//! - `bridge` prerouting, for a vif in `vifs`: frames must carry the MAC paired with
//!   that vif in `vif_mac` and, for IPv4 and ARP, the address paired with it in
//!   `vif_ip`; anything else (IPv6, VLANs, other ether types) is dropped. A guest cannot
//!   impersonate another VM or dom0 on its network.
//! - `ip` forward: traffic between two different hyperxl bridges is dropped (networks
//!   are apart; within one network the bridge switches frames at layer 2 and never
//!   reaches this hook, br_netfilter is not needed); a guest's new connections are
//!   capped per source address (`ct count`), so it cannot fill dom0's conntrack table.
//! - `ip` input: guests reach dom0 itself only for replies, ping (rate-limited) and
//!   published ports (which are DNAT'd before input and so are forwarded, not input).
//! - `ip` prerouting/output: published ports, for packets to any local address
//!   (`fib daddr type local`), 127.0.0.1 included, DNAT'd through the maps `ports`
//!   (`proto . port : address . port`) and `addr_ports` (the same, for one dom0
//!   address); postrouting masquerades guests' traffic leaving their network, dom0's
//!   loopback-sourced traffic DNAT'd to a guest, and a guest's traffic to a published
//!   port DNAT'd back onto a bridge (hairpin: the reply must come back through dom0, not
//!   straight from the other VM).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::nfnl::{self, Element, Family, SetOp};
use super::publish::{PortMap, Proto};

/// The table both families use.
pub const TABLE: &str = "hyperxl";
/// New connections one guest address may have tracked at once.
pub const CONNTRACK_PER_GUEST: u32 = 4096;

/// An `nft` run that failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run.
    #[error("running nft (install Debian's nftables package): {0}")]
    Spawn(std::io::Error),
    /// `nft` refused the script.
    #[error("nft: {0}")]
    Refused(String),
}

/// The base tables, sets and chains: created once, when the first network is set up.
pub fn base_ruleset() -> String {
    format!(
        r#"table ip {TABLE} {{
  set bridges {{ type ifname; }}
  set subnets {{ type ipv4_addr; flags interval; }}
  set same {{ type ifname . ifname; }}
  set guest_conns {{ type ipv4_addr; size 65535; flags dynamic; }}
  map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map addr_ports {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat to ip daddr . meta l4proto . th dport map @addr_ports
    fib daddr type local dnat to meta l4proto . th dport map @ports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat to ip daddr . meta l4proto . th dport map @addr_ports
    fib daddr type local dnat to meta l4proto . th dport map @ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @subnets oifname != @bridges masquerade
    ip saddr 127.0.0.0/8 oifname @bridges masquerade
    ct status dnat ip saddr @subnets oifname @bridges masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname . oifname @same accept
    iifname @bridges oifname @bridges drop
    iifname @bridges ct state new add @guest_conns {{ ip saddr ct count over {CONNTRACK_PER_GUEST} }} drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname @bridges ct state established,related accept
    iifname @bridges icmp type echo-request limit rate 20/second accept
    iifname @bridges drop
  }}
}}
table bridge {TABLE} {{
  set vifs {{ type ifname; }}
  set vif_mac {{ type ifname . ether_addr; }}
  set vif_ip {{ type ifname . ipv4_addr; }}
  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
    iifname @vifs jump guest
  }}
  chain guest {{
    iifname . ether saddr != @vif_mac drop
    ether type arp iifname . arp saddr ether != @vif_mac drop
    ether type arp iifname . arp saddr ip != @vif_ip drop
    ether type ip iifname . ip saddr != @vif_ip drop
    ether type != {{ ip, arp }} drop
  }}
}}
"#
    )
}

/// Adds a network's bridge and subnet to the base sets (idempotent).
pub fn network_elements(bridge: &str, subnet: &str) -> String {
    format!(
        "add element ip {TABLE} bridges {{ \"{bridge}\" }}\n\
         add element ip {TABLE} subnets {{ {subnet} }}\n\
         add element ip {TABLE} same {{ \"{bridge}\" . \"{bridge}\" }}\n"
    )
}

/// Removes a network's elements.
pub fn network_removal(bridge: &str, subnet: &str) -> String {
    format!(
        "delete element ip {TABLE} bridges {{ \"{bridge}\" }}\n\
         delete element ip {TABLE} subnets {{ {subnet} }}\n\
         delete element ip {TABLE} same {{ \"{bridge}\" . \"{bridge}\" }}\n"
    )
}

/// The elements that give one VM its network: its vif, the vif's MAC and address, and
/// its published ports (one netlink batch, see [`super::nfnl`]).
pub fn vm_elements(vif: &str, mac: [u8; 6], ip: Ipv4Addr, ports: &[PortMap]) -> Vec<SetOp> {
    let add = |family, set, key, data| SetOp {
        delete: false,
        family,
        set,
        key,
        data,
    };
    let name = nfnl::ifname(vif);
    let mut ops = vec![
        add(
            Family::Bridge,
            "vif_mac",
            nfnl::concat(&[&name, &mac]),
            None,
        ),
        add(
            Family::Bridge,
            "vif_ip",
            nfnl::concat(&[&name, &ip.octets()]),
            None,
        ),
        // Last: a vif is checked from the moment it is in `vifs` (the batch is atomic,
        // but its order is also the order of the kernel's work).
        add(Family::Bridge, "vifs", name, None),
    ];
    for p in ports {
        let (set, key) = port_key(p.host_ip, p.proto, p.host_port);
        let to = nfnl::concat(&[&ip.octets(), &p.guest_port.to_be_bytes()]);
        ops.push(add(Family::Ip, set, key, Some(to)));
    }
    ops
}

/// The map and key of a published port.
fn port_key(host_ip: Option<Ipv4Addr>, proto: Proto, port: u16) -> (&'static str, Vec<u8>) {
    let proto = [proto.number()];
    let port = port.to_be_bytes();
    match host_ip {
        Some(a) => ("addr_ports", nfnl::concat(&[&a.octets(), &proto, &port])),
        None => ("ports", nfnl::concat(&[&proto, &port])),
    }
}

/// The sets and maps that hold per-VM elements, with what of an element names its VM:
/// the vif as the key's start (bridge sets) or the address as the value's (port maps).
pub const VM_SETS: [(Family, &str); 5] = [
    (Family::Bridge, "vifs"),
    (Family::Bridge, "vif_mac"),
    (Family::Bridge, "vif_ip"),
    (Family::Ip, "ports"),
    (Family::Ip, "addr_ports"),
];

/// Of the elements listed in one of [`VM_SETS`], the deletions of those that belong to
/// the VM with this vif and address: found in the kernel's view, so a record that lost
/// its ports or MAC still cleans up completely.
pub fn vm_removal(
    family: Family,
    set: &'static str,
    listed: &[Element],
    vif: &str,
    ip: Ipv4Addr,
) -> Vec<SetOp> {
    let name = nfnl::ifname(vif);
    listed
        .iter()
        .filter(|e| match family {
            Family::Bridge => e.key.starts_with(&name),
            Family::Ip => e.data.as_ref().is_some_and(|d| d.starts_with(&ip.octets())),
        })
        .map(|e| SetOp {
            delete: true,
            family,
            set,
            key: e.key.clone(),
            data: None,
        })
        .collect()
}

/// Runs `nft -f -` on `script` (one transaction: all of it or nothing).
pub fn apply(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err
        .lines()
        .find(|l| l.contains("Error"))
        .or_else(|| err.lines().next())
        .unwrap_or("failed")
        .trim();
    Err(NftError::Refused(first.to_string()))
}

/// Applies each line of `script` as its own transaction when the whole is refused (a
/// piece already gone): what is left still goes.
pub fn apply_each(script: &str) {
    if apply(script).is_ok() {
        return;
    }
    for line in script.lines() {
        let _ = apply(line);
    }
}

/// Whether hyperxl's base tables exist, and in this layout (an older hyperxl's tables
/// had per-VM chains and no `vif_ip` set).
pub fn base_state() -> BaseState {
    let listed = |family: &str, set: &str| {
        Command::new("nft")
            .args(["list", "set", family, TABLE, set])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if listed("bridge", "vif_ip") {
        BaseState::Current
    } else if Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        BaseState::Older
    } else {
        BaseState::Missing
    }
}

/// What [`base_state`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseState {
    /// No hyperxl tables.
    Missing,
    /// This hyperxl's tables.
    Current,
    /// Tables of an older hyperxl, with another layout.
    Older,
}

#[cfg(test)]
mod tests {
    use super::super::publish::Proto;
    use super::*;

    #[test]
    fn per_vm_elements_pin_mac_and_address_and_publish_ports() {
        let ports = [
            PortMap {
                host_ip: None,
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp,
            },
            PortMap {
                host_ip: Some(Ipv4Addr::LOCALHOST),
                host_port: 5353,
                guest_port: 53,
                proto: Proto::Udp,
            },
        ];
        let ip = Ipv4Addr::new(10, 88, 0, 5);
        let mac = [2, 0x48, 10, 88, 0, 5];
        let ops = vm_elements("hx0123456789ab", mac, ip, &ports);
        let find = |set: &str| ops.iter().find(|o| o.set == set).unwrap();
        let vif = nfnl::ifname("hx0123456789ab");
        assert_eq!(find("vif_mac").key, [&vif[..], &mac, &[0, 0]].concat());
        assert_eq!(find("vif_ip").key, [&vif[..], &[10, 88, 0, 5]].concat());
        assert_eq!(find("vifs").key, vif);
        assert!(ops.iter().all(|o| !o.delete));
        // The vif is enabled last, after its MAC and address.
        assert_eq!(ops[2].set, "vifs");
        let p = find("ports");
        assert_eq!(p.family, Family::Ip);
        assert_eq!(p.key, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(p.data.as_deref(), Some(&[10, 88, 0, 5, 0, 80, 0, 0][..]));
        let a = find("addr_ports");
        assert_eq!(a.key, [127, 0, 0, 1, 17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
        assert_eq!(a.data.as_deref(), Some(&[10, 88, 0, 5, 0, 53, 0, 0][..]));
        assert_eq!(vm_elements("hxab", mac, ip, &[]).len(), 3);
    }

    #[test]
    fn removal_takes_only_this_vms_elements_from_the_kernels_listing() {
        let el = |key: Vec<u8>, data: Option<Vec<u8>>| Element { key, data };
        let mine = nfnl::ifname("hxaaaa");
        let other = nfnl::ifname("hxaaaab");
        let listed = [
            el([&mine[..], &[10, 88, 0, 5]].concat(), None),
            el([&other[..], &[10, 88, 0, 6]].concat(), None),
        ];
        let rm = vm_removal(
            Family::Bridge,
            "vif_ip",
            &listed,
            "hxaaaa",
            Ipv4Addr::new(10, 88, 0, 5),
        );
        assert_eq!(
            rm.len(),
            1,
            "a longer vif name sharing a prefix is not ours"
        );
        assert!(rm[0].delete && rm[0].key == listed[0].key && rm[0].data.is_none());
        let ports = [
            el(
                vec![6, 0, 0, 0, 0, 80, 0, 0],
                Some(vec![10, 88, 0, 5, 0, 80, 0, 0]),
            ),
            el(
                vec![6, 0, 0, 0, 0, 81, 0, 0],
                Some(vec![10, 88, 0, 50, 0, 80, 0, 0]),
            ),
            el(
                vec![17, 0, 0, 0, 0, 53, 0, 0],
                Some(vec![10, 88, 0, 5, 0, 53, 0, 0]),
            ),
        ];
        let rm = vm_removal(
            Family::Ip,
            "ports",
            &ports,
            "hxaaaa",
            Ipv4Addr::new(10, 88, 0, 5),
        );
        assert_eq!(
            rm.iter().map(|o| o.key[5]).collect::<Vec<_>>(),
            [80, 53],
            "matched by the whole address, not a prefix of it"
        );
    }

    #[test]
    fn base_isolates_networks_and_dom0() {
        let b = base_ruleset();
        assert!(b.contains("iifname @bridges oifname @bridges drop"));
        assert!(b.contains("iifname @bridges drop"));
        assert!(b.contains("ct count over 4096"));
        assert!(network_elements("hyperxl0", "10.88.0.0/16")
            .contains("same { \"hyperxl0\" . \"hyperxl0\" }"));
    }
}
