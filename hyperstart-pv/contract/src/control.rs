//! The control channel's protocol, version [`CONTROL_VERSION`]: the frames dom0 and the
//! guest init exchange over one byte stream per session (a Xen vchan: grant-table rings
//! announced in xenstore, no QEMU, no dom0 daemon).
//!
//! A session is one process in the guest (`hyperxl exec`, and later `run -i/-t`, `cp`).
//! Each side first sends [`Frame::Hello`] with its version; a side that does not speak
//! the other's version closes the stream. dom0 then sends [`Frame::Exec`], the guest
//! answers [`Frame::Started`] (or [`Frame::Error`] then [`Frame::Exit`] with 126/127),
//! and the streams flow until [`Frame::Exit`].
//!
//! Stdin is flow-controlled: dom0 may have at most [`STDIN_WINDOW`] bytes of
//! [`Frame::Stdin`] sent and not yet handed to the process; the guest returns credit
//! with [`Frame::StdinWindow`] as the process reads. So the guest can always decode
//! everything dom0 sent within a bounded buffer, and a [`Frame::Signal`] or
//! [`Frame::Resize`] is never stuck behind stdin a process does not read.
//!
//! Wire format: an 8-byte header, then the payload.
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `hx` |
//! | 2 | kind ([`Frame::kind`]) |
//! | 3 | flags, 0 |
//! | 4..8 | payload length, u32 little-endian, at most [`MAX_PAYLOAD`] |
//!
//! Fixed fields are little-endian integers; [`ExecRequest`] is JSON. Both peers treat
//! every frame as untrusted: [`decode`] looks at no more than one header and one bounded
//! payload, allocates only what the frame holds (at most [`MAX_PAYLOAD`] bytes, never
//! what a length field merely claims), and rejects anything malformed with a
//! [`FrameError`] (the session then ends; nothing is resynchronised).

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const CONTROL_VERSION: u16 = 2;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// The largest payload a frame may carry (stream data is sent in chunks of at most this).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The most stdin bytes dom0 may have sent and not yet had returned by
/// [`Frame::StdinWindow`] (what the guest buffers for a process at most).
pub const STDIN_WINDOW: usize = 2 * MAX_PAYLOAD;
/// The most arguments, and environment entries, an exec may carry.
pub const MAX_ARGS: usize = 4096;
const MAGIC: [u8; 2] = *b"hx";

/// What dom0 asks the guest to run. The default is no command at all: start from
/// [`ExecRequest::attach_app`], [`ExecRequest::builtin`] or a struct literal with `args`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv; `args[0]` is looked up in the PATH of `env` (as `docker exec`).
    pub args: Vec<String>,
    /// Environment (`NAME=VALUE`), added to the app's own.
    #[serde(default)]
    pub env: Vec<String>,
    /// User as Docker spells it (name, uid, uid:gid); none: the app's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory (absolute); none: the app's.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Give the process a pseudo-terminal (stdout and stderr are then one stream).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size at start (with `tty`).
    #[serde(default)]
    pub rows: u16,
    /// The terminal's width at start (with `tty`).
    #[serde(default)]
    pub cols: u16,
    /// Start the process detached from the session (`exec -d`): its stdin, stdout and
    /// stderr are `/dev/null`, and the session ends once it started.
    #[serde(default)]
    pub detach: bool,
    /// Start nothing: attach the session to the app (`run -i`, `run -t`, `attach`).
    /// Stdin frames go to the app's stdin pipe or terminal; with a terminal (`run -t`),
    /// Resize sets its size (`rows`/`cols` at start) and the app's output comes back as
    /// Stdout. The session ends with Exit(0) once a pipe was closed or the app stopped
    /// reading, or once a terminal's output ended; a session dom0 leaves without
    /// CloseStdin (a detach) leaves the input to the next one. `args` is empty.
    #[serde(default)]
    pub attach: bool,
    /// `hyperxl cp` and `top`: the init runs its own code (as root, in `/`) instead of
    /// a command, so they need nothing in the image. `args` is empty.
    #[serde(default)]
    pub builtin: Option<Builtin>,
}

/// What the init itself does in a session, as an ordinary session process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Builtin {
    /// `cp VM:PATH ...`: send `path` (absolute, not followed if a symlink) as a tar
    /// stream on stdout.
    CopyOut {
        /// The guest path.
        path: String,
    },
    /// `cp ... VM:PATH`: unpack the tar stream on stdin at `path` (absolute) as `place`
    /// says.
    CopyIn {
        /// The guest path.
        path: String,
        /// Where the stream's top entry goes.
        place: CopyPlace,
    },
    /// `top`: the guest's processes as a table on stdout.
    Top,
    /// `kill -s`: send this signal to the app (its first process). Exit 0; 1 with an
    /// Error frame when no app runs or the number is no signal.
    Signal {
        /// The signal's number.
        signal: i32,
    },
}

/// Where an unpacked stream goes (`docker cp`'s rules; see `hyperxl_tarcopy::Place`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyPlace {
    /// `DEST/TOP` if `DEST` is a directory, else `DEST`.
    Named,
    /// `SRC/.`: the top directory's contents into `DEST`.
    Contents,
    /// `cp - VM:DEST`: any stream, into directory `DEST`.
    Into,
}

impl ExecRequest {
    /// A session attached to the app itself (`run -i`/`-t`, `attach`); with `tty`, the
    /// terminal's size at start.
    pub fn attach_app(tty: bool, rows: u16, cols: u16) -> Self {
        Self {
            tty,
            rows,
            cols,
            attach: true,
            ..Self::default()
        }
    }

    /// A session in which the init runs `builtin` (`cp`, `top`).
    pub fn builtin(builtin: Builtin) -> Self {
        Self {
            builtin: Some(builtin),
            ..Self::default()
        }
    }

    /// Checks what the guest relies on: a command, `NAME=VALUE` entries, an absolute
    /// working directory, no NUL bytes anywhere, bounded counts.
    pub fn validate(&self) -> Result<(), FrameError> {
        let bad = |reason: &str| FrameError::BadPayload {
            kind: KIND_EXEC,
            reason: reason.to_string(),
        };
        if let Some(builtin) = &self.builtin {
            if !self.args.is_empty() || self.tty || self.detach || self.attach {
                return Err(bad("a builtin session starts no command"));
            }
            if let Builtin::CopyOut { path } | Builtin::CopyIn { path, .. } = builtin {
                if !path.starts_with('/') || path.contains('\0') {
                    return Err(bad("a copy path is not absolute"));
                }
            }
        } else if self.attach {
            if !self.args.is_empty() || self.detach {
                return Err(bad("an attach session starts no process"));
            }
        } else if self.args.is_empty() || self.args[0].is_empty() {
            return Err(bad("no command"));
        }
        if self.args.len() > MAX_ARGS || self.env.len() > MAX_ARGS {
            return Err(bad("too many arguments or environment entries"));
        }
        let strings = self
            .args
            .iter()
            .chain(&self.env)
            .chain(self.user.iter())
            .chain(self.workdir.iter());
        if strings.into_iter().any(|s| s.contains('\0')) {
            return Err(bad("a NUL byte in a string"));
        }
        if self
            .env
            .iter()
            .any(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(bad("an environment entry is not NAME=VALUE"));
        }
        if self.workdir.as_ref().is_some_and(|w| !w.starts_with('/')) {
            return Err(bad("the working directory is not absolute"));
        }
        Ok(())
    }
}

/// One message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Both ways, first: the sender's protocol version.
    Hello {
        /// [`CONTROL_VERSION`] of the sender.
        version: u16,
    },
    /// dom0 -> guest: start a process.
    Exec(ExecRequest),
    /// dom0 -> guest: bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// dom0 -> guest: end of stdin (the process reads EOF).
    CloseStdin,
    /// dom0 -> guest: the terminal's new size (with a tty).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// dom0 -> guest: deliver this signal to the process.
    Signal(i32),
    /// guest -> dom0: the process runs, with this pid in the guest.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// guest -> dom0: the process's stdout (with a tty: the terminal's output).
    Stdout(Vec<u8>),
    /// guest -> dom0: the process's stderr.
    Stderr(Vec<u8>),
    /// guest -> dom0, last: the exit code (128 + N for a signal, 126/127 when the
    /// command could not run).
    Exit(i32),
    /// guest -> dom0: the process took this many more stdin bytes; dom0 may send as
    /// many more (see [`STDIN_WINDOW`]).
    StdinWindow(u32),
    /// guest -> dom0: why the request failed (one line, before its [`Frame::Exit`]).
    Error(String),
}

const KIND_HELLO: u8 = 1;
const KIND_EXEC: u8 = 2;
const KIND_STDIN: u8 = 3;
const KIND_CLOSE_STDIN: u8 = 4;
const KIND_RESIZE: u8 = 5;
const KIND_SIGNAL: u8 = 6;
const KIND_STARTED: u8 = 16;
const KIND_STDOUT: u8 = 17;
const KIND_STDERR: u8 = 18;
const KIND_EXIT: u8 = 19;
const KIND_ERROR: u8 = 20;
const KIND_STDIN_WINDOW: u8 = 21;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header does not start with the magic bytes.
    #[error("not a control frame (bad magic)")]
    BadMagic,
    /// A kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Flags this version does not define.
    #[error("frame flags {0:#x} are not defined")]
    BadFlags(u8),
    /// A length over [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLong(u32),
    /// A payload that does not fit its kind.
    #[error("bad payload in a frame of kind {kind}: {reason}")]
    BadPayload {
        /// The frame's kind.
        kind: u8,
        /// What is wrong.
        reason: String,
    },
}

impl Frame {
    /// Its kind byte on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => KIND_HELLO,
            Frame::Exec(_) => KIND_EXEC,
            Frame::Stdin(_) => KIND_STDIN,
            Frame::CloseStdin => KIND_CLOSE_STDIN,
            Frame::Resize { .. } => KIND_RESIZE,
            Frame::Signal(_) => KIND_SIGNAL,
            Frame::Started { .. } => KIND_STARTED,
            Frame::Stdout(_) => KIND_STDOUT,
            Frame::Stderr(_) => KIND_STDERR,
            Frame::Exit(_) => KIND_EXIT,
            Frame::Error(_) => KIND_ERROR,
            Frame::StdinWindow(_) => KIND_STDIN_WINDOW,
        }
    }

    /// Appends the frame's bytes to `out`. Fails only for a payload over
    /// [`MAX_PAYLOAD`] (send stream data in chunks) or an invalid [`ExecRequest`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let payload: Vec<u8> = match self {
            Frame::Hello { version } => version.to_le_bytes().to_vec(),
            Frame::Exec(req) => {
                req.validate()?;
                serde_json::to_vec(req).expect("an ExecRequest serialises")
            }
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b.clone(),
            Frame::CloseStdin => Vec::new(),
            Frame::Resize { rows, cols } => [rows.to_le_bytes(), cols.to_le_bytes()].concat(),
            Frame::Signal(n) | Frame::Exit(n) => n.to_le_bytes().to_vec(),
            Frame::Started { pid } | Frame::StdinWindow(pid) => pid.to_le_bytes().to_vec(),
            Frame::Error(text) => text.as_bytes().to_vec(),
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLong(
                u32::try_from(payload.len()).unwrap_or(u32::MAX),
            ));
        }
        out.extend_from_slice(&MAGIC);
        out.push(self.kind());
        out.push(0);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(())
    }
}

/// The payload length a header announces, checked: what a reader must have buffered
/// (header included) before [`decode`] can return the frame.
pub fn frame_len(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    if header[..2] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[3] != 0 {
        return Err(FrameError::BadFlags(header[3]));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    Ok(HEADER_LEN + len as usize)
}

/// Decodes the first frame in `buf`: `Ok(None)` if `buf` holds only part of one (read
/// more; never more than `HEADER_LEN + MAX_PAYLOAD` bytes are needed), else the frame
/// and how many bytes it took. Errors end the session.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        // Reject a bad start as early as it shows.
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        return Ok(None);
    };
    let total = frame_len(header)?;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let kind = header[2];
    let bad = |reason: &str| FrameError::BadPayload {
        kind,
        reason: reason.to_string(),
    };
    let fixed = |n: usize| -> Result<&[u8], FrameError> {
        if payload.len() == n {
            Ok(payload)
        } else {
            Err(bad(&format!("{} bytes, expected {n}", payload.len())))
        }
    };
    let i32_of = |p: &[u8]| i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let frame = match kind {
        KIND_HELLO => {
            let p = fixed(2)?;
            Frame::Hello {
                version: u16::from_le_bytes([p[0], p[1]]),
            }
        }
        KIND_EXEC => {
            let req: ExecRequest =
                serde_json::from_slice(payload).map_err(|e| bad(&e.to_string()))?;
            req.validate()?;
            Frame::Exec(req)
        }
        KIND_STDIN => Frame::Stdin(payload.to_vec()),
        KIND_CLOSE_STDIN => {
            fixed(0)?;
            Frame::CloseStdin
        }
        KIND_RESIZE => {
            let p = fixed(4)?;
            Frame::Resize {
                rows: u16::from_le_bytes([p[0], p[1]]),
                cols: u16::from_le_bytes([p[2], p[3]]),
            }
        }
        KIND_SIGNAL => Frame::Signal(i32_of(fixed(4)?)),
        KIND_STARTED => {
            let p = fixed(4)?;
            Frame::Started {
                pid: u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
            }
        }
        KIND_STDOUT => Frame::Stdout(payload.to_vec()),
        KIND_STDERR => Frame::Stderr(payload.to_vec()),
        KIND_EXIT => Frame::Exit(i32_of(fixed(4)?)),
        KIND_ERROR => Frame::Error(
            String::from_utf8(payload.to_vec()).map_err(|_| bad("error text is not UTF-8"))?,
        ),
        KIND_STDIN_WINDOW => {
            let p = fixed(4)?;
            Frame::StdinWindow(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    Ok(Some((frame, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> ExecRequest {
        ExecRequest {
            args: vec!["sh".into(), "-c".into(), "exit 42".into()],
            env: vec!["A=b".into()],
            user: Some("1234".into()),
            workdir: Some("/tmp".into()),
            tty: true,
            rows: 24,
            cols: 80,
            detach: false,
            attach: false,
            builtin: None,
        }
    }

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: CONTROL_VERSION,
            },
            Frame::Exec(exec()),
            Frame::Stdin(b"hello\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::CloseStdin,
            Frame::Resize {
                rows: 50,
                cols: 132,
            },
            Frame::Signal(2),
            Frame::Started { pid: 77 },
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(vec![b'x'; MAX_PAYLOAD]),
            Frame::Exit(-1),
            Frame::Exit(127),
            Frame::StdinWindow(65536),
            Frame::Error("sh: not found".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_alone_and_in_a_stream() {
        let mut stream = Vec::new();
        for f in all() {
            let mut one = Vec::new();
            f.encode(&mut one).unwrap();
            assert_eq!(decode(&one).unwrap(), Some((f.clone(), one.len())));
            stream.extend_from_slice(&one);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, n)) = decode(&stream[at..]).unwrap() {
            got.push(f);
            at += n;
        }
        assert_eq!(got, all());
        assert_eq!(at, stream.len());
    }

    #[test]
    fn a_partial_frame_asks_for_more() {
        let mut b = Vec::new();
        Frame::Stdout(b"abcdef".to_vec()).encode(&mut b).unwrap();
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_length_over_the_limit_is_refused_from_the_header_alone() {
        let mut h = Vec::from(*b"hx");
        h.extend_from_slice(&[KIND_STDOUT, 0]);
        h.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(decode(&h), Err(FrameError::TooLong(MAX_PAYLOAD as u32 + 1)));
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&h), Err(FrameError::TooLong(u32::MAX)));
        let big = Frame::Stdout(vec![0; MAX_PAYLOAD + 1]);
        assert!(matches!(
            big.encode(&mut Vec::new()),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let frame = |kind: u8, payload: &[u8]| {
            let mut b = Vec::from(*b"hx");
            b.extend_from_slice(&[kind, 0]);
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(payload);
            b
        };
        assert_eq!(decode(b"xx"), Err(FrameError::BadMagic));
        assert_eq!(decode(&frame(99, b"")), Err(FrameError::UnknownKind(99)));
        let mut flagged = frame(KIND_CLOSE_STDIN, b"");
        flagged[3] = 1;
        assert_eq!(decode(&flagged), Err(FrameError::BadFlags(1)));
        for (kind, payload) in [
            (KIND_HELLO, &b"\x01"[..]),
            (KIND_RESIZE, b"\x01\x02\x03"),
            (KIND_EXIT, b"\x01\x02\x03\x04\x05"),
            (KIND_CLOSE_STDIN, b"x"),
            (KIND_ERROR, b"\xff\xfe"),
            (KIND_EXEC, b"{not json"),
            (KIND_EXEC, br#"{"args":[]}"#),
            (KIND_EXEC, br#"{"args":["sh"],"env":["NOEQUALS"]}"#),
            (KIND_EXEC, br#"{"args":["sh"],"workdir":"rel"}"#),
            (KIND_EXEC, br#"{"args":["sh\u0000x"]}"#),
            (KIND_EXEC, br#"{"args":["sh"],"surprise":1}"#),
        ] {
            assert!(
                matches!(
                    decode(&frame(kind, payload)),
                    Err(FrameError::BadPayload { .. })
                ),
                "kind {kind} payload {payload:?}"
            );
        }
    }

    #[test]
    fn an_invalid_exec_is_not_encoded() {
        let mut req = exec();
        req.args.clear();
        assert!(Frame::Exec(req).encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn an_attach_session_starts_no_process() {
        let mut req = exec();
        req.attach = true;
        assert!(req.validate().is_err(), "attach with a command");
        req.args.clear();
        req.tty = false;
        assert!(req.validate().is_ok());
        let mut buf = Vec::new();
        Frame::Exec(req.clone()).encode(&mut buf).unwrap();
        assert_eq!(decode(&buf).unwrap().unwrap().0, Frame::Exec(req));
    }

    #[test]
    fn copy_requests_carry_a_path_and_no_command() {
        let copy = |c: Builtin| ExecRequest {
            args: Vec::new(),
            tty: false,
            builtin: Some(c),
            ..exec()
        };
        let out = copy(Builtin::CopyOut {
            path: "/etc".into(),
        });
        let mut b = Vec::new();
        Frame::Exec(out.clone()).encode(&mut b).unwrap();
        assert_eq!(decode(&b).unwrap().unwrap().0, Frame::Exec(out));
        let into = copy(Builtin::CopyIn {
            path: "/tmp".into(),
            place: CopyPlace::Contents,
        });
        assert!(into.validate().is_ok());
        let relative = copy(Builtin::CopyOut { path: "etc".into() });
        assert!(relative.validate().is_err());
        let with_command = ExecRequest {
            args: vec!["sh".into()],
            ..copy(Builtin::CopyOut {
                path: "/etc".into(),
            })
        };
        assert!(with_command.validate().is_err());
    }
}
