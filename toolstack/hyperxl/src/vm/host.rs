//! What Xen says about hyperxl's domains: one libxl context and one xenstore
//! connection answering for every VM a command looks at.

use hyperxl_contract::keys;
use libxl::{Context, DomId, DomainOps};
use xenstore_wire::{AnyTransport, Xenstore};

use super::reconcile::DomainFact;

/// Exit status when the VM died without reporting one, or the init failed.
pub const EXIT_CRASHED: i32 = 125;

/// Reads one of the guest's keys as text fit for a terminal. Everything under `data/`
/// is written by the guest, so it is untrusted: control characters become `?`, so a
/// guest cannot drive the operator's terminal through hyperxl's output.
pub fn read_guest_key<T: xenstore_wire::Transport>(
    xs: &mut Xenstore<T>,
    domid: u32,
    key: &str,
) -> Option<String> {
    xs.read_string(&keys::abs(domid, key))
        .ok()
        .map(|s| {
            s.trim()
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
}

/// The guest's reported exit code; a value that does not parse counts as a crash.
pub fn read_exit_code<T: xenstore_wire::Transport>(
    xs: &mut Xenstore<T>,
    domid: u32,
) -> Option<i32> {
    read_guest_key(xs, domid, keys::status::EXIT_CODE)
        .map(|c| c.parse::<i32>().unwrap_or(EXIT_CRASHED))
}

/// Destroys domain `domid` if it exists (libxl logs an error for one that does not).
pub fn destroy_if_present(ctx: &Context, domid: DomId) -> Result<(), libxl::LibxlError> {
    if !matches!(ctx.domain_info(domid), Ok(Some(_))) {
        return Ok(());
    }
    match ctx.destroy(domid) {
        Err(e) if !e.is_domain_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// A view of Xen; without Xen every domain is [`DomainFact::Gone`].
pub struct Host {
    ctx: Option<Context>,
    xs: std::cell::RefCell<Option<Xenstore<AnyTransport>>>,
}

impl Host {
    /// Connects if Xen is there.
    pub fn connect() -> Self {
        let ctx = Context::new().ok();
        let xs = ctx.as_ref().and_then(|_| Xenstore::open_default().ok());
        Self {
            ctx,
            xs: std::cell::RefCell::new(xs),
        }
    }

    /// What became of domain `domid`, which hyperxl named `name`. A domain with that
    /// id but another name is not ours (domids are reused, e.g. after a reboot): gone.
    pub fn probe(&self, domid: u32, name: &str) -> DomainFact {
        let Some(ctx) = &self.ctx else {
            return DomainFact::Gone;
        };
        match ctx.domain_info(DomId(domid)) {
            Ok(Some(info)) if info.name.as_deref() != Some(name) => DomainFact::Gone,
            Ok(Some(info)) if info.shutdown || info.dying => {
                let exit_code = self
                    .xs
                    .borrow_mut()
                    .as_mut()
                    .and_then(|xs| read_exit_code(xs, domid));
                DomainFact::Ended { exit_code }
            }
            Ok(Some(_)) => DomainFact::Alive,
            Ok(None) => DomainFact::Gone,
            // Not knowing is not the same as gone: leave the VM as it is.
            Err(_) => DomainFact::Alive,
        }
    }

    /// The domid of the domain called `name`, if there is one.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.ctx
            .as_ref()?
            .domid_for_name(name)
            .ok()
            .flatten()
            .map(|d| d.0)
    }

    /// Whether domain `domid` exists and is called `name`.
    fn is_ours(&self, domid: u32, name: &str) -> bool {
        self.ctx.as_ref().is_some_and(|ctx| {
            matches!(ctx.domain_info(DomId(domid)), Ok(Some(info)) if info.name.as_deref() == Some(name))
        })
    }

    /// Destroys domain `domid` if it is still the one called `name`; gone is fine.
    pub fn destroy(&self, domid: u32, name: &str) -> Result<(), libxl::LibxlError> {
        match &self.ctx {
            // is_ours already asked Xen whether it exists.
            Some(ctx) if self.is_ours(domid, name) => match ctx.destroy(DomId(domid)) {
                Err(e) if !e.is_domain_not_found() => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Asks the guest's init to stop the app (SIGTERM, then SIGKILL after the spec's
    /// grace period). Returns false when xenstore is not reachable or the domain is
    /// not (any more) the one called `name`.
    pub fn request_stop(&self, domid: u32, name: &str) -> bool {
        self.is_ours(domid, name)
            && self
                .xs
                .borrow_mut()
                .as_mut()
                .is_some_and(|xs| xs.write(&keys::abs(domid, keys::SHUTDOWN), b"stop").is_ok())
    }
}

/// Reconciles the whole store against Xen (see [`super::reconcile::reconcile`]).
pub fn reconcile_all(
    vms: &super::state::VmStore,
    host: &Host,
) -> Result<Vec<super::state::VmState>, super::state::StateError> {
    super::reconcile::reconcile(
        vms,
        |d, name| host.probe(d, name),
        |name| host.find(name),
        |d, name| {
            let _ = host.destroy(d, name);
        },
    )
}
