//! `hyperxl exec VM CMD...`: run a process in a running VM, as `docker exec`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use hyperxl_contract::control::{ExecRequest, FrameError};

use hyperxl_core::vm::exec::{self, ExecOptions};
use hyperxl_core::vm::spec;

// Arguments of `hyperxl exec`.
#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal in the VM (with -i: this terminal in raw mode, its
    /// size followed; stdout and stderr are then one stream).
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
    if args.detach && (args.interactive || args.tty) {
        bail!("exec -d does not go with -i or -t");
    }
    if args.tty && args.interactive && !std::io::stdin().is_terminal() {
        bail!("exec -it: the input device is not a terminal (drop -t to pipe stdin)");
    }
    let mut env = Vec::new();
    if args.tty {
        // As docker exec -t: a terminal type the VM's programs can use, unless -e says.
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        env.push(format!("TERM={term}"));
    }
    env.extend(args.env.iter().cloned());
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading env file {}", file.display()))?;
        env.extend(spec::parse_env_file(&text));
    }
    let (rows, cols) = match args.tty {
        true => exec::window_size().unwrap_or((0, 0)),
        false => (0, 0),
    };
    let request = ExecRequest {
        args: args.command.clone(),
        env: spec::resolve_env(&env),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        tty: args.tty,
        rows,
        cols,
        detach: args.detach,
        ..ExecRequest::default()
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
        detach_keys: false,
    };
    let code = exec::exec(state_dir, &args.vm, &opts)?;
    // Exit codes are 0..=255 on the way out, as a shell sees them.
    Ok((code & 0xff) as u8)
}
