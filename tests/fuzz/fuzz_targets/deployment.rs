//! Deployment files (`hyperxl up -f`), parsed and validated. The file "lives" in a temp
//! dir holding the `db.env` the seeds name, so env-file lookups read only that; inputs
//! that could name a device or special file (`/dev`, `/proc`, `/sys`, `/run`, or a TOML
//! unicode escape that could spell one) are skipped, since reading `/dev/zero` as an
//! operator's env file is not a parser bug.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn deployment_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hyperxl-fuzz-deploy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("db.env"), "# fuzz\nMODE=dev\nDB_PORT=5432\n").expect("env file");
        dir.join("shop.toml")
    })
}

const SKIP: [&str; 6] = ["/dev", "/proc", "/sys", "/run", "\\u", "\\U"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if SKIP.iter().any(|s| text.contains(s)) {
        return;
    }
    let _ = hyperxl_core::fuzzing::parse_deployment(text, deployment_path());
});
