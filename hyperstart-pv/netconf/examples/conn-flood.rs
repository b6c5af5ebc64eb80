//! `conn-flood ADDR PORT COUNT`: a hostile guest's connection flood, for the network
//! e2e. Sends one UDP datagram from each of COUNT fresh sockets (a new source port, so a
//! new connection in dom0's conntrack each) to ADDR:PORT, and prints how many sends the
//! guest's own stack accepted (`sent N`). Without hyperxl's per-guest cap every one
//! of them would be an entry in dom0's table.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [addr, port, count] => addr
            .parse::<Ipv4Addr>()
            .ok()
            .zip(port.parse::<u16>().ok())
            .zip(count.parse::<u32>().ok()),
        _ => None,
    };
    let Some(((addr, port), count)) = parsed else {
        eprintln!("usage: conn-flood ADDR PORT COUNT");
        return ExitCode::from(2);
    };
    let mut sent = 0u32;
    for _ in 0..count {
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            continue;
        };
        if sock.send_to(b"x", (addr, port)).is_ok() {
            sent += 1;
        }
    }
    println!("sent {sent}");
    ExitCode::SUCCESS
}
