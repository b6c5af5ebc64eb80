//! What the init does itself in a session (`hyperxl cp`, `hyperxl top`): the session
//! runs this same binary again (`/proc/self/exe copy-out PATH`, `copy-in PATH PLACE`,
//! `top`, as root in `/`), so these need nothing in the image and run as ordinary
//! session processes: their data is the process's stdout or stdin, one error line its
//! stderr, success its exit code.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use hyperxl_contract::control::{Builtin, CopyPlace, ExecRequest};
use hyperxl_tarcopy::{Limits, Place};

const COPY_OUT: &str = "copy-out";
const COPY_IN: &str = "copy-in";
const TOP: &str = "top";

/// The session process that does `builtin` (none for [`Builtin::Signal`], which the
/// session does itself).
pub fn as_exec(builtin: &Builtin) -> Option<ExecRequest> {
    let args = match builtin {
        Builtin::CopyOut { path } => vec![COPY_OUT.into(), path.clone()],
        Builtin::CopyIn { path, place } => {
            let place = match place {
                CopyPlace::Named => "named",
                CopyPlace::Contents => "contents",
                CopyPlace::Into => "into",
            };
            vec![COPY_IN.into(), path.clone(), place.into()]
        }
        Builtin::Top => vec![TOP.into()],
        Builtin::Signal { .. } => return None,
    };
    Some(ExecRequest {
        args: [vec!["/proc/self/exe".to_string()], args].concat(),
        user: Some("0".into()),
        workdir: Some("/".into()),
        ..ExecRequest::default()
    })
}

/// If this process was started as a builtin, runs it and returns its exit code.
pub fn helper(args: &[String]) -> Option<i32> {
    let result: Result<(), String> = match args {
        [_, op, path] if op == COPY_OUT => {
            let out = BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
            hyperxl_tarcopy::pack(Path::new(path), out)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        [_, op, path, place] if op == COPY_IN => {
            let place = match place.as_str() {
                "contents" => Place::Contents,
                "into" => Place::Into,
                _ => Place::Named,
            };
            let input = BufReader::with_capacity(64 << 10, std::io::stdin().lock());
            hyperxl_tarcopy::unpack(input, Path::new(path), place, None, &Limits::into_guest())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        [_, op] if op == TOP => top(&mut std::io::stdout().lock()),
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

/// One process, from `/proc/PID/stat`, `status` and `cmdline`.
#[derive(Debug, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ppid: u32,
    uid: u32,
    state: char,
    rss_kib: u64,
    cpu_secs: u64,
    command: String,
}

/// Clock ticks per second of `/proc/PID/stat`'s times (USER_HZ, 100 on Linux).
const TICKS: u64 = 100;

/// Parses `/proc/PID/stat` (the command name, in parentheses, may hold anything).
fn parse_stat(stat: &str) -> Option<(char, u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields from 3 (state) on: state=0, ppid=1, utime=11, stime=12, rss=21 (pages).
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some((state, ppid, ticks / TICKS, rss_pages * 4))
}

fn read_proc(pid: u32) -> Option<Proc> {
    let dir = format!("/proc/{pid}");
    let (state, ppid, cpu_secs, rss_kib) =
        parse_stat(&std::fs::read_to_string(format!("{dir}/stat")).ok()?)?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let cmdline = std::fs::read(format!("{dir}/cmdline")).ok()?;
    // Kernel threads have no command line; they are the kernel's, not the app's.
    if cmdline.is_empty() {
        return None;
    }
    let command = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
        // One row per process: an argument's tabs and newlines cannot forge others.
        .replace(['\t', '\n', '\r'], " ");
    Some(Proc {
        pid,
        ppid,
        uid,
        state,
        rss_kib,
        cpu_secs,
        command,
    })
}

/// Writes the guest's processes (but this one) as a table, as `docker top` shows them.
fn top(out: &mut impl Write) -> Result<(), String> {
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    let names = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = |uid: u32| {
        names
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2)? == &uid.to_string().as_str()).then(|| f[0].to_string())
            })
            .unwrap_or_else(|| uid.to_string())
    };
    let w = |e: std::io::Error| e.to_string();
    writeln!(out, "PID\tPPID\tUSER\tSTAT\tRSS\tTIME\tCOMMAND").map_err(w)?;
    for p in pids.into_iter().filter_map(read_proc) {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}:{:02}\t{}",
            p.pid,
            p.ppid,
            user(p.uid),
            p.state,
            p.rss_kib,
            p.cpu_secs / 60,
            p.cpu_secs % 60,
            p.command
        )
        .map_err(w)?;
    }
    out.flush().map_err(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name_holds() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0 \
                    300 1200000 75 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 1, 4, 300)));
        assert_eq!(parse_stat("7 (x) R"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
