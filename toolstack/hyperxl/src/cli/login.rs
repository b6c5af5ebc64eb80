//! `hyperxl login` / `hyperxl logout`: registry credentials in `STATE_DIR/auth.json`.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use hyperxl_image::auth::{AuthFiles, Credentials};
use hyperxl_image::pull::{PullOptions, Registry};

// Arguments of `hyperxl login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host[:port] (`docker.io` for Docker Hub).
    registry: String,
    /// User name.
    #[arg(short, long)]
    username: String,
    /// Read the password from stdin (the only way: never on the command line).
    #[arg(long, required = true)]
    password_stdin: bool,
    /// Registry that may be contacted over plain HTTP.
    #[arg(long = "insecure-registry")]
    insecure: bool,
}

// Arguments of `hyperxl logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry host[:port].
    registry: String,
}

pub fn run(state_dir: &Path, args: LoginArgs) -> anyhow::Result<u8> {
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading password from stdin")?;
    let creds = Credentials {
        username: args.username,
        password: password.trim_end_matches(['\n', '\r']).to_string(),
    };
    // Check the credentials against the registry before saving them.
    let files = AuthFiles::for_state_dir(state_dir);
    let probe = AuthFiles {
        hyperxl: state_dir.join(".auth-probe.json"),
        docker: None,
    };
    probe.store(&args.registry, &creds)?;
    let mut opts = PullOptions::new(state_dir);
    opts.auth = probe.clone();
    if args.insecure {
        opts.insecure.push(args.registry.clone());
    }
    let reference = format!("{}/hyperxl/login-check", args.registry)
        .parse()
        .with_context(|| format!("bad registry {:?}", args.registry))?;
    let checked = Registry::new(&reference, &opts).and_then(|r| r.check_login());
    let _ = std::fs::remove_file(&probe.hyperxl);
    checked.with_context(|| format!("logging in to {}", args.registry))?;
    files.store(&args.registry, &creds)?;
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(state_dir: &Path, args: LogoutArgs) -> anyhow::Result<u8> {
    let files = AuthFiles::for_state_dir(state_dir);
    if files.remove(&args.registry)? {
        println!("Removed login credentials for {}", args.registry);
    } else {
        println!("Not logged in to {}", args.registry);
    }
    Ok(0)
}
