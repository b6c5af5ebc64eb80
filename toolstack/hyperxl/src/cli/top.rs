//! `hyperxl top VM`: the processes running in a VM, as `docker top`.

use std::path::Path;

use anyhow::bail;
use clap::Args;
use hyperxl_contract::control::{Builtin, ExecRequest};

use hyperxl_core::vm::exec::{exec_with, Capture, ExecOptions, Streams};
use hyperxl_core::vm::host::terminal_safe;

// Arguments of `hyperxl top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// VM name or id.
    pub vm: String,
}

/// The most of the guest's table kept, and shown (it is untrusted output).
const MAX_TABLE: usize = 1 << 20;
const MAX_ROWS: usize = 10_000;
const MAX_COLUMNS: usize = 16;
const MAX_CELL: usize = 256;

pub fn run(state_dir: &Path, args: TopArgs) -> anyhow::Result<u8> {
    let (table, errors) = (Capture::new(MAX_TABLE), Capture::new(4096));
    let opts = ExecOptions {
        request: ExecRequest::builtin(Builtin::Top),
        interactive: false,
        detach_keys: false,
    };
    let streams = Streams {
        stdout: Some(Box::new(table.clone())),
        stderr: Some(Box::new(errors.clone())),
        ..Streams::default()
    };
    if exec_with(state_dir, &args.vm, &opts, streams)? != 0 {
        bail!("listing the processes of {}: {}", args.vm, errors.line());
    }
    // The guest wrote the table: every field is made safe, then aligned here.
    let rows: Vec<Vec<String>> = table
        .lines()
        .iter()
        .take(MAX_ROWS)
        .map(|l| {
            l.split('\t')
                .take(MAX_COLUMNS)
                .map(|c| terminal_safe(&c.chars().take(MAX_CELL).collect::<String>()))
                .collect()
        })
        .collect();
    print!("{}", align(&rows));
    Ok(0)
}

/// Rows as columns padded to their widest cell (the last column is not padded).
fn align(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(m) => *m = (*m).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::align;

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["PID".to_string(), "COMMAND".to_string()],
            vec!["1".to_string(), "/init".to_string()],
            vec!["1234".to_string(), "sleep 100".to_string()],
        ];
        assert_eq!(
            align(&rows),
            "PID    COMMAND\n1      /init\n1234   sleep 100\n"
        );
    }
}
