//! The init's own console lines: what the guest prints besides its app, and how the
//! toolstack tells them apart.

/// `PREFIX` followed by a literal, at compile time.
macro_rules! prefixed {
    ($text:literal) => {
        concat!("hyperstart: ", $text)
    };
}

/// The prefix of every line the init itself prints (hidden from an attached `run`
/// unless `--debug`).
pub const PREFIX: &str = prefixed!("");

/// What a pre-booted VM's init prints while it waits for its spec.
pub const POOLED_WAITING: &str = prefixed!("pooled: waiting for a spec");

/// The line a pre-booted VM's init prints once its spec arrived: everything the console
/// carried before it was the pooled boot, not the app's (the toolstack drops it).
pub const SPEC_RECEIVED: &str = prefixed!("spec received");

/// The start of the init's last console line of a run, `APP_EXITED` and the exit code,
/// printed once the app's output is all on the console and before the exit code is
/// reported: the toolstack drains the console until it sees it, not for a fixed time.
/// (An app that prints it itself only cuts its own output short.)
pub const APP_EXITED: &str = prefixed!("app exited with code ");

/// The start of the init's timing lines (a spec with `timings`): `TIMING`, a step's
/// name and the milliseconds from the kernel's start to that step's end.
pub const TIMING: &str = prefixed!("timing ");

/// Whether a console line is the init's own.
pub fn is_init_line(line: &str) -> bool {
    line.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_lines_carry_the_prefix() {
        assert_eq!(PREFIX, "hyperstart: ");
        for line in [POOLED_WAITING, SPEC_RECEIVED, APP_EXITED, TIMING] {
            assert!(is_init_line(line), "{line}");
        }
        assert!(!is_init_line("hyperstart without a colon"));
    }
}
