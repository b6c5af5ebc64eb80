//! A small safe layer over libxl: context, domain config builder, lifecycle.
