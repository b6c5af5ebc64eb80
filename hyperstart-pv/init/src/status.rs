//! Status reporting to the guest's `data/hyperxl/` keys.

use hyperxl_contract::{keys::status, State};
use xenstore_wire::{XenbusTransport, Xenstore};

use crate::console::say;

/// The status writer; a failed write is printed and otherwise ignored, since the
/// console is the only other channel left.
pub struct Status {
    xs: Option<Xenstore<XenbusTransport>>,
}

impl Status {
    /// A writer without xenstore (console only), until [`Status::attach`].
    pub fn console_only() -> Self {
        Status { xs: None }
    }

    /// Starts writing through this connection.
    pub fn attach(&mut self, xs: Xenstore<XenbusTransport>) {
        self.xs = Some(xs);
    }

    /// The connection, if attached.
    pub fn xs(&mut self) -> Option<&mut Xenstore<XenbusTransport>> {
        self.xs.as_mut()
    }

    fn put(&mut self, key: &str, value: &str) {
        if let Some(xs) = self.xs.as_mut() {
            if let Err(e) = xs.write(key, value.as_bytes()) {
                say!("cannot write {key}: {e}");
            }
        }
    }

    /// Writes `state`.
    pub fn state(&mut self, s: State) {
        self.put(status::STATE, s.as_str());
    }

    /// Marks the app as started.
    pub fn started(&mut self) {
        self.put(status::STARTED, "1");
        self.state(State::Started);
    }

    /// Reports the app's exit code, with an error text when given. First every write
    /// is flushed to the disks (the toolstack destroys the domain as soon as it has the
    /// code and the console's last line: a volume must hold what the app wrote), then
    /// the console's last line (which tells the toolstack the output is complete), then
    /// the keys in xenstore.
    pub fn exited(&mut self, code: i32, error: Option<&str>) {
        nix::unistd::sync();
        eprintln!("{}{code}", hyperxl_contract::console::APP_EXITED);
        if let Some(e) = error {
            self.put(status::ERROR, e);
        }
        self.put(status::EXIT_CODE, &code.to_string());
        self.state(State::Exited);
    }

    /// Reports a failure of the init itself.
    pub fn failed(&mut self, error: &str) {
        say!("error: {error}");
        self.put(status::ERROR, error);
        self.state(State::Failed);
    }
}
