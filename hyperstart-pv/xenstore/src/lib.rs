//! A small xenstore wire-protocol client (socket and /dev/xen/xenbus).
