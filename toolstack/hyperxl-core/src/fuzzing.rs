//! Entry points for the fuzz targets in `tests/fuzz`: the parsers that read files an
//! operator (or an attacker who can write one) hands to hyperxl. Not a stable API.

use std::path::Path;

/// Parses and validates a deployment file's text as `hyperxl up -f PATH` would (env
/// files resolve against `path`'s directory). Returns whether the file was accepted;
/// errors are expected, panics are bugs.
pub fn parse_deployment(text: &str, path: &Path) -> bool {
    crate::deploy::file::Deployment::parse(text, path).is_ok()
}
