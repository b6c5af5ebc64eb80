//! The bundle's OCI runtime spec (`config.json`, written by containerd) turned into what
//! hyperxl runs: a [`Machine`] and the guest's container [`Spec`]. containerd has
//! already merged the image's config with the user's flags, so the process is taken as
//! written; the VM's size comes from the cgroup limits a runc container would get.

use hyperxl_contract::Spec;
use hyperxl_core::vm::machine::{Kind, Machine, MachineError, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use oci_spec::runtime::Spec as OciSpec;

/// Annotation choosing the domain type (`pvh`, the default, or `pv`).
pub const ANNOTATION_TYPE: &str = "io.hyperxl.type";

/// Why a bundle cannot run as a VM.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// No `process`, or no `process.args`.
    #[error("the bundle's spec has no process to run")]
    NoProcess,
    /// The machine its limits ask for is out of hyperxl's range.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The container spec did not validate.
    #[error("invalid container spec: {0}")]
    Spec(#[from] hyperxl_contract::SpecError),
}

/// The VM for `oci`: memory from `linux.resources.memory.limit` (rounded up to MiB),
/// vCPUs from the CPU quota over its period (rounded up), each hyperxl's default when
/// unset; the domain type from the [`ANNOTATION_TYPE`] annotation.
pub fn machine(oci: &OciSpec) -> Result<Machine, OciError> {
    let resources = oci.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory_mib = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&b| b > 0)
        .map_or(DEFAULT_MEMORY_MIB, |b| (b as u64).div_ceil(1 << 20));
    let vcpus = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|&(q, p)| q > 0 && p > 0)
        .map_or(i64::from(DEFAULT_VCPUS), |(q, p)| {
            (q as u64).div_ceil(p) as i64
        });
    let kind: Kind = match oci
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TYPE))
    {
        Some(k) => k.parse()?,
        None => Kind::default(),
    };
    Ok(Machine::new(memory_mib, vcpus, kind)?)
}

/// What the task's process and an exec'd one share: argv (never empty), environment,
/// working directory (none: the image's) and user as `uid:gid`.
struct Process {
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: String,
}

impl Process {
    fn from_oci(process: &oci_spec::runtime::Process) -> Result<Self, OciError> {
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(OciError::NoProcess);
        }
        let cwd = process.cwd().to_string_lossy();
        let user = process.user();
        Ok(Process {
            args,
            env: process.env().clone().unwrap_or_default(),
            cwd: (!cwd.is_empty()).then(|| cwd.into_owned()),
            user: format!("{}:{}", user.uid(), user.gid()),
        })
    }
}

/// The guest's spec for `oci`'s process: argv, environment, working directory, user
/// (as `uid:gid`), terminal and hostname. `rootfs` and everything dom0 adds later are
/// left at their defaults.
pub fn spec(oci: &OciSpec) -> Result<Spec, OciError> {
    let oci_process = oci.process().as_ref().ok_or(OciError::NoProcess)?;
    let p = Process::from_oci(oci_process)?;
    let mut spec = Spec::new(p.args);
    spec.env = p.env;
    spec.working_dir = p.cwd.unwrap_or_else(|| "/".into());
    spec.user = p.user;
    spec.terminal = oci_process.terminal().unwrap_or(false);
    spec.hostname = oci.hostname().clone().unwrap_or_default();
    Ok(spec)
}

/// The request for an exec'd process (`ctr task exec`): containerd sends the whole
/// process, the container's environment included.
pub fn exec_request(
    process: &oci_spec::runtime::Process,
    terminal: bool,
) -> Result<hyperxl_contract::control::ExecRequest, OciError> {
    let p = Process::from_oci(process)?;
    Ok(hyperxl_contract::control::ExecRequest {
        args: p.args,
        env: p.env,
        user: Some(p.user),
        workdir: p.cwd,
        tty: terminal,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(json: &str) -> OciSpec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["sh","-c","echo hi"],"env":["PATH=/bin","A=1"],"cwd":"/srv",
                   "user":{"uid":1000,"gid":100},"terminal":true},
        "hostname":"t1"}"#;

    #[test]
    fn the_process_is_taken_as_containerd_wrote_it() {
        let s = spec(&oci(BASE)).unwrap();
        assert_eq!(s.args, ["sh", "-c", "echo hi"]);
        assert_eq!(s.env, ["PATH=/bin", "A=1"]);
        assert_eq!(s.working_dir, "/srv");
        assert_eq!(s.user, "1000:100");
        assert!(s.terminal);
        assert_eq!(s.hostname, "t1");
        assert_eq!(machine(&oci(BASE)).unwrap(), Machine::default());
    }

    #[test]
    fn limits_size_the_vm_and_out_of_range_ones_are_refused() {
        let with = |resources: &str, annotations: &str| {
            oci(&BASE.replace(
                r#""hostname":"t1""#,
                &format!(r#""hostname":"t1","linux":{{"resources":{resources}}}{annotations}"#),
            ))
        };
        let m = machine(&with(
            r#"{"memory":{"limit":67108865},"cpu":{"quota":150000,"period":100000}}"#,
            r#","annotations":{"io.hyperxl.type":"pv"}"#,
        ))
        .unwrap();
        assert_eq!((m.memory_mib(), m.vcpus(), m.kind()), (65, 2, Kind::Pv));
        let small = with(r#"{"memory":{"limit":8388608}}"#, "");
        assert!(matches!(machine(&small), Err(OciError::Machine(_))));
        let many = with(r#"{"cpu":{"quota":10000000,"period":100000}}"#, "");
        assert!(matches!(machine(&many), Err(OciError::Machine(_))));
        let hvm = with("{}", r#","annotations":{"io.hyperxl.type":"hvm"}"#);
        assert!(machine(&hvm).is_err());
    }

    #[test]
    fn an_exec_takes_the_process_containerd_sent() {
        let p: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"args":["sh","-c","echo $((6*7))"],"env":["A=1"],"cwd":"/w","user":{"uid":5,"gid":6}}"#,
        )
        .unwrap();
        let r = exec_request(&p, true).unwrap();
        assert_eq!(r.args, ["sh", "-c", "echo $((6*7))"]);
        assert_eq!(
            (r.user.as_deref(), r.workdir.as_deref()),
            (Some("5:6"), Some("/w"))
        );
        assert!(r.tty && !r.detach && r.env == ["A=1"]);
    }

    #[test]
    fn a_bundle_without_a_process_is_refused() {
        let none = oci(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
        assert!(matches!(spec(&none), Err(OciError::NoProcess)));
        let empty = oci(&BASE.replace(r#"["sh","-c","echo hi"]"#, "[]"));
        assert!(matches!(spec(&empty), Err(OciError::NoProcess)));
    }
}
