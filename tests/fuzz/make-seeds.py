#!/usr/bin/env python3
"""Writes the binary seed corpora (layer tars, xenstore frames) under corpus/.

The text seeds (references, JSON, spec, deployments) are committed as they are; this
script only documents and regenerates the binary ones. Run from anywhere:
    python3 tests/fuzz/make-seeds.py
"""
import gzip
import io
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEP = b"HXLAYER!"  # hyperxl_image::fuzzing::LAYER_SEPARATOR


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tar(entries, fmt=tarfile.USTAR_FORMAT):
    """entries: (name, type, data-or-linkname, extra pax headers)"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, arg, pax in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            ti.pax_headers = pax or {}
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "file":
                ti.size, ti.mode = len(arg), 0o644
                t.addfile(ti, io.BytesIO(arg))
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, arg
                t.addfile(ti)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, arg
                t.addfile(ti)
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
                t.addfile(ti)
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
                t.addfile(ti)
    return buf.getvalue()


base = tar([
    ("./", "dir", None, None),
    ("bin/", "dir", None, None),
    ("bin/busybox", "file", b"\x7fELF fake busybox\n", None),
    ("bin/sh", "hard", "bin/busybox", None),
    ("etc/", "dir", None, None),
    ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n", None),
    ("etc/os-release", "sym", "../usr/lib/os-release", None),
    ("usr/lib/os-release", "file", b"ID=fuzz\n", None),
    ("dev/null", "chr", None, None),
    ("run/fifo", "fifo", None, None),
])
upper = tar([
    ("etc/.wh.passwd", "file", b"", None),
    ("usr/lib/.wh..wh..opq", "file", b"", None),
    ("usr/lib/new", "file", b"new\n", None),
    ("bin/ping", "file", b"ping", {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}),
    ("opt/app/long-" + "n" * 120, "file", b"long name\n", None),
], fmt=tarfile.PAX_FORMAT)

out("layer_merge", "one-layer.tar", base)
out("layer_merge", "one-layer.tar.gz", gzip.compress(base, mtime=0))
out("layer_merge", "two-layers.tar", base + SEP + upper)
out("layer_merge", "gnu-longname.tar", tar([
    ("a/" + "d" * 110 + "/file", "file", b"x", None),
    ("a/link", "sym", "/" + "t" * 120, None),
], fmt=tarfile.GNU_FORMAT))


def frame(ty, req, payload, tx=0):
    return struct.pack("<IIII", ty, req, tx, len(payload)) + payload


# One reply per request of the fuzz target's round, in its order (req ids from 1):
# read, directory, get_perms, watch, transaction_start, write, transaction_end,
# get_domain_path, then a pending watch event.
XS_READ, XS_DIR, XS_PERMS, XS_WATCH, XS_TSTART, XS_TEND = 2, 1, 3, 4, 6, 7
XS_DOMPATH, XS_WRITE, XS_EVENT, XS_ERROR = 10, 11, 15, 16
session = b"".join([
    frame(XS_READ, 1, b'{"version":1,"args":["sh"]}'),
    frame(XS_DIR, 2, b"hyperxl\0state\0"),
    frame(XS_PERMS, 3, b"n0\0r5\0b7\0"),
    frame(XS_EVENT, 0, b"control/shutdown\0tok\0"),
    frame(XS_WATCH, 4, b"OK\0"),
    frame(XS_TSTART, 5, b"1\0"),
    frame(XS_WRITE, 6, b"OK\0", tx=1),
    frame(XS_TEND, 7, b"OK\0", tx=1),
    frame(XS_DOMPATH, 8, b"/local/domain/7\0"),
    frame(XS_EVENT, 0, b"control/shutdown\0tok\0"),
])
out("xenstore_wire", "session", session)
out("xenstore_wire", "errors", b"".join([
    frame(XS_ERROR, 1, b"ENOENT\0"),
    frame(XS_ERROR, 2, b"EACCES\0"),
    frame(XS_PERMS, 3, b"x9\0"),
    frame(XS_WATCH, 0, b"OK\0"),
    frame(XS_TSTART, 5, b"notanumber\0"),
    frame(XS_ERROR, 6, b"EAGAIN\0"),
]))
out("xenstore_wire", "oversized-header", struct.pack("<IIII", 2, 1, 0, 4097))


def control(kind, payload):
    return b"hx" + bytes([kind, 0]) + struct.pack("<I", len(payload)) + payload


# A whole exec session, both directions, and a few broken frames.
out("control_frame", "session", b"".join([
    control(1, struct.pack("<H", 1)),
    control(2, b'{"args":["sh","-c","exit 42"],"env":["A=b"],"user":"1234","workdir":"/tmp","tty":true,"rows":24,"cols":80}'),
    control(3, b"hello\n"),
    control(4, b""),
    control(5, struct.pack("<HH", 50, 132)),
    control(6, struct.pack("<i", 2)),
    control(16, struct.pack("<I", 77)),
    control(17, b"out\n"),
    control(18, b"err\n"),
    control(20, b"sh: not found"),
    control(19, struct.pack("<i", 127)),
]))
out("control_frame", "oversized", b"hx" + bytes([17, 0]) + struct.pack("<I", 65537))
out("control_frame", "bad-exec", control(2, b'{"args":[],"surprise":1}'))


# hyperxl cp streams: a tree as the init packs it, and the hostile shapes dom0 refuses.
out("copy_unpack", "tree.tar", tar([
    ("t/", "dir", None, None),
    ("t/a", "file", b"alpha\n", None),
    ("t/sub/", "dir", None, None),
    ("t/sub/b", "file", b"beta\n", None),
    ("t/link", "sym", "/etc/passwd", None),
    ("t/up", "sym", "../../x", None),
], fmt=tarfile.GNU_FORMAT))
out("copy_unpack", "through-link.tar", tar([
    ("t/", "dir", None, None),
    ("t/l", "sym", "..", None),
    ("t/l/x", "file", b"x", None),
    ("t/h", "hard", "t/a", None),
]))
