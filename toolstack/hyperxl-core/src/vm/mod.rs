//! VMs: their recorded state, the spec built for them, and their lifecycle.

pub mod console;
pub mod control;
pub mod copy;
pub mod disk;
pub mod exec;
pub mod files;
pub mod host;
pub mod launch;
pub mod logs;
pub mod machine;
pub mod monitor;
pub mod pool;
pub mod reconcile;
pub mod spec;
pub mod state;
pub mod timing;
