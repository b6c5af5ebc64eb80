//! The deployment files kept in the repository: `tests/deployments/bad/*.toml` must each
//! fail as their header says, `tests/deployments/good/*.toml` and `xen-configs/*.toml`
//! must load.
//!
//! A bad fixture starts with two comment lines:
//!
//! ```toml
//! # expect: <part of the error message>
//! # line: <the line the error must name>
//! ```

use std::path::{Path, PathBuf};

use super::file::Deployment;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `*.toml` files of `dir`, sorted; none when `dir` does not exist.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("listing a fixture dir").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The value of the `# KEY: value` comment on line `n` (0-based) of a fixture.
fn header<'a>(file: &Path, text: &'a str, n: usize, key: &str) -> &'a str {
    text.lines()
        .nth(n)
        .and_then(|l| l.strip_prefix("# ")?.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("{}: line {} must be `# {key}: ...`", file.display(), n + 1))
}

#[test]
fn bad_deployments_fail_where_and_as_their_header_says() {
    let files = toml_files(&root().join("tests/deployments/bad"));
    assert!(files.len() >= 10, "only {} bad fixtures", files.len());
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a fixture");
        let expect = header(&file, &text, 0, "expect");
        let line: usize = header(&file, &text, 1, "line")
            .parse()
            .expect("a line number");
        let err = match Deployment::load(&file) {
            Ok(d) => {
                failures.push(format!("{}: parsed as {d:?}", file.display()));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let prefix = format!("{}:{line}: ", file.display());
        if err.contains('\n') || !err.starts_with(&prefix) || !err.contains(expect) {
            failures.push(format!("wanted one line {prefix}...{expect}...; got {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn good_deployments_load() {
    let files = toml_files(&root().join("tests/deployments/good"));
    assert!(files.len() >= 2, "only {} good fixtures", files.len());
    for file in files {
        if let Err(e) = Deployment::load(&file) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_shop_fixture_starts_in_dependency_order() {
    let d = Deployment::load(&root().join("tests/deployments/good/shop.toml")).unwrap();
    let names: Vec<&str> = d.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["cache", "db", "web"]);
}

#[test]
fn xen_configs_load() {
    for file in toml_files(&root().join("xen-configs")) {
        if let Err(e) = Deployment::load(&file) {
            panic!("{e}");
        }
    }
}
