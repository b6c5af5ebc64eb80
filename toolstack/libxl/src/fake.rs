//! [`FakeDomainOps`]: a recording, in-memory [`DomainOps`] for tests of
//! lifecycle logic on hosts without Xen. Compiled only for tests and with the
//! `fake` feature (enable it from dev-dependencies, never in a release build).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{Disk, DomainConfig, Nic};
use crate::error::{ErrorCode, LibxlError};
use crate::ops::{DomId, DomainExit, DomainInfo, DomainOps, HostInfo, ShutdownReason};

/// One call made on the fake, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// `create_paused` of a domain with this name.
    CreatePaused(String),
    /// `unpause`.
    Unpause(DomId),
    /// `shutdown`.
    Shutdown(DomId),
    /// `destroy`.
    Destroy(DomId),
    /// `list`.
    List,
    /// `wait_for_death`.
    WaitForDeath(DomId),
    /// `rename` to this name.
    Rename(DomId, String),
    /// `pause`.
    Pause(DomId),
    /// `add_disk` of this guest device.
    AddDisk(DomId, String),
    /// `add_nic` as this device id.
    AddNic(DomId, i32),
    /// `console_tty`.
    ConsoleTty(DomId),
    /// `host_info`.
    HostInfo,
}

/// Which operation an injected failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeOp {
    /// `create_paused`.
    CreatePaused,
    /// `unpause`.
    Unpause,
    /// `shutdown`.
    Shutdown,
    /// `destroy`.
    Destroy,
    /// `rename`.
    Rename,
    /// `pause`.
    Pause,
    /// `add_disk`.
    AddDisk,
    /// `add_nic`.
    AddNic,
    /// `console_tty`.
    ConsoleTty,
    /// `host_info`.
    HostInfo,
    /// `list`.
    List,
    /// `wait_for_death`.
    WaitForDeath,
}

#[derive(Debug, Clone)]
struct FakeDomain {
    config: DomainConfig,
    paused: bool,
    shutdown: Option<ShutdownReason>,
}

#[derive(Debug, Default)]
struct State {
    next_domid: u32,
    domains: BTreeMap<DomId, FakeDomain>,
    calls: Vec<FakeCall>,
    failures: VecDeque<(FakeOp, LibxlError)>,
    poweroff_on_shutdown: bool,
}

/// An in-memory Xen: domains get ids from 1, start paused, and follow the
/// calls made. Every call is recorded; failures can be injected per operation.
///
/// `shutdown` only records the request unless [`Self::poweroff_on_shutdown`]
/// is set; a guest's own exit is simulated with [`Self::guest_exits`].
/// `wait_for_death` never sleeps: a domain still running times out at once.
#[derive(Debug)]
pub struct FakeDomainOps {
    state: Mutex<State>,
}

impl Default for FakeDomainOps {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDomainOps {
    /// An empty fake host.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_domid: 1,
                ..State::default()
            }),
        }
    }

    /// A domain called `name` (32 MiB, a kernel `/k`), as a test's precondition: built
    /// and left paused, or with `running` unpaused as a booted guest's.
    pub fn add_domain(&self, name: &str, running: bool) -> DomId {
        let config = DomainConfig::builder(name)
            .kernel("/k")
            .memory_mib(32)
            .build()
            .expect("a valid test domain");
        let domid = self.create_paused(&config).expect("the fake builds it");
        if running {
            self.unpause(domid).expect("the fake unpauses it");
        }
        domid
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test must not hide the state from the next assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes guests obey `shutdown` at once (they power off).
    pub fn poweroff_on_shutdown(&self, yes: bool) {
        self.lock().poweroff_on_shutdown = yes;
    }

    /// The next call of `op` fails with `err` (queued in order of injection).
    pub fn fail_next(&self, op: FakeOp, err: LibxlError) {
        self.lock().failures.push_back((op, err));
    }

    /// Simulates the guest shutting down by itself (exit, crash...).
    pub fn guest_exits(&self, domid: DomId, reason: ShutdownReason) {
        if let Some(d) = self.lock().domains.get_mut(&domid) {
            d.shutdown = Some(reason);
        }
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The config a live domain was created with.
    pub fn config_of(&self, domid: DomId) -> Option<DomainConfig> {
        self.lock().domains.get(&domid).map(|d| d.config.clone())
    }

    /// Ids of the domains that exist now.
    pub fn domids(&self) -> Vec<DomId> {
        self.lock().domains.keys().copied().collect()
    }

    fn enter(&self, op: FakeOp, call: FakeCall) -> Result<MutexGuard<'_, State>, LibxlError> {
        let mut st = self.lock();
        st.calls.push(call);
        if let Some(i) = st.failures.iter().position(|(o, _)| *o == op) {
            let (_, err) = st.failures.remove(i).expect("index from position");
            return Err(err);
        }
        Ok(st)
    }
}

fn not_found(call: &'static str) -> LibxlError {
    LibxlError::Call {
        call,
        code: ErrorCode::DOMAIN_NOTFOUND,
        errno: None,
    }
}

impl DomainOps for FakeDomainOps {
    fn create_paused(&self, config: &DomainConfig) -> Result<DomId, LibxlError> {
        let mut st = self.enter(
            FakeOp::CreatePaused,
            FakeCall::CreatePaused(config.name.clone()),
        )?;
        if st.domains.values().any(|d| d.config.name == config.name) {
            // libxl 4.17 refuses a duplicate name with ERROR_FAIL (seen in the
            // Xen test host; it logs "Domain with name ... already exists").
            return Err(LibxlError::Call {
                call: "libxl_domain_create_new",
                code: ErrorCode::FAIL,
                errno: None,
            });
        }
        let domid = DomId(st.next_domid);
        st.next_domid += 1;
        st.domains.insert(
            domid,
            FakeDomain {
                config: config.clone(),
                paused: true,
                shutdown: None,
            },
        );
        Ok(domid)
    }

    fn unpause(&self, domid: DomId) -> Result<(), LibxlError> {
        let mut st = self.enter(FakeOp::Unpause, FakeCall::Unpause(domid))?;
        let d = st
            .domains
            .get_mut(&domid)
            .ok_or_else(|| not_found("libxl_domain_unpause"))?;
        d.paused = false;
        Ok(())
    }

    fn shutdown(&self, domid: DomId) -> Result<(), LibxlError> {
        let mut st = self.enter(FakeOp::Shutdown, FakeCall::Shutdown(domid))?;
        let obey = st.poweroff_on_shutdown;
        let d = st
            .domains
            .get_mut(&domid)
            .ok_or_else(|| not_found("libxl_domain_shutdown"))?;
        if obey && d.shutdown.is_none() {
            d.shutdown = Some(ShutdownReason::Poweroff);
        }
        Ok(())
    }

    fn destroy(&self, domid: DomId) -> Result<(), LibxlError> {
        let mut st = self.enter(FakeOp::Destroy, FakeCall::Destroy(domid))?;
        st.domains
            .remove(&domid)
            .map(|_| ())
            .ok_or_else(|| not_found("libxl_domain_destroy"))
    }

    fn list(&self) -> Result<Vec<DomainInfo>, LibxlError> {
        let st = self.enter(FakeOp::List, FakeCall::List)?;
        Ok(st
            .domains
            .iter()
            .map(|(&domid, d)| DomainInfo {
                domid,
                name: Some(d.config.name.clone()),
                running: !d.paused && d.shutdown.is_none(),
                blocked: false,
                paused: d.paused,
                shutdown: d.shutdown.is_some(),
                dying: false,
                shutdown_reason: d.shutdown,
                memory_kib: d.config.memory_mib * 1024,
                max_memory_kib: d.config.max_memory_mib * 1024,
                cpu_time_ns: 0,
            })
            .collect())
    }

    fn wait_for_death(&self, domid: DomId, timeout: Duration) -> Result<DomainExit, LibxlError> {
        let st = self.enter(FakeOp::WaitForDeath, FakeCall::WaitForDeath(domid))?;
        match st.domains.get(&domid) {
            None => Ok(DomainExit::Gone),
            Some(FakeDomain {
                shutdown: Some(r), ..
            }) => Ok(DomainExit::Shutdown(*r)),
            Some(_) => Err(LibxlError::Timeout { domid, timeout }),
        }
    }

    fn rename(&self, domid: DomId, old: &str, new: &str) -> Result<(), LibxlError> {
        let mut st = self.enter(FakeOp::Rename, FakeCall::Rename(domid, new.to_string()))?;
        let fail = LibxlError::Call {
            call: "libxl_domain_rename",
            code: ErrorCode::FAIL,
            errno: None,
        };
        if st.domains.values().any(|d| d.config.name == new) {
            return Err(fail);
        }
        let d = st
            .domains
            .get_mut(&domid)
            .ok_or_else(|| not_found("libxl_domain_rename"))?;
        if d.config.name != old {
            return Err(fail);
        }
        d.config.name = new.to_string();
        Ok(())
    }

    fn pause(&self, domid: DomId) -> Result<(), LibxlError> {
        let mut st = self.enter(FakeOp::Pause, FakeCall::Pause(domid))?;
        let d = st
            .domains
            .get_mut(&domid)
            .ok_or_else(|| not_found("libxl_domain_pause"))?;
        d.paused = true;
        Ok(())
    }

    fn add_disk(&self, domid: DomId, disk: &Disk) -> Result<(), LibxlError> {
        let call = FakeCall::AddDisk(domid, disk.vdev.clone());
        let mut st = self.enter(FakeOp::AddDisk, call)?;
        let d = st
            .domains
            .get_mut(&domid)
            .ok_or_else(|| not_found("libxl_device_disk_add"))?;
        d.config.disks.push(disk.clone());
        Ok(())
    }

    fn add_nic(&self, domid: DomId, nic: &Nic, devid: i32) -> Result<(), LibxlError> {
        let mut st = self.enter(FakeOp::AddNic, FakeCall::AddNic(domid, devid))?;
        let d = st
            .domains
            .get_mut(&domid)
            .ok_or_else(|| not_found("libxl_device_nic_add"))?;
        d.config.nics.push(nic.clone());
        Ok(())
    }

    /// A fake domain has no console: `/dev/null` (reads end at once).
    fn console_tty(&self, domid: DomId) -> Result<PathBuf, LibxlError> {
        let st = self.enter(FakeOp::ConsoleTty, FakeCall::ConsoleTty(domid))?;
        match st.domains.contains_key(&domid) {
            true => Ok(PathBuf::from("/dev/null")),
            false => Err(not_found("libxl_console_get_tty")),
        }
    }

    /// 4 GiB, less what the domains hold; 1 CPU.
    fn host_info(&self) -> Result<HostInfo, LibxlError> {
        let st = self.enter(FakeOp::HostInfo, FakeCall::HostInfo)?;
        let held: u64 = st
            .domains
            .values()
            .map(|d| d.config.memory_mib * 1024)
            .sum();
        let total = 4 << 20;
        Ok(HostInfo {
            xen_version: "4.17-fake".into(),
            total_memory_kib: total,
            free_memory_kib: total.saturating_sub(held),
            cpus: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> DomainConfig {
        DomainConfig::builder(name)
            .kernel("/k")
            .memory_mib(32)
            .build()
            .unwrap()
    }

    /// A typical lifecycle, written against the trait as the toolstack would.
    fn run_to_exit(ops: &dyn DomainOps, name: &str) -> Result<DomainExit, LibxlError> {
        let domid = ops.create_paused(&cfg(name))?;
        ops.unpause(domid)?;
        let exit = ops.wait_for_death(domid, Duration::from_secs(1))?;
        ops.destroy(domid)?;
        Ok(exit)
    }

    #[test]
    fn rename_checks_the_old_name_and_refuses_a_taken_one() {
        let fake = FakeDomainOps::new();
        let a = fake.create_paused(&cfg("a")).unwrap();
        fake.create_paused(&cfg("b")).unwrap();
        assert!(fake.rename(a, "a", "b").is_err(), "taken");
        assert!(fake.rename(a, "x", "c").is_err(), "not called x");
        fake.rename(a, "a", "c").unwrap();
        assert_eq!(fake.name_of(a).as_deref(), Some("c"));
        fake.unpause(a).unwrap();
        fake.pause(a).unwrap();
        fake.add_disk(a, &crate::Disk::new("/dev/loop9", "xvdb"))
            .unwrap();
        assert_eq!(fake.config_of(a).unwrap().disks.len(), 1);
        let free = fake.host_info().unwrap().free_memory_kib;
        assert_eq!(free, (4 << 20) - 2 * 32 * 1024);
    }

    #[test]
    fn lifecycle_is_recorded() {
        let fake = FakeDomainOps::new();
        let id = fake.create_paused(&cfg("a")).unwrap();
        assert_eq!(id, DomId(1));
        assert!(fake.list().unwrap()[0].paused);
        fake.unpause(id).unwrap();
        assert!(fake.list().unwrap()[0].running);
        assert_eq!(
            fake.wait_for_death(id, Duration::ZERO),
            Err(LibxlError::Timeout {
                domid: id,
                timeout: Duration::ZERO
            })
        );
        fake.guest_exits(id, ShutdownReason::Crash);
        assert_eq!(
            run_to_exit_existing(&fake, id),
            DomainExit::Shutdown(ShutdownReason::Crash)
        );
        assert!(fake.domids().is_empty());
        assert_eq!(
            fake.calls(),
            vec![
                FakeCall::CreatePaused("a".into()),
                FakeCall::List,
                FakeCall::Unpause(id),
                FakeCall::List,
                FakeCall::WaitForDeath(id),
                FakeCall::WaitForDeath(id),
                FakeCall::Destroy(id),
            ]
        );
    }

    fn run_to_exit_existing(fake: &FakeDomainOps, id: DomId) -> DomainExit {
        let exit = fake.wait_for_death(id, Duration::ZERO).unwrap();
        fake.destroy(id).unwrap();
        exit
    }

    #[test]
    fn shutdown_obeyed_when_asked() {
        let fake = FakeDomainOps::new();
        fake.poweroff_on_shutdown(true);
        let id = fake.create_paused(&cfg("a")).unwrap();
        fake.shutdown(id).unwrap();
        assert_eq!(
            fake.wait_for_death(id, Duration::ZERO).unwrap(),
            DomainExit::Shutdown(ShutdownReason::Poweroff)
        );
    }

    #[test]
    fn duplicate_names_and_missing_domains_fail_like_libxl() {
        let fake = FakeDomainOps::new();
        fake.create_paused(&cfg("a")).unwrap();
        let dup = fake.create_paused(&cfg("a")).unwrap_err();
        assert_eq!(dup.code(), Some(ErrorCode::FAIL));
        assert!(fake.destroy(DomId(42)).unwrap_err().is_domain_not_found());
        assert_eq!(
            fake.wait_for_death(DomId(42), Duration::ZERO),
            Ok(DomainExit::Gone)
        );
    }

    #[test]
    fn injected_failure_hits_once() {
        let fake = FakeDomainOps::new();
        fake.fail_next(FakeOp::Unpause, LibxlError::OutOfMemory);
        let e = run_to_exit(&fake, "a").unwrap_err();
        assert_eq!(e, LibxlError::OutOfMemory);
        // The domain is left paused for the caller to clean up.
        let ids = fake.domids();
        assert_eq!(ids, vec![DomId(1)]);
        fake.unpause(ids[0]).unwrap();
    }
}
