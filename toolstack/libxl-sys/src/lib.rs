//! Raw bindgen bindings to libxl, the Xen toolstack library (Xen 4.17,
//! `LIBXL_API_VERSION 0x041300`), and to the xentoollog logger it uses.
//!
//! Everything here is generated from `wrapper.h` by `build.rs`; see README.md.
//! Use the `libxl` crate for a safe interface. Facts to keep in mind when using
//! these bindings directly:
//!
//! * enums are plain integer constants named as in C (`LIBXL_DOMAIN_TYPE_PVH`,
//!   `ERROR_FAIL`), because libxl uses negative values such as -1;
//! * every string stored in a libxl struct is freed by that struct's
//!   `*_dispose`, so it must come from `malloc` (e.g. `libc::strdup`);
//! * call `libxl_*_init` before use and `libxl_*_init_type` before touching a
//!   keyed union (`libxl_domain_build_info_init_type` for PV/PVH);
//! * `static inline` helpers in the headers are not generated.

// Generated code: C names, no docs, u128 layout quirks. Allowed here only.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    missing_docs,
    improper_ctypes,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
