//! The xenstore wire decoder: the input is everything xenstored (or, for the guest's
//! init, dom0 through xenstored) sends back. A client over a transport that replays it
//! runs a fixed round of requests, so headers, payloads, watch events interleaved with
//! replies, error replies, permission lists and transaction ids are all decoded from it.
//! Requests number from 1, so a reply frame matches request N when its req_id is N.
#![no_main]

use std::io;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xenstore_wire::wire::{split_nul, Header, HEADER_LEN};
use xenstore_wire::{Perm, Transport, TxId, Xenstore};

/// Replays the input as the server's side of the connection; what the client sends is
/// dropped.
struct Replay<'a> {
    data: &'a [u8],
}

impl Transport for Replay<'_> {
    fn send(&mut self, _msg: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.data.len() < buf.len() {
            self.data = &[];
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (head, rest) = self.data.split_at(buf.len());
        buf.copy_from_slice(head);
        self.data = rest;
        Ok(())
    }

    fn wait_readable(&mut self, _timeout: Option<Duration>) -> io::Result<bool> {
        Ok(!self.data.is_empty())
    }
}

fuzz_target!(|data: &[u8]| {
    // The pure decoders on their own.
    if let Some(h) = data.first_chunk::<HEADER_LEN>() {
        if let Ok(h) = Header::decode(h) {
            assert_eq!(Header::decode(&h.encode()).ok(), Some(h));
        }
    }
    let _ = split_nul(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<Perm>();
    }

    // A client session against the replayed stream, until it runs dry.
    let mut xs = Xenstore::new(Replay { data });
    for round in 0..64 {
        if xs.transport_mut().data.is_empty() {
            break;
        }
        let _ = match round % 9 {
            0 => xs.read("hyperxl/spec").map(drop),
            1 => xs.directory("data").map(drop),
            2 => xs.get_perms("data/hyperxl").map(drop),
            3 => xs.watch("control/shutdown", "tok").map(drop),
            4 => xs.transaction_start().map(drop),
            5 => xs.write_tx(TxId(1), "data/state", b"running"),
            6 => xs.transaction_end(TxId(1), true),
            7 => xs.get_domain_path(7).map(drop),
            _ => xs.next_watch_event(Some(Duration::ZERO)).map(drop),
        };
    }
});
