//! The host-guest contract: spec format, xenstore key names, version.
