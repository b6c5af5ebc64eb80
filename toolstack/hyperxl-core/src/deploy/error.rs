//! Errors of the deployment file: one line each, `FILE:LINE: message`.

use std::io;
use std::path::PathBuf;

use super::file::RESERVED_LABEL_PREFIX;
use super::restart::RestartError;
use crate::vm::machine::{MachineError, MAX_VCPUS};

/// Errors loading a deployment file.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The file could not be read.
    #[error("{}: reading the deployment file: {source}", path.display())]
    Read {
        /// The deployment file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a valid deployment.
    #[error("{}:{line}: {problem}", file.display())]
    Invalid {
        /// The deployment file.
        file: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// What is wrong there.
        problem: Box<Problem>,
    },
}

/// What is wrong at one place of a deployment file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Not TOML, or TOML of the wrong shape (unknown key, wrong type): the parser's
    /// message, on one line.
    #[error("{0}")]
    Toml(String),
    /// The same `[vm.NAME]` table twice.
    #[error("duplicate VM {0:?}: each [vm.NAME] table may appear once")]
    DuplicateVm(String),
    /// `name = ...` is not a valid name.
    #[error(
        "invalid deployment name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 63 characters)"
    )]
    BadName(String),
    /// No `name`, and the file stem is not a valid name.
    #[error("the file name gives the deployment name {0:?}, which is invalid: set name = \"...\" or rename the file")]
    BadStem(String),
    /// No `[vm.NAME]` table.
    #[error("no VMs: add a [vm.NAME] table with an image")]
    NoVms,
    /// A `[vm.NAME]` key that is not a valid VM name.
    #[error("invalid VM name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 63 characters)")]
    BadVmName(String),
    /// `DEPLOYMENT-VM`, the name the VM gets, is no valid name (too long).
    #[error("VM {vm:?}: its full name {full:?} is longer than 63 characters; shorten the deployment or the VM name")]
    FullNameTooLong {
        /// The VM.
        vm: String,
        /// `DEPLOYMENT-VM`.
        full: String,
    },
    /// No `image`.
    #[error("VM {0:?} has no image: add image = \"NAME:TAG\"")]
    MissingImage(String),
    /// `image = ""`.
    #[error("VM {0:?}: image is empty")]
    EmptyImage(String),
    /// `command = []`.
    #[error("VM {0:?}: command is empty; leave it out to use the image's Cmd")]
    EmptyCommand(String),
    /// `memory` given as something other than a string.
    #[error("VM {0:?}: memory must be a string like \"64m\"")]
    MemoryNotString(String),
    /// A memory size that does not parse.
    #[error("VM {vm:?}: {source}")]
    BadMemory {
        /// The VM.
        vm: String,
        /// Why the size is refused.
        source: MachineError,
    },
    /// `vcpus` out of range.
    #[error("VM {vm:?}: vcpus must be between 1 and {MAX_VCPUS}, not {value}")]
    Vcpus {
        /// The VM.
        vm: String,
        /// The value given.
        value: i64,
    },
    /// `type` other than `pvh` or `pv`.
    #[error("VM {vm:?}: type must be \"pvh\" or \"pv\", not {value:?}")]
    BadType {
        /// The VM.
        vm: String,
        /// The value given.
        value: String,
    },
    /// A restart policy that does not parse.
    #[error("VM {vm:?}: {source}")]
    Restart {
        /// The VM.
        vm: String,
        /// Why the policy is refused.
        source: RestartError,
    },
    /// A `log_opt` entry hyperxl does not understand.
    #[error("VM {vm:?}: {source}")]
    LogOpt {
        /// The VM.
        vm: String,
        /// Why the option is refused.
        source: crate::vm::console::LogOptError,
    },
    /// A `ports` entry that does not parse.
    #[error("VM {vm:?}: {source}")]
    Port {
        /// The VM.
        vm: String,
        /// Why the mapping is refused.
        source: crate::net::publish::PublishError,
    },
    /// A `volumes`, `tmpfs` or `storage_size` entry that does not parse.
    #[error("VM {vm:?}: {source}")]
    Storage {
        /// The VM.
        vm: String,
        /// Why it is refused.
        source: Box<crate::volume::request::RequestError>,
    },
    /// A `network` other than "none".
    #[error("VM {vm:?}: network = {value:?}: only \"none\" is supported (the deployment's VMs share its own network)")]
    Network {
        /// The VM.
        vm: String,
        /// The value given.
        value: String,
    },
    /// An environment entry without a name, or an `env` key with `=`.
    #[error("VM {vm:?}: invalid environment entry {entry:?}: use NAME=VALUE with a non-empty NAME without '='")]
    BadEnv {
        /// The VM.
        vm: String,
        /// The entry.
        entry: String,
    },
    /// An env file that cannot be read.
    #[error("VM {vm:?}: reading env file {}: {source}", path.display())]
    EnvFile {
        /// The VM.
        vm: String,
        /// The env file, resolved against the deployment file's directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An env file that is absolute, climbs out with `..`, or resolves (through
    /// symlinks) to a file outside the deployment file's directory.
    #[error("VM {vm:?}: env file {value:?} is outside the deployment file's directory")]
    EnvFileOutside {
        /// The VM.
        vm: String,
        /// The path as written.
        value: String,
    },
    /// A relative `workdir`.
    #[error("VM {vm:?}: workdir must be an absolute path, not {value:?}")]
    RelativeWorkdir {
        /// The VM.
        vm: String,
        /// The value given.
        value: String,
    },
    /// An empty label key, one with `=`, or one with the reserved prefix.
    #[error("VM {vm:?}: invalid label {key:?}: keys must be non-empty, without '=', and not start with \"{RESERVED_LABEL_PREFIX}\"")]
    BadLabel {
        /// The VM.
        vm: String,
        /// The key.
        key: String,
    },
    /// `depends_on` names no VM of the deployment.
    #[error("VM {vm:?} depends on {dep:?}, which is not a VM of this deployment")]
    UnknownDependency {
        /// The VM.
        vm: String,
        /// The name it depends on.
        dep: String,
    },
    /// A VM that depends on itself.
    #[error("VM {0:?} depends on itself")]
    SelfDependency(String),
    /// The same dependency twice.
    #[error("VM {vm:?} lists {dep:?} twice in depends_on")]
    DuplicateDependency {
        /// The VM.
        vm: String,
        /// The name listed twice.
        dep: String,
    },
    /// VMs that wait on each other, as `a -> b -> a`.
    #[error("dependency cycle: {0}")]
    Cycle(String),
}
