//! `hyperxl attach VM`: connect this terminal to a running VM's app, as `docker attach`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context as _};
use clap::Args;
use hyperxl_contract::Spec;

use hyperxl_core::vm::control;
use hyperxl_core::vm::exec::{self, RawTerminal};
use hyperxl_core::vm::host::{reconcile_all, Host};
use hyperxl_core::vm::state::VmStore;

// Arguments of `hyperxl attach`.
#[derive(Debug, Args)]
#[command(after_help = "\
A VM started with -t: its terminal (raw here when stdin is one, its size followed);
Ctrl-P Ctrl-Q detaches and leaves it running. Otherwise: its output from now on, and,
if it was started with -i, this stdin to the app's (EOF closes it). Exits with the
app's exit code once it ends.")]
pub struct AttachArgs {
    /// Do not pass stdin to the app.
    #[arg(long)]
    pub no_stdin: bool,
    /// VM name or id.
    pub vm: String,
}

pub fn run(state_dir: &Path, args: AttachArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let host = Host::connect();
    reconcile_all(&vms, &host)?;
    let vm = vms.find(&args.vm)?;
    if !vm.status.can_stop() {
        bail!("VM {} is not running", vm.name);
    }
    let spec_json =
        std::fs::read(vms.dir(&vm.id).join("spec.json")).context("reading the VM's spec")?;
    let spec = Spec::from_json(&spec_json).context("reading the VM's spec")?;
    let stdin = !args.no_stdin && (spec.open_stdin || spec.terminal);
    if spec.terminal {
        let raw = (stdin && std::io::stdin().is_terminal())
            .then(RawTerminal::enter)
            .transpose()?;
        let end = exec::attach_app(state_dir, &vm.id, true, stdin, true);
        drop(raw);
        match end? {
            None => {
                eprintln!("hyperxl: detached; VM {} keeps running", vm.name);
                return Ok(0);
            }
            // The init said why (printed above): e.g. another session is attached.
            Some(code) if code != 0 => bail!("could not attach to VM {}", vm.name),
            Some(_) => {}
        }
    } else {
        if stdin {
            let (dir, id) = (state_dir.to_path_buf(), vm.id.clone());
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    if let Err(e) = exec::attach_app(&dir, &id, false, true, false) {
                        eprintln!("hyperxl: the app's stdin: {e:#}");
                    }
                })
                .context("starting the stdin thread")?;
        }
        hyperxl_core::vm::logs::print_log(&vms, &vm.id, false, true, true)?;
    }
    // The app's end: its exit code, as `docker attach` exits with it.
    match control::wait_exited(&vms, &host, &vm.id, None)? {
        Some(done) => match done.exit_code {
            Some(code) => Ok(super::run::exit_status(code)),
            None => bail!("VM {} ended without an exit code", vm.name),
        },
        None => match vms.exit_of_removed(&vm.id) {
            Some(Ok(code)) => Ok(super::run::exit_status(code)),
            _ => bail!("VM {} ended without an exit code", vm.name),
        },
    }
}
