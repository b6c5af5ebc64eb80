//! `hyperxl logs [-f] VM`: the VM's console as recorded by its watcher.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::vm::host::{reconcile_all, Host};
use crate::vm::monitor::is_init_line;
use crate::vm::state::VmStore;

/// Arguments of `hyperxl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the log until the VM exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Include the guest kernel's and the init's own lines.
    #[arg(long)]
    pub debug: bool,
    /// VM name or id.
    pub vm: String,
}

/// Prints the log (and follows it with `-f`).
pub fn run(state_dir: &Path, args: LogsArgs) -> anyhow::Result<u8> {
    let vms = VmStore::open(state_dir)?;
    let vm = vms.find(&args.vm)?;
    let path = vms.dir(&vm.id).join("console.log");
    let host = args.follow.then(Host::connect);
    let file = match File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut reader = file.map(BufReader::new);
    let stdout = std::io::stdout();
    let show = |raw: &[u8]| -> std::io::Result<()> {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\r', '\n']);
        if args.debug || !is_init_line(text) {
            let mut out = stdout.lock();
            writeln!(out, "{text}")?;
            out.flush()?;
        }
        Ok(())
    };
    let mut line = Vec::new();
    let mut last_round = false;
    loop {
        if reader.is_none() {
            reader = File::open(&path).ok().map(BufReader::new);
        }
        // A line without its newline yet stays in `line` until the rest arrives.
        while let Some(r) = reader.as_mut() {
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with(b"\n") => break,
                Ok(_) => {
                    show(&line)?;
                    line.clear();
                }
            }
        }
        if last_round {
            // The VM has ended: no rest of a last unfinished line is coming.
            if !line.is_empty() {
                show(&line)?;
            }
            break;
        }
        let Some(host) = &host else { break };
        let vms_now = reconcile_all(&vms, host)?;
        let running = vms_now.iter().any(|v| v.id == vm.id && v.status.can_stop());
        if !running {
            // One more round for what the watcher wrote before recording the end.
            std::thread::sleep(Duration::from_millis(200));
            last_round = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(0)
}
