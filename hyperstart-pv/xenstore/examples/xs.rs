//! `xs`: a tiny xenstore command line on top of this crate, for tests and debugging
//! inside guests (where xen-utils are not installed) and in dom0.
//!
//! ```text
//! xs read PATH | xs write PATH VALUE | xs ls PATH | xs domid
//! ```
//!
//! Prints the value (or `ok`) on success; on failure one line `error: ...` on stdout
//! (so tests can assert the exact refusal) and exit status 1.

use std::process::ExitCode;

use xenstore_wire::{Xenstore, XenstoreError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut xs = match Xenstore::open_default() {
        Ok(xs) => xs,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<String, XenstoreError> = match args.as_slice() {
        [cmd, path] if cmd == "read" => xs.read_string(path),
        [cmd, path, value] if cmd == "write" => {
            xs.write(path, value.as_bytes()).map(|()| "ok".into())
        }
        [cmd, path] if cmd == "ls" => xs.directory(path).map(|v| v.join("\n")),
        [cmd] if cmd == "domid" => xs.read_string("domid"),
        _ => {
            eprintln!("usage: xs read PATH | xs write PATH VALUE | xs ls PATH | xs domid");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
