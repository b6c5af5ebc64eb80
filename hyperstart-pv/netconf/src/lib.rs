//! IPv4 interface configuration through the kernel's socket ioctls.
//!
//! The guest init is a static binary in an image that may hold no `ip` tool at all, and
//! dom0's hotplug step must be fast, so both configure interfaces directly: an address
//! with its netmask, the MTU, the up flag, a default route, a bridge and its ports. These
//! ioctls (`SIOCSIFADDR`, `SIOCADDRT`, `SIOCBRADDIF`, ...) are older than netlink and
//! cover everything hyperxl needs from IPv4; netlink would add a message codec for no
//! gain here. Every call opens its own `AF_INET` datagram socket, the handle these
//! ioctls are issued on. hyperxl's networks are IPv4 only: [`disable_ipv6`] keeps an
//! interface out of IPv6 altogether (a sysctl, as there is no ioctl for it).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The longest interface name the kernel accepts (`IFNAMSIZ` less its NUL).
pub const MAX_IFNAME: usize = libc::IFNAMSIZ - 1;

// From linux/sockios.h; libc does not export the bridge ones.
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// An interface operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    /// The name is empty, too long, or holds a NUL or '/'.
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// The prefix length is over 32.
    #[error("invalid IPv4 prefix length /{0}")]
    BadPrefix(u8),
    /// The kernel refused.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetconfError {
    let what = what.into();
    move |source| NetconfError::Sys { what, source }
}

/// Checks an interface name as the kernel would.
pub fn check_name(name: &str) -> Result<(), NetconfError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > MAX_IFNAME
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(NetconfError::BadName(name.to_string()));
    }
    Ok(())
}

/// The netmask of a prefix length: 16 -> 255.255.0.0.
pub fn netmask(prefix: u8) -> Result<Ipv4Addr, NetconfError> {
    match prefix {
        0 => Ok(Ipv4Addr::UNSPECIFIED),
        1..=32 => Ok(Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)))),
        _ => Err(NetconfError::BadPrefix(prefix)),
    }
}

fn control_socket() -> Result<OwnedFd, NetconfError> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("opening a control socket")(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetconfError> {
    check_name(name)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux and the kernel reads
    // the family first; transmute_copy copies the bytes.
    unsafe { std::mem::transmute_copy(&sin) }
}

/// Issues one ioctl whose argument is `arg`.
fn ioctl<T>(
    request: libc::c_ulong,
    arg: &mut T,
    what: impl Into<String>,
) -> Result<(), NetconfError> {
    let sock = control_socket()?;
    // SAFETY: every request used here takes a pointer to the struct type the caller
    // passes (ifreq or rtentry, checked at each call site), alive for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        return Err(sys(what)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Turns IPv6 off on the interface (`net.ipv6.conf.NAME.disable_ipv6 = 1`): no
/// link-local address, no duplicate-address, router or multicast-listener packets when
/// it comes up. Call it before [`set_up`]. A kernel without IPv6 has nothing to turn
/// off: that is no error.
pub fn disable_ipv6(name: &str) -> Result<(), NetconfError> {
    check_name(name)?;
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(sys(format!("writing {path}"))),
    }
}

/// Whether an interface of that name exists.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Reads the interface's flags, lets `change` edit them, and writes them back.
fn update_flags(
    name: &str,
    what: &str,
    change: impl FnOnce(libc::c_short) -> libc::c_short,
) -> Result<(), NetconfError> {
    let mut req = ifreq(name)?;
    ioctl(
        libc::SIOCGIFFLAGS,
        &mut req,
        format!("reading {name}'s flags"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = change(flags);
    ioctl(
        libc::SIOCSIFFLAGS,
        &mut req,
        format!("setting {name} {what}"),
    )
}

/// Sets the interface up (and running), keeping its other flags.
pub fn set_up(name: &str) -> Result<(), NetconfError> {
    update_flags(name, "up", |f| {
        f | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short
    })
}

/// Gives the interface an IPv4 address with its prefix length.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetconfError> {
    let mask = netmask(prefix)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(
        libc::SIOCSIFADDR,
        &mut req,
        format!("setting {name}'s address to {addr}"),
    )?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(
        libc::SIOCSIFNETMASK,
        &mut req,
        format!("setting {name}'s netmask to /{prefix}"),
    )
}

/// Sets the interface's MTU.
pub fn set_mtu(name: &str, mtu: u32) -> Result<(), NetconfError> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = i32::try_from(mtu).unwrap_or(i32::MAX);
    ioctl(
        libc::SIOCSIFMTU,
        &mut req,
        format!("setting {name}'s MTU to {mtu}"),
    )
}

/// Adds the default route through `gateway`.
pub fn add_default_route(gateway: Ipv4Addr) -> Result<(), NetconfError> {
    // SAFETY: rtentry is plain old data; all-zero is a valid value of it.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(
        libc::SIOCADDRT,
        &mut rt,
        format!("adding the default route via {gateway}"),
    )
}

/// Creates a bridge (an existing one of that name is not an error).
pub fn add_bridge(name: &str) -> Result<(), NetconfError> {
    check_name(name)?;
    match bridge_ioctl(SIOCBRADDBR, name) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
            Err(sys(format!("creating bridge {name}"))(e))
        }
        _ => Ok(()),
    }
}

/// Issues a bridge ioctl whose argument is the bridge's name.
fn bridge_ioctl(request: libc::c_ulong, name: &str) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let sock = control_socket().map_err(io::Error::other)?;
    // SAFETY: SIOCBRADDBR/SIOCBRDELBR take a pointer to a NUL-terminated name, alive for
    // the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, cname.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets an interface down, keeping its other flags.
pub fn set_down(name: &str) -> Result<(), NetconfError> {
    update_flags(name, "down", |f| f & !(libc::IFF_UP as libc::c_short))
}

/// Deletes a bridge (it must be down; this sets it down first).
pub fn delete_bridge(name: &str) -> Result<(), NetconfError> {
    set_down(name)?;
    bridge_ioctl(SIOCBRDELBR, name).map_err(sys(format!("deleting bridge {name}")))
}

/// Renames an interface (it must be down).
pub fn rename(name: &str, new_name: &str) -> Result<(), NetconfError> {
    check_name(new_name)?;
    let mut req = ifreq(name)?;
    // SAFETY: writing the newname member of the union, a plain char array.
    let dst = unsafe { &mut req.ifr_ifru.ifru_newname };
    for (d, b) in dst.iter_mut().zip(new_name.bytes()) {
        *d = b as libc::c_char;
    }
    ioctl(
        libc::SIOCSIFNAME,
        &mut req,
        format!("renaming {name} to {new_name}"),
    )
}

/// The kernel's index of an interface.
pub fn index(name: &str) -> Result<i32, NetconfError> {
    let mut req = ifreq(name)?;
    ioctl(libc::SIOCGIFINDEX, &mut req, format!("looking up {name}"))?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// Makes `port` a port of `bridge`.
pub fn add_bridge_port(bridge: &str, port: &str) -> Result<(), NetconfError> {
    let ifindex = index(port)?;
    let mut req = ifreq(bridge)?;
    req.ifr_ifru.ifru_ifindex = ifindex;
    ioctl(
        SIOCBRADDIF,
        &mut req,
        format!("adding {port} to bridge {bridge}"),
    )
}

/// Writes a sysctl under `/proc/sys/net/` (e.g. `ipv4/ip_forward`).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetconfError> {
    if key
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(sys(format!("sysctl net/{key}"))(
            io::ErrorKind::InvalidInput.into(),
        ));
    }
    std::fs::write(format!("/proc/sys/net/{key}"), value)
        .map_err(sys(format!("setting net/{key} to {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0).unwrap(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(8).unwrap(), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(netmask(16).unwrap(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(netmask(23).unwrap(), Ipv4Addr::new(255, 255, 254, 0));
        assert_eq!(netmask(32).unwrap(), Ipv4Addr::new(255, 255, 255, 255));
        assert!(matches!(netmask(33), Err(NetconfError::BadPrefix(33))));
    }

    #[test]
    fn names_are_checked_before_any_ioctl() {
        for bad in ["", ".", "..", "a/b", "sixteen-chars-xx", "a b", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(NetconfError::BadName(_))),
                "{bad:?}"
            );
            assert!(matches!(disable_ipv6(bad), Err(NetconfError::BadName(_))));
            assert!(!exists(bad));
        }
        check_name("hx0123456789ab").unwrap();
        check_name("eth0").unwrap();
    }

    #[test]
    fn loopback_is_found_and_a_missing_interface_is_a_clear_error() {
        assert!(index("lo").unwrap() > 0);
        let err = index("hxnosuchif").unwrap_err().to_string();
        assert!(err.contains("looking up hxnosuchif"), "{err}");
    }

    #[test]
    fn sysctl_keys_cannot_escape_proc_sys_net() {
        assert!(sysctl("../../etc/passwd", "x").is_err());
        assert!(sysctl("ipv4//x", "x").is_err());
    }
}
