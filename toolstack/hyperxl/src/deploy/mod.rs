//! Deployments: several VMs described in one TOML file ([`file`]), started in dependency
//! order, and brought in line with the file on a second `up` ([`plan`]).
//!
//! Everything here is pure: no Xen, no state dir.

// Wired into the CLI by `up`/`down`.
#![allow(dead_code)]

pub mod error;
pub mod file;
mod order;
pub mod plan;
mod raw;
pub mod restart;

#[cfg(test)]
mod fixtures;
