//! Layer tars (plain, gzip or zstd; up to 4 split on `HXLAYER!`) through the merge's
//! index and emit passes, as `load`/`pull` build a disk (without `mksquashfs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hyperxl_image::fuzzing::merge_layers(data);
});
