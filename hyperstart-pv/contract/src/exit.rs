//! Exit-code mapping, as Docker does it.

/// The command was not found (also: the program's interpreter is missing).
pub const NOT_FOUND: i32 = 127;
/// The command exists but cannot be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// hyperxl (or the init) itself failed before the app ran.
pub const INIT_FAILED: i32 = 125;

/// The code reported for an app killed by signal `signo`.
pub fn for_signal(signo: i32) -> i32 {
    128 + signo
}

/// The code reported for a failed `execve` with this errno.
pub fn for_exec_errno(errno: i32) -> i32 {
    const ENOENT: i32 = 2;
    const ENOTDIR: i32 = 20;
    if errno == ENOENT || errno == ENOTDIR {
        NOT_FOUND
    } else {
        NOT_EXECUTABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        assert_eq!(for_signal(9), 137);
        assert_eq!(for_signal(15), 143);
        assert_eq!(for_exec_errno(2), 127);
        assert_eq!(for_exec_errno(13), 126);
        assert_eq!(for_exec_errno(8), 126);
    }
}
