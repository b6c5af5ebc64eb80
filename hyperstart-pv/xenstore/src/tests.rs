//! Client tests against the in-memory fake xenstored.

use std::time::Duration;

use crate::fake::FakeXenstored;
use crate::{Access, Perm, TxId, WatchEvent, Xenstore, XsErrno};

fn guest() -> Xenstore<FakeXenstored> {
    let mut f = FakeXenstored::new(5);
    f.put(
        "/local/domain/5",
        b"",
        vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
    );
    f.put(
        "/local/domain/5/data",
        b"",
        vec![Perm::new(Access::Both, 5)],
    );
    f.put(
        "/local/domain/5/hyperxl/spec",
        br#"{"version":1}"#,
        vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
    );
    Xenstore::new(f)
}

#[test]
fn read_relative_key() {
    let mut xs = guest();
    assert_eq!(xs.read("hyperxl/spec").unwrap(), br#"{"version":1}"#);
    assert_eq!(
        xs.read_string("/local/domain/5/hyperxl/spec").unwrap(),
        r#"{"version":1}"#
    );
}

#[test]
fn missing_key_is_enoent() {
    let mut xs = guest();
    let e = xs.read("nope").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.to_string(), "xenstore read nope: ENOENT");
}

#[test]
fn guest_cannot_write_spec() {
    let mut xs = guest();
    let e = xs.write("hyperxl/spec", b"x").unwrap_err();
    assert_eq!(e.errno(), Some(&XsErrno::Access));
}

#[test]
fn write_then_read_and_directory() {
    let mut xs = guest();
    xs.write("data/hyperxl/state", b"started").unwrap();
    xs.write("data/hyperxl/exit-code", b"7").unwrap();
    assert_eq!(xs.read("data/hyperxl/exit-code").unwrap(), b"7");
    let mut d = xs.directory("data/hyperxl").unwrap();
    d.sort();
    assert_eq!(d, vec!["exit-code", "state"]);
    xs.rm("data/hyperxl").unwrap();
    assert!(xs.read("data/hyperxl/state").unwrap_err().is_not_found());
}

#[test]
fn write_sends_value_without_trailing_nul_in_one_message() {
    let mut xs = guest();
    xs.write("data/k", b"v").unwrap();
    let sent = xs.transport_mut().sent.last().unwrap().clone();
    assert_eq!(&sent[16..], b"data/k\0v");
    assert_eq!(&sent[0..4], &11u32.to_ne_bytes());
}

#[test]
fn perms_roundtrip() {
    let mut xs = Xenstore::new(FakeXenstored::new(0));
    xs.mkdir("/local/domain/7/hyperxl").unwrap();
    let perms = vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 7)];
    xs.set_perms("/local/domain/7/hyperxl", &perms).unwrap();
    assert_eq!(xs.get_perms("/local/domain/7/hyperxl").unwrap(), perms);
}

#[test]
fn watch_fires_initially_and_on_change() {
    let mut xs = guest();
    xs.watch("data/ctl", "tok").unwrap();
    let first = xs.next_watch_event(Some(Duration::ZERO)).unwrap().unwrap();
    assert_eq!(
        first,
        WatchEvent {
            path: "data/ctl".into(),
            token: "tok".into()
        }
    );
    assert!(xs.next_watch_event(Some(Duration::ZERO)).unwrap().is_none());
    xs.write("data/ctl", b"poweroff").unwrap();
    let ev = xs.next_watch_event(None).unwrap().unwrap();
    assert_eq!(ev.path, "data/ctl");
    xs.unwatch("data/ctl", "tok").unwrap();
    xs.write("data/ctl", b"x").unwrap();
    assert!(xs.next_watch_event(Some(Duration::ZERO)).unwrap().is_none());
}

#[test]
fn events_interleaved_with_replies_are_queued() {
    let mut xs = guest();
    xs.transport_mut()
        .inject
        .push(("control/shutdown".into(), "shut".into()));
    assert_eq!(xs.read("hyperxl/spec").unwrap(), br#"{"version":1}"#);
    assert_eq!(xs.pending_watch_events(), 1);
    let ev = xs.next_watch_event(Some(Duration::ZERO)).unwrap().unwrap();
    assert_eq!(ev.token, "shut");
}

#[test]
fn transactions() {
    let mut xs = Xenstore::new(FakeXenstored::new(0));
    let tx = xs.transaction_start().unwrap();
    assert_eq!(tx, TxId(1));
    xs.write_tx(tx, "/a", b"1").unwrap();
    xs.transaction_end(tx, true).unwrap();
    let e = xs.transaction_end(TxId(99), true).unwrap_err();
    assert_eq!(e.errno(), Some(&XsErrno::Again));
    let sent = xs.transport_mut().sent.last().unwrap().clone();
    assert_eq!(&sent[8..12], &99u32.to_ne_bytes());
    assert_eq!(&sent[16..], b"T\0");
}

#[test]
fn domain_path() {
    let mut xs = guest();
    assert_eq!(xs.get_domain_path(5).unwrap(), "/local/domain/5");
}

#[test]
fn unknown_errno_keeps_its_name() {
    assert_eq!(XsErrno::from_name("EWEIRD").name(), "EWEIRD");
    assert_eq!(XsErrno::from_name("EACCES"), XsErrno::Access);
}
