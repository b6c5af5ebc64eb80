//! `hyperxl exec VM CMD...`: run a process in a running VM, as `docker exec`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use hyperxl_contract::control::{ExecRequest, FrameError};

use crate::vm::exec::{self, ExecOptions};
use crate::vm::spec;

/// Arguments of `hyperxl exec`.
#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal (not supported yet).
    #[arg(short, long)]
    pub tty: bool,
    /// Start the process and return; its output is dropped.
    #[arg(short, long)]
    pub detach: bool,
    /// Set an environment variable (NAME=VALUE, or NAME to take it from here).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (one NAME=VALUE per line, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// User as Docker spells it (name, uid, uid:gid); default: the app's.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the VM (absolute); default: the app's.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// The VM (name or id).
    pub vm: String,
    /// The command and its arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn run(state_dir: &Path, args: ExecArgs) -> anyhow::Result<u8> {
    if args.tty {
        bail!("exec -t (a terminal in the VM) is not supported yet; use -i without -t");
    }
    if args.detach && args.interactive {
        bail!("exec -d and -i do not go together");
    }
    let mut env = args.env.clone();
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading env file {}", file.display()))?;
        env.extend(spec::parse_env_file(&text));
    }
    let request = ExecRequest {
        args: args.command.clone(),
        env: spec::resolve_env(&env),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        tty: false,
        rows: 0,
        cols: 0,
    };
    if let Err(e) = request.validate() {
        match e {
            FrameError::BadPayload { reason, .. } => bail!("exec: {reason}"),
            other => bail!("exec: {other}"),
        }
    }
    let opts = ExecOptions {
        request,
        interactive: args.interactive,
        detach: args.detach,
    };
    let code = exec::exec(state_dir, &args.vm, &opts)?;
    // Exit codes are 0..=255 on the way out, as a shell sees them.
    Ok((code & 0xff) as u8)
}
