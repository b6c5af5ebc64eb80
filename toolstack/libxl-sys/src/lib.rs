//! Raw bindgen bindings to libxl (Xen 4.17, LIBXL_API_VERSION 0x041300).
