//! Finding the program on the image's `PATH`, as Docker does.

use std::path::Path;

use crate::env::DEFAULT_PATH;

/// What a probe found at a candidate path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing there.
    Missing,
    /// A directory, or a file without an execute bit.
    NotExecutable,
    /// A regular file with an execute bit.
    Executable,
}

/// Why the lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Exit code 127.
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    /// An explicit path that does not exist (exit code 127).
    #[error("exec: {0}: no such file or directory")]
    NoSuchFile(String),
    /// Exists but cannot be executed (exit code 126).
    #[error("exec: {0}: permission denied")]
    NotExecutable(String),
}

impl LookupError {
    /// The exit code Docker reports for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            LookupError::NotFound(_) | LookupError::NoSuchFile(_) => crate::exit::NOT_FOUND,
            LookupError::NotExecutable(_) => crate::exit::NOT_EXECUTABLE,
        }
    }
}

/// Resolves `arg0`: used as is when it contains `/`, else searched in `path_env`
/// (Docker's default PATH when `None`); the first executable candidate wins, and a
/// search that finds only non-executables is "not found", as in Docker.
pub fn lookup(
    arg0: &str,
    path_env: Option<&str>,
    probe: impl Fn(&Path) -> Probe,
) -> Result<String, LookupError> {
    if arg0.contains('/') {
        return match probe(Path::new(arg0)) {
            Probe::Executable => Ok(arg0.to_string()),
            Probe::NotExecutable => Err(LookupError::NotExecutable(arg0.to_string())),
            Probe::Missing => Err(LookupError::NoSuchFile(arg0.to_string())),
        };
    }
    for dir in path_env.unwrap_or(DEFAULT_PATH).split(':') {
        // An empty PATH element means the current directory.
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = format!("{}/{arg0}", dir.trim_end_matches('/'));
        if probe(Path::new(&cand)) == Probe::Executable {
            return Ok(cand);
        }
    }
    Err(LookupError::NotFound(arg0.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(p: &Path) -> Probe {
        match p.to_str().unwrap() {
            "/bin/sh" | "/usr/local/bin/app" | "/opt/bin/tool" => Probe::Executable,
            "/usr/bin/data" | "/etc/passwd" | "/bin/app" => Probe::NotExecutable,
            _ => Probe::Missing,
        }
    }

    #[test]
    fn default_path_order() {
        assert_eq!(lookup("sh", None, fs).unwrap(), "/bin/sh");
        // /usr/local/bin comes before /bin, and /bin/app is not executable anyway.
        assert_eq!(lookup("app", None, fs).unwrap(), "/usr/local/bin/app");
    }

    #[test]
    fn custom_path() {
        assert_eq!(
            lookup("tool", Some("/opt/bin:/bin"), fs).unwrap(),
            "/opt/bin/tool"
        );
        assert_eq!(
            lookup("tool", Some("/bin"), fs),
            Err(LookupError::NotFound("tool".into()))
        );
    }

    #[test]
    fn not_found_and_not_executable() {
        let e = lookup("nope", None, fs).unwrap_err();
        assert_eq!(e.exit_code(), 127);
        let e = lookup("data", None, fs).unwrap_err();
        assert_eq!(
            e.exit_code(),
            127,
            "only non-executables on PATH: not found"
        );
        let e = lookup("/etc/passwd", None, fs).unwrap_err();
        assert_eq!(e, LookupError::NotExecutable("/etc/passwd".into()));
        assert_eq!(e.exit_code(), 126);
        assert_eq!(lookup("/nope", None, fs).unwrap_err().exit_code(), 127);
        assert_eq!(lookup("./bin/sh", None, fs).unwrap_err().exit_code(), 127);
    }
}
