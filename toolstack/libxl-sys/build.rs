//! Generates the libxl bindings with bindgen at build time.
//!
//! See README.md for the pinned Xen version and how to inspect the output.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=xenlight");
    println!("cargo:rustc-link-lib=xentoollog");
    println!("cargo:rustc-link-lib=xenvchan");

    let target = bindgen::RustTarget::stable(80, 0).expect("valid Rust target");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .rust_target(target)
        .rust_edition(bindgen::RustEdition::Edition2021)
        // libxl's enums carry values such as -1 (ERROR_NONSPECIFIC,
        // LIBXL_DOMAIN_TYPE_INVALID): Rust enums would be UB when libxl hands
        // one back, so every enum becomes a typedef plus integer constants,
        // named exactly as in C (`LIBXL_DOMAIN_TYPE_PVH`, `ERROR_FAIL`).
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .allowlist_function("libxl_.*")
        .allowlist_function("xtl_.*")
        .allowlist_function("libxenvchan_.*")
        .allowlist_type("libxenvchan.*")
        .allowlist_type("vchan_interface")
        .allowlist_type("libxl_.*")
        .allowlist_type("xentoollog_.*")
        .allowlist_var("LIBXL_.*")
        .allowlist_var("XTL_.*")
        .allowlist_var("ERROR_.*")
        .allowlist_var("INVALID_DOMID")
        // The stdio stream the xentoollog logger writes to.
        .allowlist_var("stderr")
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on wrapper.h (is libxen-dev installed?)");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
