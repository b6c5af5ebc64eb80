//! hyperxl's nftables tables and its netlink element batches against the running
//! kernel, in a network namespace of their own (root and Debian's `nft` needed, as on
//! dom0 and in CI; nothing outside the namespace is touched and no packet is sent).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use hyperxl_core::net::nfnl::{Family, Nfnl, SetOp};
use hyperxl_core::net::nft;
use hyperxl_core::net::publish::{PortMap, Proto};

fn nft_run(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (Debian's nftables) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn vm_elements_go_in_and_out_of_the_kernels_tables() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    // This test's thread only (and the nft processes it forks).
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace");
    let script = format!(
        "{}{}",
        nft::base_ruleset(),
        nft::network_elements("hxbr0", "10.88.0.0/16")
    );
    nft_run(&["-f", "-"], &script);
    assert_eq!(nft::base_state(), nft::BaseState::Current);

    let a = Ipv4Addr::new(10, 88, 0, 5);
    let b = Ipv4Addr::new(10, 88, 0, 6);
    let port = |host_ip, host_port, guest_port, proto| PortMap {
        host_ip,
        host_port,
        guest_port,
        proto,
    };
    let a_ports = [
        port(None, 8080, 80, Proto::Tcp),
        port(Some(Ipv4Addr::LOCALHOST), 5353, 53, Proto::Udp),
    ];
    let mut nl = Nfnl::open().unwrap();
    let a_ops = nft::vm_elements("hxaaaa", [2, 0x48, 10, 88, 0, 5], a, &a_ports);
    nl.commit(nft::TABLE, &a_ops).unwrap();
    // Adding what is there is not an error (a retried run).
    nl.commit(nft::TABLE, &a_ops).unwrap();
    let b_ops = nft::vm_elements(
        "hxbbbb",
        [2, 0x48, 10, 88, 0, 6],
        b,
        &[port(None, 8081, 80, Proto::Tcp)],
    );
    nl.commit(nft::TABLE, &b_ops).unwrap();
    let listing = nft_run(&["list", "ruleset"], "");
    for want in [
        r#""hxaaaa" . 02:48:0a:58:00:05"#,
        r#""hxaaaa" . 10.88.0.5"#,
        r#""hxbbbb" . 10.88.0.6"#,
        "tcp . 8080 : 10.88.0.5 . 80",
        "tcp . 8081 : 10.88.0.6 . 80",
        "127.0.0.1 . udp . 5353 : 10.88.0.5 . 53",
    ] {
        assert!(listing.contains(want), "{want} not in:\n{listing}");
    }

    // A port another VM holds: the whole batch is refused, and none of it stays.
    let c_ops = nft::vm_elements(
        "hxcccc",
        [2, 0x48, 10, 88, 0, 7],
        Ipv4Addr::new(10, 88, 0, 7),
        &[port(None, 8080, 80, Proto::Tcp)],
    );
    assert!(nl.commit(nft::TABLE, &c_ops).is_err());
    assert!(!nft_run(&["list", "ruleset"], "").contains("hxcccc"));

    // Removal finds A's elements in the kernel's listing, B's stay.
    let mut rm: Vec<SetOp> = Vec::new();
    for (family, set) in nft::VM_SETS {
        let listed = nl.elements(family, nft::TABLE, set).unwrap();
        rm.extend(nft::vm_removal(family, set, &listed, "hxaaaa", a));
    }
    assert_eq!(rm.len(), 5, "{rm:?}");
    nl.commit(nft::TABLE, &rm).unwrap();
    let listing = nft_run(&["list", "ruleset"], "");
    assert!(!listing.contains("hxaaaa"), "{listing}");
    assert!(!listing.contains("10.88.0.5"), "{listing}");
    assert!(listing.contains("tcp . 8081 : 10.88.0.6 . 80"), "{listing}");
    // Deleting it again: not found, said as such.
    let err = nl.commit(nft::TABLE, &rm[..1]).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // A batch refused at its first message leaves the kernel's replies to the others
    // queued; the next batch on the socket must not take them for its own.
    assert!(nl.commit(nft::TABLE, &rm).unwrap_err().is_not_found());
    nl.commit(nft::TABLE, &a_ops).unwrap();
    // A set that does not exist.
    let err = nl
        .elements(Family::Ip, nft::TABLE, "no-such-set")
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}
