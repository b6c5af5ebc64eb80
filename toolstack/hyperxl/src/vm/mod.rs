//! VMs: their recorded state, the spec built for them, and their lifecycle.

pub mod launch;
pub mod reconcile;
pub mod spec;
pub mod state;
