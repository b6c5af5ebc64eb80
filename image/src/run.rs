//! The one runner for external commands: every failure keeps the command line, the exit
//! status and the tail of stderr in the error.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};

/// How much of a command's stderr is kept in an error.
const STDERR_TAIL: usize = 4096;

/// An external command failed to start or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (missing, not executable).
    #[error("cannot run {program} (is it installed?)")]
    Spawn {
        /// The program name.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Talking to the child failed.
    #[error("{program}")]
    Io {
        /// The program name.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The program exited with a failure status.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program name.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its stderr.
        stderr: String,
    },
}

/// A command whose stdin is fed by the caller and whose stderr is collected.
pub struct Piped {
    program: String,
    child: Child,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Piped {
    /// Starts `cmd` with a piped stdin, stdout discarded, stderr collected.
    pub fn spawn(cmd: &mut Command) -> Result<Piped, CommandError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CommandError::Spawn {
                program: program.clone(),
                source,
            })?;
        let mut err = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            buf
        });
        Ok(Piped {
            program,
            child,
            stderr,
        })
    }

    /// The child's stdin.
    pub fn stdin(&mut self) -> impl Write + '_ {
        self.child.stdin.as_mut().expect("stdin is piped")
    }

    /// Closes stdin, waits, and turns a failure status into an error with stderr.
    pub fn wait(mut self) -> Result<(), CommandError> {
        drop(self.child.stdin.take());
        let status = self.child.wait().map_err(|source| CommandError::Io {
            program: self.program.clone(),
            source,
        })?;
        let stderr = self.stderr.join().unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(CommandError::Failed {
                program: self.program,
                status,
                stderr: tail(&stderr),
            })
        }
    }

    /// Kills the child (used when the producer failed) and reaps it.
    pub fn abort(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion with no stdin; returns its stdout.
pub fn output(cmd: &mut Command) -> Result<Vec<u8>, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(CommandError::Failed {
            program,
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    // The tail may hold names from the image (mksquashfs quotes them): no terminal
    // escapes or bidi overrides get through.
    let text = String::from_utf8_lossy(&stderr[start..]);
    let lines: Vec<String> = text.trim().lines().map(crate::text::sanitise).collect();
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_stderr() {
        let err = output(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains("sh failed"), "{msg}");
    }

    #[test]
    fn defect13_command_stderr_is_sanitised() {
        let err = output(Command::new("sh").args([
            "-c",
            "printf 'bad \\033[2J name\\342\\200\\256txt\\rexe\\nnext\\n' >&2; exit 1",
        ]))
        .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.chars().any(crate::text::is_unsafe), "{msg:?}");
        assert!(msg.contains("bad ?[2J name?txt?exe; next"), "{msg:?}");
    }

    #[test]
    fn missing_program() {
        let err = output(&mut Command::new("/nonexistent/prog")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
    }

    #[test]
    fn piped_feeds_stdin() {
        let mut p =
            Piped::spawn(Command::new("sh").args(["-c", "read x; [ \"$x\" = hi ]"])).unwrap();
        writeln!(p.stdin(), "hi").unwrap();
        p.wait().unwrap();
    }
}
