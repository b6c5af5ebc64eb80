//! What Xen says about hyperxl's domains: one libxl context and one xenstore
//! connection answering for every VM a command looks at.

use hyperxl_contract::keys;
use libxl::{Context, DomId, DomainOps};
use xenstore_wire::{AnyTransport, Transport, Xenstore};

use super::reconcile::DomainFact;

/// Exit status when the VM died without reporting one, or the init failed.
pub const EXIT_CRASHED: i32 = hyperxl_contract::exit::INIT_FAILED;

/// Reads one of the guest's keys as text fit for a terminal. Everything under `data/`
/// is written by the guest, so it is untrusted: control and format characters become
/// `?` (see [`terminal_safe`]), so a guest cannot drive the operator's terminal, nor
/// reorder what it shows, through hyperxl's output.
pub fn read_guest_key<T: xenstore_wire::Transport>(
    xs: &mut Xenstore<T>,
    domid: u32,
    key: &str,
) -> Option<String> {
    xs.read_string(&keys::abs(domid, key))
        .ok()
        .map(|s| terminal_safe(s.trim()))
        .filter(|s| !s.is_empty())
}

/// `text` with every control character (C0, DEL, C1) and every invisible format
/// character (Unicode's Cf, and the line and paragraph separators) replaced by `?`:
/// bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069) would let a guest
/// make hyperxl's output read other than it is; zero-width characters hide text.
pub fn terminal_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || is_format(c) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Unicode's format characters (general category Cf) and the separators Zl and Zp.
fn is_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// The guest's reported exit code; a value that does not parse counts as a crash.
pub fn read_exit_code<T: xenstore_wire::Transport>(
    xs: &mut Xenstore<T>,
    domid: u32,
) -> Option<i32> {
    read_guest_key(xs, domid, keys::status::EXIT_CODE)
        .map(|c| c.parse::<i32>().unwrap_or(EXIT_CRASHED))
}

/// Whether the init of `domid` says it waits for a spec (`state=pooled`); not knowing
/// is not waiting.
pub fn init_waits_for_spec<T: xenstore_wire::Transport>(xs: &mut Xenstore<T>, domid: u32) -> bool {
    xs.read(&keys::abs(domid, keys::status::STATE))
        .is_ok_and(|s| s == hyperxl_contract::State::Pooled.as_str().as_bytes())
}

/// Destroys domain `domid` if it exists (libxl logs an error for one that does not).
pub fn destroy_if_present(
    ctx: &dyn libxl::DomainOps,
    domid: DomId,
) -> Result<(), libxl::LibxlError> {
    if !matches!(ctx.domain_info(domid), Ok(Some(_))) {
        return Ok(());
    }
    match ctx.destroy(domid) {
        Err(e) if !e.is_domain_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// A view of Xen; without Xen every domain is [`DomainFact::Gone`]. On dom0 it holds a
/// libxl context and a xenstore connection ([`Host::connect`]); tests give it fakes
/// ([`Host::with`]).
pub struct Host<T: Transport = AnyTransport> {
    ctx: Option<Box<dyn DomainOps>>,
    xs: std::cell::RefCell<Option<Xenstore<T>>>,
}

impl Host {
    /// Connects if Xen is there.
    pub fn connect() -> Self {
        let ctx = Context::new().ok();
        let xs = ctx.as_ref().and_then(|_| Xenstore::open_default().ok());
        Self {
            ctx: ctx.map(|c| Box::new(c) as Box<dyn DomainOps>),
            xs: std::cell::RefCell::new(xs),
        }
    }
}

impl<T: Transport> Host<T> {
    /// A view through `ctx` and `xs` (another libxl, a fake Xen).
    pub fn with(ctx: Box<dyn DomainOps>, xs: Xenstore<T>) -> Self {
        Self {
            ctx: Some(ctx),
            xs: std::cell::RefCell::new(Some(xs)),
        }
    }

    /// The domains it answers from, if Xen is there.
    pub fn domains(&self) -> Option<&dyn DomainOps> {
        self.ctx.as_deref()
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
            Ok(Some(info))
                if (info.paused || self.waits_for_spec(domid)) && self.never_started(domid) =>
            {
                DomainFact::NeverStarted
            }
            Ok(Some(_)) => DomainFact::Alive,
            Ok(None) => DomainFact::Gone,
            // Not knowing is not the same as gone: leave the VM as it is.
            Err(_) => DomainFact::Alive,
        }
    }

    /// Whether xenstore says the guest of `domid` never wrote `started` (not knowing is
    /// not never: false without xenstore).
    fn never_started(&self, domid: u32) -> bool {
        self.xs.borrow_mut().as_mut().is_some_and(|xs| {
            matches!(
                xs.read(&keys::abs(domid, keys::status::STARTED)),
                Err(xenstore_wire::XenstoreError::Server {
                    errno: xenstore_wire::XsErrno::NoEntry,
                    ..
                })
            )
        })
    }

    /// Whether the init of `domid` says it waits for a spec (a pooled VM's): running,
    /// yet started by nobody.
    fn waits_for_spec(&self, domid: u32) -> bool {
        self.xs
            .borrow_mut()
            .as_mut()
            .is_some_and(|xs| init_waits_for_spec(xs, domid))
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

    /// What Xen says of domain `domid` (CPU time, memory, paused), if it is still the
    /// one called `name`.
    pub fn info(&self, domid: u32, name: &str) -> Option<libxl::DomainInfo> {
        let info = self.ctx.as_ref()?.domain_info(DomId(domid)).ok()??;
        (info.name.as_deref() == Some(name)).then_some(info)
    }

    /// Pauses (or, with `paused` false, unpauses) domain `domid` if it is still the one
    /// called `name`: its vCPUs stop being scheduled, its memory and devices stay.
    /// False if there is no such domain (any more).
    pub fn set_paused(
        &self,
        domid: u32,
        name: &str,
        paused: bool,
    ) -> Result<bool, libxl::LibxlError> {
        match &self.ctx {
            Some(ctx) if self.is_ours(domid, name) => {
                if paused {
                    ctx.pause(DomId(domid))?;
                } else {
                    ctx.unpause(DomId(domid))?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Asks the guest's init to stop the app (SIGTERM, then SIGKILL after the spec's
    /// grace period). Returns false when xenstore is not reachable or the domain is
    /// not (any more) the one called `name`.
    pub fn request_stop(&self, domid: u32, name: &str) -> bool {
        self.is_ours(domid, name)
            && self.xs.borrow_mut().as_mut().is_some_and(|xs| {
                xs.write(
                    &keys::abs(domid, keys::SHUTDOWN),
                    keys::STOP_REQUEST.as_bytes(),
                )
                .is_ok()
            })
    }
}

/// Reconciles the whole store against Xen (see [`super::reconcile::reconcile`]).
pub fn reconcile_all<T: Transport>(
    vms: &super::state::VmStore,
    host: &Host<T>,
) -> Result<Vec<super::state::VmState>, super::state::StateError> {
    let vms_now = super::reconcile::reconcile(
        vms,
        |d, name| host.probe(d, name),
        |name| host.find(name),
        |d, name| host.destroy(d, name).is_ok(),
    )?;
    // Addresses and rules of VMs that ended without anyone tearing them down.
    crate::net::sweep(vms, &vms_now);
    Ok(vms_now)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use xenstore_wire::wire::{encode_message, Header, MsgType, HEADER_LEN};

    use super::*;

    /// A xenstored that answers every request with `value`.
    struct OneValue {
        value: Vec<u8>,
        out: VecDeque<u8>,
    }

    impl xenstore_wire::Transport for OneValue {
        fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&msg[..HEADER_LEN]);
            let h = Header::decode(&h).expect("a header");
            let reply =
                encode_message(MsgType::Read, h.req_id, h.tx_id, &self.value).expect("a reply");
            self.out.extend(reply);
            Ok(())
        }
        fn recv_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            for b in buf {
                *b = self.out.pop_front().expect("a reply was sent");
            }
            Ok(())
        }
        fn wait_readable(&mut self, _: Option<Duration>) -> std::io::Result<bool> {
            Ok(!self.out.is_empty())
        }
    }

    fn guest_wrote(value: &str) -> Option<String> {
        let mut xs = Xenstore::new(OneValue {
            value: value.as_bytes().to_vec(),
            out: VecDeque::new(),
        });
        read_guest_key(&mut xs, 5, keys::status::ERROR)
    }

    #[test]
    fn defect13_bidi_overrides_and_format_chars_from_the_guest_are_neutralised() {
        // "exit 0" shown, "1 tixe" meant: a right-to-left override reorders the text.
        for (written, shown) in [
            ("ok \u{202E}1 tixe", "ok ?1 tixe"),
            ("a\u{202A}b\u{202B}c\u{202C}d\u{202D}e", "a?b?c?d?e"),
            ("\u{2066}x\u{2067}y\u{2068}z\u{2069}", "?x?y?z?"),
            ("zero\u{200B}width\u{200F}\u{FEFF}", "zero?width??"),
            ("line\u{2028}para\u{2029}end", "line?para?end"),
            ("\u{1b}[31mred\u{7}\u{9b}2J", "?[31mred??2J"),
        ] {
            assert_eq!(guest_wrote(written).as_deref(), Some(shown), "{written:?}");
        }
        assert_eq!(
            guest_wrote("command not found: café").as_deref(),
            Some("command not found: café"),
            "ordinary text is kept"
        );
    }

    /// What Xen says, through fakes: a domid that now belongs to another domain is not
    /// ours to report on, destroy or stop.
    mod probe {
        use libxl::fake::FakeDomainOps;
        use libxl::ShutdownReason;
        use xenstore_wire::fake::FakeXenstored;
        use xenstore_wire::{Access, Perm};

        use super::super::*;

        fn host(domains: &[&str], guest_keys: &[(u32, &str, &str)]) -> Host<FakeXenstored> {
            let xen = FakeDomainOps::new();
            for name in domains {
                xen.add_domain(name, false);
            }
            let mut store = FakeXenstored::new(0);
            for (domid, k, v) in guest_keys {
                let perms = vec![Perm::new(Access::None, *domid)];
                store.put(&keys::abs(*domid, k), v.as_bytes(), perms);
            }
            Host::with(Box::new(xen), Xenstore::new(store))
        }

        fn xen<T: Transport>(h: &Host<T>) -> &dyn DomainOps {
            h.domains().unwrap()
        }

        #[test]
        fn a_reused_domid_is_gone_and_its_new_owner_is_left_alone() {
            let h = host(&["hyperxl-tenant-b"], &[]);
            xen(&h).unpause(DomId(1)).unwrap();
            assert_eq!(h.probe(1, "hyperxl-tenant-a"), DomainFact::Gone);
            h.destroy(1, "hyperxl-tenant-a").unwrap();
            assert!(!h.request_stop(1, "hyperxl-tenant-a"));
            assert_eq!(
                xen(&h).name_of(DomId(1)).as_deref(),
                Some("hyperxl-tenant-b")
            );
            assert_eq!(h.probe(1, "hyperxl-tenant-b"), DomainFact::Alive);
            h.destroy(1, "hyperxl-tenant-b").unwrap();
            assert_eq!(h.probe(1, "hyperxl-tenant-b"), DomainFact::Gone);
        }

        #[test]
        fn an_ended_domain_reports_what_its_guest_wrote() {
            let xen = FakeDomainOps::new();
            for name in ["hyperxl-a", "hyperxl-b"] {
                let domid = xen.add_domain(name, true);
                xen.guest_exits(domid, ShutdownReason::Poweroff);
            }
            let mut store = FakeXenstored::new(0);
            let perms = vec![Perm::new(Access::None, 1)];
            store.put(&keys::abs(1, keys::status::EXIT_CODE), b"7", perms);
            let h = Host::with(Box::new(xen), Xenstore::new(store));
            let ended = |exit_code| DomainFact::Ended { exit_code };
            assert_eq!(h.probe(1, "hyperxl-a"), ended(Some(7)));
            assert_eq!(h.probe(2, "hyperxl-b"), ended(None), "no exit code");
        }

        #[test]
        fn a_paused_or_waiting_domain_that_never_started_is_reported_so() {
            let h = host(
                &["hyperxl-paused", "hyperxl-pooled", "hyperxl-started"],
                &[
                    (2, keys::status::STATE, "pooled"),
                    (3, keys::status::STARTED, "1"),
                ],
            );
            assert_eq!(h.probe(1, "hyperxl-paused"), DomainFact::NeverStarted);
            xen(&h).unpause(DomId(2)).unwrap();
            assert_eq!(h.probe(2, "hyperxl-pooled"), DomainFact::NeverStarted);
            // Paused after its app started (xl pause): alive, not to be reaped.
            assert_eq!(h.probe(3, "hyperxl-started"), DomainFact::Alive);
        }

        #[test]
        fn a_stop_request_reaches_only_our_domain() {
            let h = host(&["hyperxl-a"], &[]);
            assert!(h.request_stop(1, "hyperxl-a"));
            let mut xs = h.xs.borrow_mut();
            let xs = xs.as_mut().unwrap();
            assert_eq!(
                xs.read(&keys::abs(1, keys::SHUTDOWN)).unwrap(),
                keys::STOP_REQUEST.as_bytes()
            );
        }
    }
}
