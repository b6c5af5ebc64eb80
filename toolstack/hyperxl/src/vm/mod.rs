//! VMs: their recorded state, and (as the toolstack grows) their lifecycle.

pub mod state;
