//! `hyperxl cp` inside the guest: a copy session runs this same binary again
//! (`/proc/self/exe copy-out PATH` or `copy-in PATH PLACE`, as root in `/`), so a copy
//! needs no `tar` in the image and runs as an ordinary session process: its tar stream
//! is the process's stdout or stdin, one error line its stderr, success its exit code.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use hyperxl_contract::control::{CopyPlace, CopyRequest, ExecRequest};
use hyperxl_tarcopy::{Limits, Place};

const OUT: &str = "copy-out";
const IN: &str = "copy-in";

/// The session process that serves `copy`.
pub fn as_exec(copy: &CopyRequest) -> ExecRequest {
    let args = match copy {
        CopyRequest::Out { path } => vec![OUT.into(), path.clone()],
        CopyRequest::In { path, place } => {
            let place = match place {
                CopyPlace::Named => "named",
                CopyPlace::Contents => "contents",
                CopyPlace::Into => "into",
            };
            vec![IN.into(), path.clone(), place.into()]
        }
    };
    ExecRequest {
        args: [vec!["/proc/self/exe".to_string()], args].concat(),
        env: Vec::new(),
        user: Some("0".into()),
        workdir: Some("/".into()),
        tty: false,
        rows: 0,
        cols: 0,
        detach: false,
        attach: false,
        copy: None,
    }
}

/// If this process was started as a copy helper, runs it and returns its exit code.
pub fn helper(args: &[String]) -> Option<i32> {
    let result = match args {
        [_, op, path] if op == OUT => {
            let out = BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
            hyperxl_tarcopy::pack(Path::new(path), out).map(drop)
        }
        [_, op, path, place] if op == IN => {
            let place = match place.as_str() {
                "contents" => Place::Contents,
                "into" => Place::Into,
                _ => Place::Named,
            };
            let input = BufReader::with_capacity(64 << 10, std::io::stdin().lock());
            hyperxl_tarcopy::unpack(input, Path::new(path), place, &Limits::into_guest()).map(drop)
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            1
        }
    })
}
