//! Starting the app: fork, drop privileges, exec; exec errors come back to the parent
//! through a close-on-exec pipe so 126/127 and the message reach xenstore.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hyperxl_contract::path::{lookup, Probe};
use hyperxl_contract::user::ExecUser;
use hyperxl_contract::{env, exit, Rlimit, RlimitName, Spec};
use nix::fcntl::OFlag;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{
    dup2, execve, fork, pipe2, setgid, setgroups, setsid, setuid, ForkResult, Gid, Pid, Uid,
};

use crate::error::{InitError, SysContext};

/// The console that carries the app's stdout and stderr.
pub const CONSOLE: &str = "/dev/hvc0";

/// What the parent learns from the exec pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum Launch {
    /// execve succeeded (the pipe closed without data).
    Running(Pid),
    /// The child failed before or at exec; it exits with `code`.
    Failed {
        /// The child's pid (to reap).
        pid: Pid,
        /// 126, 127, ...
        code: i32,
        /// What went wrong.
        message: String,
    },
}

/// Probes a path the way execve will see it.
pub fn probe(p: &Path) -> Probe {
    match fs::metadata(p) {
        Err(_) => Probe::Missing,
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Probe::Executable,
        Ok(_) => Probe::NotExecutable,
    }
}

/// Maps a contract limit to the kernel's.
pub fn resource(name: RlimitName) -> Resource {
    match name {
        RlimitName::Core => Resource::RLIMIT_CORE,
        RlimitName::Cpu => Resource::RLIMIT_CPU,
        RlimitName::Data => Resource::RLIMIT_DATA,
        RlimitName::Fsize => Resource::RLIMIT_FSIZE,
        RlimitName::Locks => Resource::RLIMIT_LOCKS,
        RlimitName::Memlock => Resource::RLIMIT_MEMLOCK,
        RlimitName::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        RlimitName::Nice => Resource::RLIMIT_NICE,
        RlimitName::Nofile => Resource::RLIMIT_NOFILE,
        RlimitName::Nproc => Resource::RLIMIT_NPROC,
        RlimitName::Rss => Resource::RLIMIT_RSS,
        RlimitName::Rtprio => Resource::RLIMIT_RTPRIO,
        RlimitName::Rttime => Resource::RLIMIT_RTTIME,
        RlimitName::Sigpending => Resource::RLIMIT_SIGPENDING,
        RlimitName::Stack => Resource::RLIMIT_STACK,
        RlimitName::As => Resource::RLIMIT_AS,
    }
}

/// Creates the working directory if missing (owned by root, as Docker's daemon does).
pub fn ensure_workdir(dir: &str) -> Result<(), InitError> {
    if !Path::new(dir).is_dir() {
        fs::create_dir_all(dir).ctx(format!("create working dir {dir}"))?;
    }
    Ok(())
}

/// Everything the child needs, allocated before fork.
pub struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    arg0: String,
    path_env: Option<String>,
    workdir: String,
    user: ExecUser,
    rlimits: Vec<Rlimit>,
    terminal: bool,
}

fn cstr(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Builds argv/envp (adding HOME) for the app.
pub fn prepare(spec: &Spec, user: ExecUser) -> Prepared {
    let envv = env::with_home(spec.env.clone(), &user.home);
    Prepared {
        argv: spec.args.iter().map(|a| cstr(a)).collect(),
        path_env: env::get(&envv, "PATH").map(str::to_string),
        envp: envv.iter().map(|e| cstr(e)).collect(),
        arg0: spec.args[0].clone(),
        workdir: spec.working_dir.clone(),
        user,
        rlimits: spec.rlimits.clone(),
        terminal: spec.terminal,
    }
}

/// Builds argv/envp for a process an exec session starts: the app's environment with
/// the request's entries over it, HOME for its user, its own working directory.
pub fn prepare_exec(
    req: &hyperxl_contract::control::ExecRequest,
    app_env: &[String],
    user: ExecUser,
    workdir: &str,
    rlimits: &[Rlimit],
) -> Prepared {
    let mut envv = app_env.to_vec();
    env::replace_or_append(&mut envv, &req.env);
    let envv = env::with_home(envv, &user.home);
    Prepared {
        argv: req.args.iter().map(|a| cstr(a)).collect(),
        path_env: env::get(&envv, "PATH").map(str::to_string),
        envp: envv.iter().map(|e| cstr(e)).collect(),
        arg0: req.args[0].clone(),
        workdir: workdir.to_string(),
        user,
        rlimits: rlimits.to_vec(),
        terminal: false,
    }
}

/// Where a started process's stdin, stdout and stderr go.
#[derive(Debug, Clone, Copy)]
pub enum Stdio {
    /// The app: the console for stdout and stderr; stdin is `stdin` (the pipe of
    /// `run -i`), else the console with a terminal, else /dev/null.
    Console {
        /// The read end of the app's stdin pipe.
        stdin: Option<i32>,
    },
    /// An exec session: these fds (pipe ends the session keeps the other ends of).
    Fds {
        /// stdin.
        stdin: i32,
        /// stdout.
        stdout: i32,
        /// stderr.
        stderr: i32,
    },
    /// An exec session with a terminal: the pty's slave end becomes stdin, stdout,
    /// stderr and the controlling terminal of the process (a session leader).
    Pty {
        /// The slave end.
        slave: i32,
    },
}

/// Formats the pipe message: `code` TAB `message`.
pub fn encode_failure(code: i32, message: &str) -> String {
    format!("{code}\t{message}")
}

/// Parses a pipe message; a garbled one still counts as "not executable".
pub fn decode_failure(data: &str) -> (i32, String) {
    match data.split_once('\t') {
        Some((c, m)) => (c.parse().unwrap_or(exit::NOT_EXECUTABLE), m.to_string()),
        None => (exit::NOT_EXECUTABLE, data.to_string()),
    }
}

fn child(p: &Prepared, stdio: Stdio) -> (i32, String) {
    let _ = setsid();
    // The init ignores SIGPIPE (Rust's runtime does) and an ignored signal survives
    // execve: give the process the default back, or `yes | head -1` would never end
    // with SIGPIPE. The mask is inherited too: start with nothing blocked.
    // SAFETY: SIG_DFL installs no handler; this is the forked child, one thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let fds = match stdio {
        Stdio::Console { .. } => None,
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        } => Some((stdin, stdout, stderr)),
        Stdio::Pty { slave } => {
            // SAFETY: slave is an open pty end; this child is a session leader without
            // a controlling terminal (setsid above), so TIOCSCTTY gives it this one.
            if unsafe { libc::ioctl(slave, libc::TIOCSCTTY as _, 0) } < 0 {
                return (
                    exit::NOT_EXECUTABLE,
                    format!("TIOCSCTTY: {}", std::io::Error::last_os_error()),
                );
            }
            Some((slave, slave, slave))
        }
    };
    if let Some((stdin, stdout, stderr)) = fds {
        // SAFETY: the fds are open ends the parent passed in; dup2 onto 0..2.
        let ok = unsafe {
            libc::dup2(stdin, 0) >= 0 && libc::dup2(stdout, 1) >= 0 && libc::dup2(stderr, 2) >= 0
        };
        if !ok {
            return (
                exit::NOT_EXECUTABLE,
                "dup2 of the session's stdio failed".into(),
            );
        }
        return drop_privileges_and_exec(p);
    }
    // Without a terminal the console must not become the app's controlling tty.
    let flags = if p.terminal { 0 } else { libc::O_NOCTTY };
    if let Ok(con) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(CONSOLE)
    {
        let fd = con.as_raw_fd();
        let _ = dup2(fd, 1);
        let _ = dup2(fd, 2);
        if p.terminal {
            let _ = dup2(fd, 0);
        }
    }
    if let Stdio::Console { stdin: Some(fd) } = stdio {
        if dup2(fd, 0).is_err() {
            return (
                exit::NOT_EXECUTABLE,
                "dup2 of the app's stdin failed".into(),
            );
        }
    } else if !p.terminal {
        if let Ok(null) = OpenOptions::new().read(true).open("/dev/null") {
            let _ = dup2(null.as_raw_fd(), 0);
        }
    }
    drop_privileges_and_exec(p)
}

/// Limits, groups, uid/gid, working directory, PATH lookup, execve: what every started
/// process goes through after its stdio is in place. Returns only on failure.
fn drop_privileges_and_exec(p: &Prepared) -> (i32, String) {
    for r in &p.rlimits {
        if let Err(e) = setrlimit(resource(r.name), r.soft, r.hard) {
            return (exit::NOT_EXECUTABLE, format!("setrlimit {:?}: {e}", r.name));
        }
    }
    let groups: Vec<Gid> = p.user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if let Err(e) = setgroups(&groups) {
        return (exit::NOT_EXECUTABLE, format!("setgroups: {e}"));
    }
    if let Err(e) = setgid(Gid::from_raw(p.user.gid)) {
        return (exit::NOT_EXECUTABLE, format!("setgid {}: {e}", p.user.gid));
    }
    if let Err(e) = setuid(Uid::from_raw(p.user.uid)) {
        return (exit::NOT_EXECUTABLE, format!("setuid {}: {e}", p.user.uid));
    }
    if let Err(e) = nix::unistd::chdir(p.workdir.as_str()) {
        return (exit::NOT_EXECUTABLE, format!("chdir {}: {e}", p.workdir));
    }
    let path = match lookup(&p.arg0, p.path_env.as_deref(), probe) {
        Ok(path) => path,
        Err(e) => return (e.exit_code(), e.to_string()),
    };
    let Err(e) = execve(&cstr(&path), &p.argv, &p.envp);
    (exit::for_exec_errno(e as i32), format!("exec {path}: {e}"))
}

/// Forks and execs a process (the app, or an exec session's) with `stdio`; waits until
/// exec succeeded or failed.
pub fn launch_with(p: &Prepared, stdio: Stdio) -> Result<Launch, InitError> {
    let (rd, wr): (OwnedFd, OwnedFd) = pipe2(OFlag::O_CLOEXEC).ctx("pipe")?;
    // SAFETY: for the app the init is single-threaded here (the shutdown watcher starts
    // after the launch); exec sessions fork from a thread, and the child still allocates:
    // musl's fork resets its malloc lock in the child, so that is safe with musl.
    match unsafe { fork() }.ctx("fork")? {
        ForkResult::Child => {
            drop(rd);
            let (code, msg) = child(p, stdio);
            let mut w = std::fs::File::from(wr);
            let _ = w.write_all(encode_failure(code, &msg).as_bytes());
            drop(w);
            // SAFETY: _exit ends the child at once without running the parent's atexit
            // handlers or flushing its copied buffers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut data = String::new();
            let mut r = std::fs::File::from(rd);
            r.read_to_string(&mut data).ctx("read exec pipe")?;
            if data.is_empty() {
                Ok(Launch::Running(child))
            } else {
                let (code, message) = decode_failure(&data);
                Ok(Launch::Failed {
                    pid: child,
                    code,
                    message,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_roundtrip() {
        let s = encode_failure(127, "exec: \"nope\": executable file not found in $PATH");
        assert_eq!(
            decode_failure(&s),
            (
                127,
                "exec: \"nope\": executable file not found in $PATH".to_string()
            )
        );
        assert_eq!(decode_failure("garbage").0, 126);
    }

    #[test]
    fn probe_real_files() {
        assert_eq!(probe(Path::new("/nonexistent-xyz")), Probe::Missing);
        assert_eq!(probe(Path::new("/")), Probe::NotExecutable);
        assert_eq!(probe(Path::new("/bin/sh")), Probe::Executable);
    }

    #[test]
    fn prepare_adds_home() {
        let mut spec = Spec::new(vec!["sh".into()]);
        spec.env = vec!["PATH=/bin".into()];
        let user = ExecUser {
            uid: 1,
            gid: 1,
            groups: vec![],
            home: "/home/u".into(),
        };
        let p = prepare(&spec, user);
        assert_eq!(p.path_env.as_deref(), Some("/bin"));
        assert!(p.envp.iter().any(|e| e.to_str() == Ok("HOME=/home/u")));
    }
}

#[cfg(test)]
mod launch_tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{getegid, geteuid};

    fn me() -> ExecUser {
        ExecUser {
            uid: geteuid().as_raw(),
            gid: getegid().as_raw(),
            groups: vec![],
            home: "/".into(),
        }
    }

    fn run(args: &[&str]) -> Launch {
        let mut spec = Spec::new(args.iter().map(|s| s.to_string()).collect());
        spec.env = vec!["PATH=/usr/bin:/bin".into()];
        let mut p = prepare(&spec, me());
        if !geteuid().is_root() {
            // setgroups needs CAP_SETGID; keep the test meaningful without it.
            p.user.groups = nix::unistd::getgroups()
                .unwrap()
                .iter()
                .map(|g| g.as_raw())
                .collect();
        }
        launch_with(&p, Stdio::Console { stdin: None }).unwrap()
    }

    #[test]
    fn exec_success_then_exit_code() {
        match run(&["sh", "-c", "exit 7"]) {
            Launch::Running(pid) => {
                assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 7))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_command_is_127_with_message() {
        match run(&["no-such-command-xyz"]) {
            Launch::Failed { pid, code, message } => {
                assert_eq!(code, 127);
                assert!(message.contains("not found"), "{message}");
                assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 127));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_executable_is_126() {
        match run(&["/etc/passwd"]) {
            Launch::Failed { pid, code, .. } => {
                assert_eq!(code, 126);
                let _ = waitpid(pid, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
