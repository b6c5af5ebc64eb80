//! End-to-end test harness: runs shell steps inside the Xen test host
//! (`scripts/xen-testhost`), many steps per boot, and hands back each step's stdout,
//! stderr and exit status.
//!
//! A boot of the test host costs about ten seconds of emulated Xen before the first
//! step runs, so a test gathers its commands into one [`Batch`] and asserts on the
//! [`Outcome`]s afterwards:
//!
//! ```no_run
//! use hyperxl_e2e::Batch;
//!
//! let mut batch = Batch::new();
//! batch.step("info", "xl info");
//! let run = batch.run().expect("test host boots");
//! assert!(run["info"].stdout.contains("xen_major"));
//! ```
//!
//! The test host uses the `hyperxl` already built by `cargo build --release` (a cargo
//! build nested inside `cargo test` would wait on the outer build's lock), so
//! `scripts/test` builds it before running these tests.

pub mod demo;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::ops::Index;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What one step printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything the step wrote to stdout.
    pub stdout: String,
    /// Everything the step wrote to stderr.
    pub stderr: String,
    /// The step's exit status (as `sh` reports it: 128+N for a signal; 124 when dom0
    /// killed it for overrunning the step timeout).
    pub status: i32,
    /// dom0's diagnosis (processes, kernel stacks, xenstore) when the step overran.
    pub hang: Option<String>,
}

impl Outcome {
    /// Panics with the step's output unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self, name: &str) -> &Self {
        assert_eq!(self.status, 0, "step {name} failed:\n{self}");
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )?;
        if let Some(hang) = &self.hang {
            write!(f, "--- the step hung; dom0 at the time:\n{hang}")?;
        }
        Ok(())
    }
}

/// Why a batch could not be run or read back.
#[derive(Debug)]
pub enum HarnessError {
    /// Writing the batch or reading results failed.
    Io(io::Error),
    /// `scripts/xen-testhost` itself failed (Xen or dom0 did not come up, timeout).
    TestHost {
        /// Its exit status.
        status: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A step has no recorded status: the test host stopped before it finished.
    Unfinished(String),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "test harness I/O: {e}"),
            Self::TestHost { status, stderr } => {
                write!(f, "xen-testhost failed (status {status:?}):\n{stderr}")
            }
            Self::Unfinished(step) => write!(f, "step {step} did not finish"),
        }
    }
}

impl std::error::Error for HarnessError {}

impl From<io::Error> for HarnessError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The text after `key` on the first line of `text` that starts with it, trimmed (a
/// step's `key=value` output); panics, naming the key and the text, if there is none.
pub fn value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
        .trim()
        .to_string()
}

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A set of shell steps run in order in one boot of the test host.
#[derive(Debug, Default)]
pub struct Batch {
    steps: Vec<(String, String)>,
    adds: Vec<(PathBuf, String)>,
    timeout_secs: Option<u64>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step: `script` runs under dom0's `sh` with `hyperxl` on PATH and
    /// `HYPERXL_STATE_DIR` set. Names must be unique and made of `[A-Za-z0-9_-]`.
    pub fn step(&mut self, name: &str, script: &str) -> &mut Self {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "bad step name {name:?}"
        );
        assert!(
            self.steps.iter().all(|(n, _)| n != name),
            "duplicate step {name}"
        );
        self.steps.push((name.to_owned(), script.to_owned()));
        self
    }

    /// Puts a host file or directory into dom0 at `dom_path` (under `/images` or `/hx`).
    pub fn add(&mut self, host: impl AsRef<Path>, dom_path: &str) -> &mut Self {
        self.adds
            .push((host.as_ref().to_path_buf(), dom_path.to_owned()));
        self
    }

    /// Gives up on the whole boot after `secs` seconds.
    pub fn timeout(&mut self, secs: u64) -> &mut Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// Boots the test host, runs every step, and returns their outcomes.
    pub fn run(&self) -> Result<BatchRun, HarnessError> {
        let work = tempfile::tempdir()?;
        let mut cmd = Command::new(repo_root().join("scripts/xen-testhost"));
        cmd.arg("batch").arg("--no-build");
        let out_dir = work.path().join("out");
        cmd.arg("--out").arg(&out_dir);
        let console = work.path().join("console.log");
        cmd.arg("--console").arg(&console);
        if let Some(t) = self.timeout_secs {
            cmd.arg("--timeout").arg(t.to_string());
        }
        for (host, dom) in &self.adds {
            cmd.arg("--add").arg(format!("{}:{dom}", host.display()));
        }
        // Step files are numbered by xen-testhost in argument order; keep our names.
        let mut files = Vec::new();
        for (name, script) in &self.steps {
            let file = work.path().join(format!("{name}.sh"));
            fs::write(&file, format!("#!/bin/sh\n{script}\n"))?;
            files.push(file);
        }
        cmd.arg("--").args(&files);
        let output = cmd.output()?;
        if !output.status.success() {
            return Err(HarnessError::TestHost {
                status: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let mut outcomes = BTreeMap::new();
        for (i, (name, _)) in self.steps.iter().enumerate() {
            let base = out_dir.join(format!("{i:03}-{name}"));
            let read = |ext: &str| {
                fs::read(base.with_extension(ext))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let status = read("rc")
                .trim()
                .parse()
                .map_err(|_| HarnessError::Unfinished(name.clone()))?;
            outcomes.insert(
                name.clone(),
                Outcome {
                    stdout: read("stdout"),
                    stderr: read("stderr"),
                    status,
                    hang: Some(read("hang")).filter(|h| !h.is_empty()),
                },
            );
        }
        Ok(BatchRun {
            outcomes,
            console: fs::read_to_string(&console).unwrap_or_default(),
            xen_logs: out_dir.join("xen-logs"),
            _work: work,
        })
    }
}

/// The outcomes of one boot, by step name.
#[derive(Debug)]
pub struct BatchRun {
    outcomes: BTreeMap<String, Outcome>,
    /// The test host's serial console (Xen and dom0 messages, progress lines).
    pub console: String,
    /// dom0's `/var/log/xen` (guest consoles under `console/`), copied at power-off.
    pub xen_logs: PathBuf,
    _work: tempfile::TempDir,
}

impl BatchRun {
    /// The outcome of step `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<&Outcome> {
        self.outcomes.get(name)
    }
}

impl Index<&str> for BatchRun {
    type Output = Outcome;

    fn index(&self, name: &str) -> &Outcome {
        self.outcomes
            .get(name)
            .unwrap_or_else(|| panic!("no step named {name}"))
    }
}
