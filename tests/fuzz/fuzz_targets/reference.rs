//! Image references (`busybox`, `ghcr.io/a/b:tag@sha256:...`): parse, and the printed
//! form parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = hyperxl_image::fuzzing::reference(s);
    }
});
