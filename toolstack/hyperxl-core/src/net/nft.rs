//! hyperxl's nftables rules: one `ip hyperxl` table (NAT, published ports, what guests
//! may reach) and one `bridge hyperxl` table (anti-spoofing per vif).
//!
//! Nothing outside these two tables is touched. Per network, its bridge and subnet are
//! elements of sets in the shared base chains; per VM there is one chain in each table,
//! named after the VM's id, reached through a map element keyed by the VM's vif name or
//! published port. Removing a VM deletes its elements and chains, so nothing is left.
//!
//! The rules, with why:
//! - `bridge` prerouting, per vif: frames must carry the VM's MAC and, for IPv4 and ARP,
//!   its address; anything else (IPv6, VLANs, other ether types) is dropped. A guest
//!   cannot impersonate another VM or dom0 on its network.
//! - `ip` forward: traffic between two different hyperxl bridges is dropped (networks
//!   are apart; within one network the bridge switches frames at layer 2 and never
//!   reaches this hook, br_netfilter is not needed); a guest's new connections are
//!   capped per source address (`ct count`), so it cannot fill dom0's conntrack table.
//! - `ip` input: guests reach dom0 itself only for replies, ping (rate-limited) and
//!   published ports (which are DNAT'd before input and so are forwarded, not input).
//! - `ip` prerouting/output: published ports, for packets to any local address
//!   (`fib daddr type local`), 127.0.0.1 included; postrouting masquerades guests'
//!   traffic leaving their network, dom0's loopback-sourced traffic DNAT'd to a guest,
//!   and a guest's traffic to a published port DNAT'd back onto a bridge (hairpin: the
//!   reply must come back through dom0, not straight from the other VM).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::publish::PortMap;

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
  map ports {{ type inet_proto . inet_service : verdict; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local meta l4proto . th dport vmap @ports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local meta l4proto . th dport vmap @ports
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
  map vifs {{ type ifname : verdict; }}
  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
    iifname vmap @vifs
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

/// The per-VM chain names, from the VM's id.
pub fn chains(id: &str) -> (String, String) {
    let short = &id[..id.len().min(12)];
    (format!("vm-{short}"), format!("pub-{short}"))
}

/// What one VM needs: its anti-spoofing chain and, with published ports, its DNAT chain.
pub fn vm_rules(id: &str, vif: &str, mac: &str, ip: Ipv4Addr, ports: &[PortMap]) -> String {
    let (vm, publ) = chains(id);
    let mut s = format!(
        "add chain bridge {TABLE} {vm}\n\
         flush chain bridge {TABLE} {vm}\n\
         add rule bridge {TABLE} {vm} ether saddr != {mac} drop\n\
         add rule bridge {TABLE} {vm} ether type arp arp saddr ether != {mac} drop\n\
         add rule bridge {TABLE} {vm} ether type arp arp saddr ip != {ip} drop\n\
         add rule bridge {TABLE} {vm} ether type ip ip saddr != {ip} drop\n\
         add rule bridge {TABLE} {vm} ether type != {{ ip, arp }} drop\n\
         add element bridge {TABLE} vifs {{ \"{vif}\" : jump {vm} }}\n"
    );
    if !ports.is_empty() {
        s.push_str(&format!(
            "add chain ip {TABLE} {publ}\nflush chain ip {TABLE} {publ}\n"
        ));
        for p in ports {
            let only = p
                .host_ip
                .map(|a| format!("ip daddr {a} "))
                .unwrap_or_default();
            let proto = p.proto.as_str();
            s.push_str(&format!(
                "add rule ip {TABLE} {publ} {only}{proto} dport {} dnat to {ip}:{}\n",
                p.host_port, p.guest_port
            ));
        }
        for p in ports {
            s.push_str(&format!(
                "add element ip {TABLE} ports {{ {} . {} : jump {publ} }}\n",
                p.proto.as_str(),
                p.host_port
            ));
        }
    }
    s
}

/// The statements that remove what [`vm_rules`] added, one per line (each may fail
/// alone if that piece is already gone). `ports` are the `proto . port` keys that jump
/// to the VM's DNAT chain (see [`ports_jumping_to`]).
pub fn vm_removal(id: &str, vif: &str, ports: &[(String, u16)]) -> Vec<String> {
    let (vm, publ) = chains(id);
    let mut out = vec![format!(
        "delete element bridge {TABLE} vifs {{ \"{vif}\" }}"
    )];
    for (proto, port) in ports {
        out.push(format!(
            "delete element ip {TABLE} ports {{ {proto} . {port} }}"
        ));
    }
    out.push(format!("delete chain bridge {TABLE} {vm}"));
    out.push(format!("delete chain ip {TABLE} {publ}"));
    out
}

/// The `ports` map's keys that jump to `chain`, read from `nft list map` output: the
/// kernel's view, so a record that lost its ports still cleans up completely.
pub fn ports_jumping_to(listing: &str, chain: &str) -> Vec<(String, u16)> {
    let start = listing.find("elements = {").map(|i| i + 12);
    let Some(body) = start.map(|i| &listing[i..]) else {
        return Vec::new();
    };
    let body = body.split('}').next().unwrap_or("");
    body.split(',')
        .filter_map(|e| {
            let (key, verdict) = e.split_once(':')?;
            (verdict.split_whitespace().collect::<Vec<_>>() == ["jump", chain]).then_some(())?;
            let (proto, port) = key.split_once('.')?;
            // nft prints the protocol by number in a concatenation's key.
            let proto = match proto.trim() {
                "tcp" | "6" => "tcp",
                "udp" | "17" => "udp",
                _ => return None,
            };
            Some((proto.to_string(), port.trim().parse().ok()?))
        })
        .collect()
}

/// `nft list map ip hyperxl ports`, or nothing.
pub fn list_ports_map() -> String {
    Command::new("nft")
        .args(["list", "map", "ip", TABLE, "ports"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
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

/// Removes statements one transaction at a time when the whole removal is refused (a
/// piece already gone): what is left still goes.
pub fn apply_each(statements: &[String]) {
    if apply(&statements.join("\n")).is_ok() {
        return;
    }
    for s in statements {
        let _ = apply(s);
    }
}

/// Whether hyperxl's base tables exist.
pub fn base_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::super::publish::Proto;
    use super::*;

    #[test]
    fn per_vm_rules_pin_mac_and_address_and_name_their_chains_by_id() {
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
        let s = vm_rules(
            "0123456789abcdef",
            "hx0123456789ab",
            "02:48:0a:58:00:05",
            ip,
            &ports,
        );
        assert!(s.contains(
            "add rule bridge hyperxl vm-0123456789ab ether saddr != 02:48:0a:58:00:05 drop"
        ));
        assert!(s.contains("arp saddr ip != 10.88.0.5 drop"));
        assert!(s.contains("ip saddr != 10.88.0.5 drop"));
        assert!(s.contains("{ \"hx0123456789ab\" : jump vm-0123456789ab }"));
        assert!(s.contains(
            "add rule ip hyperxl pub-0123456789ab tcp dport 8080 dnat to 10.88.0.5:80\n"
        ));
        assert!(
            s.contains("pub-0123456789ab ip daddr 127.0.0.1 udp dport 5353 dnat to 10.88.0.5:53\n")
        );
        assert!(s.contains("ports { udp . 5353 : jump pub-0123456789ab }"));
        let keys = vec![("tcp".to_string(), 8080), ("udp".to_string(), 5353)];
        let rm = vm_removal("0123456789abcdef", "hx0123456789ab", &keys);
        assert_eq!(rm.len(), 5);
        assert!(rm[0].starts_with("delete element bridge hyperxl vifs"));
        assert!(rm[1].contains("ports { tcp . 8080 }"));
        assert!(rm
            .last()
            .unwrap()
            .contains("delete chain ip hyperxl pub-0123456789ab"));
        // Without ports there is no DNAT chain to add.
        assert!(!vm_rules("ab", "hxab", "02:48:0a:58:00:06", ip, &[]).contains("pub-"));
    }

    #[test]
    fn map_listing_is_read_for_one_chain() {
        let listing = "table ip hyperxl {\n\tmap ports {\n\t\ttype inet_proto . inet_service : verdict\n\t\telements = { 6 . 8080 : jump pub-aaaa, 17 . 53 : jump pub-bbbb,\n\t\t\t     tcp . 8443 : jump pub-aaaa }\n\t}\n}\n";
        assert_eq!(
            ports_jumping_to(listing, "pub-aaaa"),
            [("tcp".to_string(), 8080), ("tcp".to_string(), 8443)]
        );
        assert_eq!(
            ports_jumping_to(listing, "pub-bbbb"),
            [("udp".to_string(), 53)]
        );
        assert!(ports_jumping_to("", "pub-aaaa").is_empty());
        assert!(
            ports_jumping_to(listing, "pub-aa").is_empty(),
            "whole names only"
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
