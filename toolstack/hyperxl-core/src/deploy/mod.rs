//! Deployments: several VMs described in one TOML file ([`file`]), started in dependency
//! order, and brought in line with the file on a second `up` ([`plan`]).
//!
//! [`file`], [`plan`] and [`restart`] are pure (no Xen, no state dir); [`apply`] carries
//! a deployment out through the ordinary VM lifecycle.

pub mod apply;
pub mod error;
pub mod file;
mod order;
pub mod plan;
mod raw;
pub mod restart;

#[cfg(test)]
mod fixtures;
