//! `hyperxl cp`'s unpacker on a stream a guest wrote: whatever it accepts or refuses,
//! nothing may appear outside the destination (a sibling directory stays empty), and it
//! never panics.
#![no_main]

use hyperxl_tarcopy::{unpack, Limits, Place};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("a temporary directory");
    let outside = base.path().join("outside");
    let dest = base.path().join("dest");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::create_dir(&dest).expect("dest");
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 256,
        ..Limits::from_guest()
    };
    for place in [Place::Named, Place::Into] {
        let _ = unpack(data, &dest, place, None, &limits);
        let _ = unpack(data, &dest.join("new"), Place::Contents, Some("t"), &limits);
    }
    let escaped: Vec<_> = std::fs::read_dir(base.path())
        .expect("base")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "outside" && n != "dest")
        .collect();
    assert!(escaped.is_empty(), "wrote beside dest: {escaped:?}");
    assert_eq!(
        std::fs::read_dir(&outside).expect("outside").count(),
        0,
        "wrote outside"
    );
});
