//! VM networking in dom0: bridges, address leases, the vif, and nftables rules.
//!
//! No daemon: `run` sets everything up before the domain is built and the VM's watcher
//! (or the next reconcile) tears it down when the VM ends. The data path is the
//! kernel's: netback's vif joins a Linux bridge per network (by `hyperxl-vif`, the
//! hotplug step), dom0 holds the gateway address on the bridge, and nftables does NAT,
//! published ports, isolation and anti-spoofing (see [`nft`]).

pub mod nfnl;
pub mod nft;
pub mod publish;
pub mod store;
pub mod subnet;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;

use anyhow::{bail, Context as _};
use hyperxl_contract::net::{HostEntry, Network};
use hyperxl_netconf as netconf;
use serde::{Deserialize, Serialize};

use self::publish::{PortMap, PortRequest, Proto};
use self::store::{NetStore, NetworkDef};
use crate::vm::state::{VmState, VmStore};

/// What `run` asked of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetRequest {
    /// `--network`: a network name; `None` is the default network.
    pub network: Option<String>,
    /// `--network none`.
    pub disabled: bool,
    /// `--ip`.
    pub ip: Option<Ipv4Addr>,
    /// `-p` (and, once the image is known, `-P`'s exposed ports).
    pub publish: Vec<PortRequest>,
    /// `-P`: publish every port the image exposes.
    pub publish_all: bool,
    /// `--dns` (default: dom0's name servers).
    pub dns: Vec<Ipv4Addr>,
    /// `--dns-search`.
    pub dns_search: Vec<String>,
    /// `--add-host` and peers' names.
    pub hosts: Vec<HostEntry>,
}

/// A VM's network as recorded in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// The network's name.
    pub network: String,
    /// Its bridge.
    pub bridge: String,
    /// The VM's address.
    pub ip: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
    /// The gateway (dom0 on the bridge).
    pub gateway: Ipv4Addr,
    /// The VM's MAC.
    pub mac: String,
    /// The vif's name in dom0.
    pub vif: String,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMap>,
}

/// The vif's dom0 name for VM `id`: known before the domain exists, so its rules can be
/// in place before the guest runs.
pub fn vif_name(id: &str) -> String {
    format!("hx{}", &id[..id.len().min(12)])
}

/// `HYPERXL_DEFAULT_NETWORK`: the network of a VM that names none (`none` turns
/// networking off by default, for `run` and for deployments without `ports`).
pub fn default_network_setting() -> Option<String> {
    std::env::var("HYPERXL_DEFAULT_NETWORK")
        .ok()
        .filter(|v| !v.is_empty())
}

/// Name servers for guests: `dom0`'s own from `/etc/resolv.conf` unless they are on
/// loopback (unreachable from a guest), else Google's, as Docker does.
pub fn default_dns() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .take(3)
        .collect();
    if out.is_empty() {
        out = vec![Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(8, 8, 4, 4)];
    }
    out
}

/// Looks the requested network up (defining the default one on first use), before any
/// VM state exists: an unknown network fails here.
pub fn resolve(state_dir: &Path, req: &NetRequest) -> anyhow::Result<Option<NetworkDef>> {
    if req.disabled {
        if !req.publish.is_empty() || req.ip.is_some() {
            bail!("--network none cannot be combined with -p/--publish or --ip");
        }
        return Ok(None);
    }
    let store = NetStore::open(state_dir)?;
    let _lock = store.lock()?;
    let def = match req.network.as_deref() {
        None | Some(store::DEFAULT_NETWORK) => store.default_network()?,
        Some(name) => store.load(name)?,
    };
    if let Some(ip) = req.ip {
        if !def.subnet.is_guest_address(ip) {
            return Err(store::NetStoreError::OutOfRange(ip, def.name.clone(), def.subnet).into());
        }
    }
    Ok(Some(def))
}

/// Creates the network's bridge with dom0's gateway address and turns forwarding on
/// (ioctls and sysctls: cheap, idempotent). The caller holds the store lock.
pub fn ensure_bridge(def: &NetworkDef) -> anyhow::Result<()> {
    if !netconf::exists(&def.bridge) {
        netconf::add_bridge(&def.bridge)?;
        netconf::set_ipv4(&def.bridge, def.gateway(), def.subnet.prefix())?;
    }
    netconf::set_up(&def.bridge)?;
    netconf::sysctl("ipv4/ip_forward", "1")?;
    // Published ports at 127.0.0.1: DNAT'd loopback traffic may leave on the bridge.
    netconf::sysctl(&format!("ipv4/conf/{}/route_localnet", def.bridge), "1")?;
    Ok(())
}

/// Adds the network's elements with `nft`, and hyperxl's tables in the same
/// transaction when they are missing.
fn ensure_base(def: &NetworkDef) -> Result<(), NetError> {
    let elements = nft::network_elements(&def.bridge, &def.subnet.to_string());
    match nft::base_state() {
        nft::BaseState::Current => nft::apply(&elements)?,
        nft::BaseState::Missing => nft::apply(&format!("{}{elements}", nft::base_ruleset()))?,
        nft::BaseState::Older => return Err(NetError::OlderTables),
    }
    Ok(())
}

/// Installs a VM's elements; the network's own (and the tables, after a reboot or a
/// flush) first if they are missing. The network's elements are all added in one
/// transaction, so its bridge in `bridges` stands for all of them.
fn install(def: &NetworkDef, ops: &[nfnl::SetOp]) -> Result<(), NetError> {
    let mut nl = nfnl::Nfnl::open()?;
    let present = match nl.elements(nfnl::Family::Ip, nft::TABLE, "bridges") {
        Ok(listed) => {
            let name = nfnl::ifname(&def.bridge);
            listed.iter().any(|e| e.key == name)
        }
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e.into()),
    };
    if !present {
        ensure_base(def)?;
    }
    match nl.commit(nft::TABLE, ops) {
        // The tables of an older hyperxl lack the sets: say so, not "not found".
        Err(e) if e.is_not_found() && nft::base_state() == nft::BaseState::Older => {
            Err(NetError::OlderTables)
        }
        r => Ok(r?),
    }
}

/// Why a VM's rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `nft` failed on the tables or a network's elements.
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    /// The kernel refused the VM's elements.
    #[error(transparent)]
    Netlink(#[from] nfnl::NfnlError),
    /// An older hyperxl's tables are in place.
    #[error("nftables tables of an older hyperxl are in place: remove its VMs, then run `nft delete table ip hyperxl; nft delete table bridge hyperxl`")]
    OlderTables,
}

/// Whether dom0 itself has something on `port` (a listener another VM's DNAT would
/// shadow, or that would shadow ours).
fn in_use_on_dom0(ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> bool {
    let addr = SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
    let err = match proto {
        Proto::Tcp => TcpListener::bind(addr).err(),
        Proto::Udp => UdpSocket::bind(addr).err(),
    };
    err.is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// A free dom0 port for `-p GUEST` (the kernel's choice, skipping those taken by VMs).
fn ephemeral(proto: Proto, taken: &[PortMap]) -> anyhow::Result<u16> {
    for _ in 0..64 {
        let port = match proto {
            Proto::Tcp => TcpListener::bind("0.0.0.0:0")?.local_addr()?.port(),
            Proto::Udp => UdpSocket::bind("0.0.0.0:0")?.local_addr()?.port(),
        };
        if !taken
            .iter()
            .any(|t| t.proto == proto && t.host_port == port)
        {
            return Ok(port);
        }
    }
    bail!("no free {} port on dom0", proto.as_str())
}

/// Leases an address, checks and assigns published ports, and installs the VM's rules;
/// records the result in the VM's state before the rules exist, so a crash leaves
/// something [`detach`] can find. Returns the guest's side of it.
pub fn attach(
    vms: &VmStore,
    id: &str,
    def: &NetworkDef,
    req: &NetRequest,
    prefer: Option<Ipv4Addr>,
) -> anyhow::Result<(VmNet, Network, PendingRules)> {
    let store = NetStore::open(vms.state_dir())?;
    let lock = store.lock()?;
    ensure_bridge(def).with_context(|| format!("setting up network {}", def.name))?;
    // Ports other live VMs publish.
    let taken: Vec<(PortMap, String)> = vms
        .list()?
        .into_iter()
        .filter(|v| v.id != id && v.status.can_stop())
        .flat_map(|v| {
            let name = v.name.clone();
            v.network.into_iter().flat_map(move |n| {
                n.ports.into_iter().map({
                    let name = name.clone();
                    move |p| (p, name.clone())
                })
            })
        })
        .collect();
    let mut ports: Vec<PortMap> = Vec::new();
    for r in &req.publish {
        let all: Vec<PortMap> = taken
            .iter()
            .map(|(p, _)| *p)
            .chain(ports.iter().copied())
            .collect();
        let host_port = match r.host_port {
            Some(p) => p,
            None => ephemeral(r.proto, &all)?,
        };
        let what = format!("port {host_port}/{}", r.proto.as_str());
        if let Some((_, owner)) = taken
            .iter()
            .find(|(p, _)| p.proto == r.proto && p.host_port == host_port)
        {
            bail!("{what} is already published by VM {owner}");
        }
        if ports
            .iter()
            .any(|p| p.proto == r.proto && p.host_port == host_port)
        {
            bail!("{what} is published twice");
        }
        if in_use_on_dom0(r.host_ip, host_port, r.proto) {
            bail!("{what} is already in use on dom0");
        }
        ports.push(PortMap {
            host_ip: r.host_ip,
            host_port,
            guest_port: r.guest_port,
            proto: r.proto,
        });
    }
    let ip = store.lease(def, id, req.ip, prefer)?;
    let vm_net = VmNet {
        network: def.name.clone(),
        bridge: def.bridge.clone(),
        ip,
        prefix: def.subnet.prefix(),
        gateway: def.gateway(),
        mac: subnet::mac_string(subnet::mac_for(ip)),
        vif: vif_name(id),
        ports,
    };
    let recorded = vms.update(id, |vm| vm.network = Some(vm_net.clone()));
    if let Err(e) = recorded {
        store.release(&def.name, ip, id);
        return Err(e.into());
    }
    let rules = nft::vm_elements(&vm_net.vif, subnet::mac_for(ip), ip, &vm_net.ports);
    // The rules go in while the domain is built (the caller waits before unpausing),
    // still under the store lock, which the rules' thread holds until they are in or
    // undone.
    let pending = {
        let (def, id, net) = (def.clone(), id.to_string(), vm_net.clone());
        std::thread::spawn(move || {
            let _lock = lock;
            let began = std::time::Instant::now();
            let applied = install(&def, &rules);
            crate::vm::timing::span("nft-rules", began.elapsed());
            if applied.is_err() {
                teardown(&store, &id, &net);
            }
            applied
        })
    };
    let guest = Network {
        address: ip,
        prefix: def.subnet.prefix(),
        gateway: Some(def.gateway()),
        mtu: hyperxl_contract::net::DEFAULT_MTU,
        dns: if req.dns.is_empty() {
            default_dns()
        } else {
            req.dns.clone()
        },
        dns_search: req.dns_search.clone(),
        hosts: req.hosts.clone(),
    };
    Ok((vm_net, guest, PendingRules(pending)))
}

/// A VM's rules being installed; [`PendingRules::wait`] before the guest runs. Dropped
/// unwaited (a failed build), the install finishes on its own, and whoever tears the VM
/// down waits for it through the store lock.
pub struct PendingRules(std::thread::JoinHandle<Result<(), NetError>>);

impl PendingRules {
    /// Waits for the rules; on failure they and the address are already gone.
    pub fn wait(self) -> anyhow::Result<()> {
        match self.0.join() {
            Ok(r) => r.context("installing the VM's network rules"),
            Err(_) => bail!("installing the VM's network rules: the installer panicked"),
        }
    }
}

fn teardown(store: &NetStore, id: &str, net: &VmNet) {
    remove_elements(&net.vif, net.ip);
    // Before the address is free again: no successor's connection may be flushed.
    forget_connections(net.ip);
    store.release(&net.network, net.ip, id);
}

/// Deletes every element of the VM with this vif and address, found in the kernel's
/// sets (so a record that lost its ports still cleans up completely): one batch, or
/// one element at a time if the batch is refused (something went meanwhile).
fn remove_elements(vif: &str, ip: Ipv4Addr) {
    let Ok(mut nl) = nfnl::Nfnl::open() else {
        return;
    };
    let mut ops = Vec::new();
    for (family, set) in nft::VM_SETS {
        if let Ok(listed) = nl.elements(family, nft::TABLE, set) {
            ops.extend(nft::vm_removal(family, set, &listed, vif, ip));
        }
    }
    if nl.commit(nft::TABLE, &ops).is_err() {
        for op in &ops {
            let _ = nl.commit(nft::TABLE, std::slice::from_ref(op));
        }
    }
}

/// Deletes dom0's conntrack entries of a VM's address that ended (connections it
/// opened, and those DNAT'ed to it), so the next VM given the address does not inherit
/// them: its cap of new connections (`ct count` per source address) would count a
/// predecessor's flood until those entries expired (30 s for UDP, 5 days for an
/// established TCP connection nobody closed). Best effort, through conntrack(8) of
/// conntrack-tools; without it the entries only expire.
fn forget_connections(ip: std::net::Ipv4Addr) {
    let ip = ip.to_string();
    for side in ["--orig-src", "--reply-src"] {
        let _ = std::process::Command::new("conntrack")
            .args(["-D", "-f", "ipv4", side, &ip])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Removes a VM's rules and frees its address (idempotent, best effort: called by the
/// watcher at the end, by reconcile, and by `rm`).
pub fn detach(state_dir: &Path, vm: &VmState) {
    let Some(net) = &vm.network else { return };
    let Ok(store) = NetStore::open(state_dir) else {
        return;
    };
    let _lock = store.lock();
    // The lease file says whether there is anything left to do.
    let held = store
        .leases(&net.network)
        .is_ok_and(|l| l.iter().any(|(ip, owner)| *ip == net.ip && owner == &vm.id));
    if held {
        teardown(&store, &vm.id, net);
    }
}

/// Removes a network no VM is attached to: its definition, its nftables elements and
/// its bridge.
pub fn remove_network(state_dir: &Path, name: &str) -> anyhow::Result<()> {
    let store = NetStore::open(state_dir)?;
    let _lock = store.lock()?;
    let def = store.load(name)?;
    store.remove(name)?;
    nft::apply_each(&nft::network_removal(&def.bridge, &def.subnet.to_string()));
    if netconf::exists(&def.bridge) {
        netconf::delete_bridge(&def.bridge)
            .with_context(|| format!("removing bridge {}", def.bridge))?;
    }
    Ok(())
}

/// Frees leases whose VM is gone or no longer running (a watcher killed with SIGKILL
/// and nobody reconciled yet, a record removed by hand), with their rules.
pub fn sweep(vms: &VmStore, live: &[VmState]) {
    let Ok(store) = NetStore::open(vms.state_dir()) else {
        return;
    };
    if store.is_empty() {
        return;
    }
    let Ok(_lock) = store.lock() else { return };
    for def in store.list().unwrap_or_default() {
        for (ip, owner) in store.leases(&def.name).unwrap_or_default() {
            let vm = live.iter().find(|v| v.id == owner);
            if vm.is_some_and(|v| v.status.can_stop()) {
                continue;
            }
            // `live` may predate a `run` that recorded its VM and leased since: its record,
            // read now under the lock (a lease is only taken under it, after the record
            // exists), is what counts.
            if vms.load(&owner).is_ok_and(|v| v.status.can_stop()) {
                continue;
            }
            let net = vm.and_then(|v| v.network.clone()).unwrap_or_else(|| VmNet {
                network: def.name.clone(),
                bridge: def.bridge.clone(),
                ip,
                prefix: def.subnet.prefix(),
                gateway: def.gateway(),
                mac: String::new(),
                vif: vif_name(&owner),
                ports: Vec::new(),
            });
            teardown(&store, &owner, &net);
        }
    }
}
