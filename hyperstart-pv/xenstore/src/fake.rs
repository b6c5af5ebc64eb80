//! An in-memory xenstored for unit tests: speaks the wire protocol over a byte queue.
//! Built for this crate's tests and, with the `fake` feature, for other crates' (the
//! toolstack's watcher). Requests are answered at once; a wait for a watch event never
//! blocks: it reports whether an event is queued.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::Duration;

use crate::wire::{nul_args, split_nul, Header, MsgType, HEADER_LEN};
use crate::{Access, Perm, Transport};

/// The fake daemon, as the [`Transport`] of a [`crate::Xenstore`].
pub struct FakeXenstored {
    /// The domain the client is (0: dom0, which may do anything).
    pub domid: u32,
    /// Every node: its value and permissions.
    pub nodes: BTreeMap<String, (Vec<u8>, Vec<Perm>)>,
    watches: Vec<(String, String)>,
    out: VecDeque<u8>,
    /// Every message the client sent, one entry per `send` call.
    pub sent: Vec<Vec<u8>>,
    /// Watch events (path, token) to push before the next reply.
    pub inject: Vec<(String, String)>,
    next_tx: u32,
}

impl FakeXenstored {
    /// An empty store (only `/`) for a client that is domain `domid`.
    pub fn new(domid: u32) -> Self {
        let mut f = FakeXenstored {
            domid,
            nodes: BTreeMap::new(),
            watches: Vec::new(),
            out: VecDeque::new(),
            sent: Vec::new(),
            inject: Vec::new(),
            next_tx: 1,
        };
        f.nodes
            .insert("/".into(), (Vec::new(), vec![Perm::new(Access::None, 0)]));
        f
    }

    fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    fn abs(&self, p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{}", self.home(), p)
        }
    }

    fn parent(p: &str) -> String {
        match p.rfind('/') {
            Some(0) | None => "/".into(),
            Some(i) => p[..i].to_string(),
        }
    }

    fn access(&self, p: &str) -> Access {
        if self.domid == 0 {
            return Access::Both;
        }
        let Some((_, perms)) = self.nodes.get(p) else {
            return Access::None;
        };
        if perms[0].domid == self.domid {
            return Access::Both;
        }
        perms[1..]
            .iter()
            .find(|x| x.domid == self.domid)
            .unwrap_or(&perms[0])
            .access
    }

    fn can_read(&self, p: &str) -> bool {
        matches!(self.access(p), Access::Read | Access::Both)
    }

    fn can_write(&self, p: &str) -> bool {
        matches!(self.access(p), Access::Write | Access::Both)
    }

    /// Creates `p` and missing parents; new nodes inherit the parent's perms.
    fn create(&mut self, p: &str) -> Result<(), &'static str> {
        if self.nodes.contains_key(p) {
            return if self.can_write(p) {
                Ok(())
            } else {
                Err("EACCES")
            };
        }
        let parent = Self::parent(p);
        self.create(&parent)?;
        if !self.can_write(&parent) {
            return Err("EACCES");
        }
        let perms = self.nodes[&parent].1.clone();
        self.nodes.insert(p.to_string(), (Vec::new(), perms));
        Ok(())
    }

    /// Sets node `p` (and any missing parents) as dom0 would, with `perms`.
    pub fn put(&mut self, p: &str, v: &[u8], perms: Vec<Perm>) {
        let d = self.domid;
        self.domid = 0;
        self.create(p).unwrap();
        self.domid = d;
        self.nodes.insert(p.to_string(), (v.to_vec(), perms));
    }

    fn fire(&mut self, changed: &str) {
        let home = format!("{}/", self.home());
        for (w, token) in self.watches.clone() {
            let wabs = self.abs(&w);
            if changed == wabs || changed.starts_with(&format!("{wabs}/")) {
                let shown = if w.starts_with('/') {
                    changed.to_string()
                } else {
                    changed.strip_prefix(&home).unwrap_or(changed).to_string()
                };
                self.emit(
                    MsgType::WatchEvent as u32,
                    0,
                    &nul_args(&[shown.as_bytes(), token.as_bytes()]),
                );
            }
        }
    }

    fn emit(&mut self, ty: u32, req_id: u32, payload: &[u8]) {
        let h = Header {
            msg_type: ty,
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        };
        self.out.extend(h.encode());
        self.out.extend(payload);
    }

    fn handle(&mut self, h: Header, body: &[u8]) -> Result<Vec<u8>, &'static str> {
        let args = split_nul(body);
        let arg0 = args.first().cloned().unwrap_or_default();
        let p = self.abs(&arg0);
        match MsgType::from_u32(h.msg_type).ok_or("ENOSYS")? {
            MsgType::Read => {
                let (v, _) = self.nodes.get(&p).ok_or("ENOENT")?;
                let v = v.clone();
                if !self.can_read(&p) {
                    return Err("EACCES");
                }
                Ok(v)
            }
            MsgType::Write => {
                let nul = body.iter().position(|&c| c == 0).ok_or("EINVAL")?;
                let value = body[nul + 1..].to_vec();
                self.create(&p)?;
                self.nodes.get_mut(&p).unwrap().0 = value;
                self.fire(&p);
                Ok(b"OK\0".to_vec())
            }
            MsgType::Mkdir => {
                self.create(&p)?;
                self.fire(&p);
                Ok(b"OK\0".to_vec())
            }
            MsgType::Rm => {
                if !self.nodes.contains_key(&p) {
                    return Err("ENOENT");
                }
                if !self.can_write(&Self::parent(&p)) && !self.can_write(&p) {
                    return Err("EACCES");
                }
                let pre = format!("{p}/");
                self.nodes.retain(|k, _| k != &p && !k.starts_with(&pre));
                self.fire(&p);
                Ok(b"OK\0".to_vec())
            }
            MsgType::Directory => {
                if !self.nodes.contains_key(&p) {
                    return Err("ENOENT");
                }
                let pre = if p == "/" {
                    "/".to_string()
                } else {
                    format!("{p}/")
                };
                let kids: Vec<Vec<u8>> = self
                    .nodes
                    .keys()
                    .filter_map(|k| k.strip_prefix(&pre))
                    .filter(|r| !r.is_empty() && !r.contains('/'))
                    .map(|r| r.as_bytes().to_vec())
                    .collect();
                let refs: Vec<&[u8]> = kids.iter().map(|k| k.as_slice()).collect();
                Ok(nul_args(&refs))
            }
            MsgType::GetPerms => {
                let (_, perms) = self.nodes.get(&p).ok_or("ENOENT")?;
                let s: Vec<String> = perms.iter().map(|x| x.to_string()).collect();
                let refs: Vec<&[u8]> = s.iter().map(|x| x.as_bytes()).collect();
                Ok(nul_args(&refs))
            }
            MsgType::SetPerms => {
                let perms: Vec<Perm> = args[1..]
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "EINVAL")?;
                let owner = self.nodes.get(&p).ok_or("ENOENT")?.1[0].domid;
                if self.domid != 0 && owner != self.domid {
                    return Err("EACCES");
                }
                self.nodes.get_mut(&p).unwrap().1 = perms;
                Ok(b"OK\0".to_vec())
            }
            MsgType::Watch => {
                self.watches
                    .push((arg0.clone(), args.get(1).cloned().unwrap_or_default()));
                Ok(b"OK\0".to_vec())
            }
            MsgType::Unwatch => {
                let token = args.get(1).cloned().unwrap_or_default();
                let before = self.watches.len();
                self.watches.retain(|(w, t)| !(w == &arg0 && t == &token));
                if before == self.watches.len() {
                    return Err("ENOENT");
                }
                Ok(b"OK\0".to_vec())
            }
            MsgType::TransactionStart => {
                let id = self.next_tx;
                self.next_tx += 1;
                Ok(format!("{id}\0").into_bytes())
            }
            MsgType::TransactionEnd => {
                if h.tx_id == 0 {
                    return Err("EINVAL");
                }
                if arg0 == "T" && h.tx_id == 99 {
                    return Err("EAGAIN");
                }
                Ok(b"OK\0".to_vec())
            }
            MsgType::GetDomainPath => Ok(format!("/local/domain/{arg0}\0").into_bytes()),
            _ => Err("ENOSYS"),
        }
    }
}

impl Transport for FakeXenstored {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.sent.push(msg.to_vec());
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&msg[..HEADER_LEN]);
        let h = Header::decode(&hb).map_err(io::Error::other)?;
        assert_eq!(
            msg.len(),
            HEADER_LEN + h.len as usize,
            "one message per send"
        );
        for (p, t) in std::mem::take(&mut self.inject) {
            self.emit(
                MsgType::WatchEvent as u32,
                0,
                &nul_args(&[p.as_bytes(), t.as_bytes()]),
            );
        }
        let is_watch = h.msg_type == MsgType::Watch as u32;
        match self.handle(h, &msg[HEADER_LEN..]) {
            Ok(reply) => {
                self.emit(h.msg_type, h.req_id, &reply);
                if is_watch {
                    // xenstored fires a registered watch once at once.
                    let args = split_nul(&msg[HEADER_LEN..]);
                    self.emit(
                        MsgType::WatchEvent as u32,
                        0,
                        &nul_args(&[args[0].as_bytes(), args[1].as_bytes()]),
                    );
                }
            }
            Err(e) => self.emit(MsgType::Error as u32, h.req_id, &nul_args(&[e.as_bytes()])),
        }
        Ok(())
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.out.len() < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "fake: nothing queued",
            ));
        }
        for b in buf.iter_mut() {
            *b = self.out.pop_front().unwrap();
        }
        Ok(())
    }

    fn wait_readable(&mut self, _timeout: Option<Duration>) -> io::Result<bool> {
        Ok(!self.out.is_empty())
    }
}
