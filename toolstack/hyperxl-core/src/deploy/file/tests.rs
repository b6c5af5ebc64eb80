use super::*;

/// The format as documented in the brief and the report; keep it parsing.
const FULL: &str = r#"# deployment name (defaults to the file stem)
name = "shop"

[vm.db]
image = "demo:latest"
command = ["sh", "-c", "echo db up; sleep 1000"]
entrypoint = "/bin/sh"
env = { GREETING = "hi", MODE = "prod" }
env_file = ["db.env"]
workdir = "/srv"
user = "nobody"
memory = "64m"
vcpus = 2
type = "pv"
restart = "on-failure:2"
depends_on = ["cache"]
labels = { tier = "backend" }

[vm.cache]
image = "demo:latest"
"#;

fn parse(text: &str) -> Result<Deployment, DeployError> {
    Deployment::parse(text, Path::new("/nonexistent/shop.toml"))
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(d) => panic!("parsed: {d:?}"),
        Err(e) => e.to_string(),
    }
}

/// A directory with the deployment file and `db.env`.
fn dir_with_env_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        dir.path().join("db.env"),
        "# db settings\nMODE=dev\nFROM_FILE=1\n",
    )
    .expect("writing db.env");
    std::fs::write(dir.path().join("shop.toml"), FULL).expect("writing shop.toml");
    dir
}

#[test]
fn full_example_resolves() {
    let dir = dir_with_env_file();
    let d = Deployment::load(&dir.path().join("shop.toml")).unwrap();
    assert_eq!(d.name, "shop");
    let names: Vec<&str> = d.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["cache", "db"], "db depends on cache");
    let db = &d.vms[1];
    assert_eq!(db.image, "demo:latest");
    assert_eq!(db.command, ["sh", "-c", "echo db up; sleep 1000"]);
    assert_eq!(db.entrypoint.as_deref(), Some("/bin/sh"));
    // The env file first, then the table (later wins in the spec).
    assert_eq!(
        db.env,
        ["MODE=dev", "FROM_FILE=1", "GREETING=hi", "MODE=prod"]
    );
    assert_eq!(db.workdir.as_deref(), Some("/srv"));
    assert_eq!(db.user.as_deref(), Some("nobody"));
    assert_eq!(db.machine, Machine::parse("64m", 2, "pv").unwrap());
    assert_eq!(db.restart, RestartPolicy::OnFailure { max: Some(2) });
    assert_eq!(db.depends_on, ["cache"]);
    assert_eq!(db.labels.get("tier").map(String::as_str), Some("backend"));
}

#[test]
fn defaults() {
    let d = Deployment::parse("[vm.a]\nimage = \"x\"\n", Path::new("dir/my-app.toml")).unwrap();
    assert_eq!(d.name, "my-app", "the file stem");
    let a = &d.vms[0];
    assert_eq!(a.machine, Machine::default());
    assert_eq!(a.machine.memory_mib(), DEFAULT_MEMORY_MIB);
    assert_eq!(a.restart, RestartPolicy::No);
    assert!(a.command.is_empty() && a.env.is_empty() && a.labels.is_empty());
    assert_eq!((&a.entrypoint, &a.workdir, &a.user), (&None, &None, &None));
}

#[test]
fn start_order_keeps_file_order_among_ties() {
    let d = parse(
        "[vm.web]\nimage='x'\ndepends_on=['api']\n\
         [vm.zeta]\nimage='x'\n\
         [vm.api]\nimage='x'\ndepends_on=['db']\n\
         [vm.alpha]\nimage='x'\n\
         [vm.db]\nimage='x'\n",
    )
    .unwrap();
    let names: Vec<&str> = d.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "db", "api", "web"]);
}

#[test]
fn dotted_keys_work_too() {
    let d = parse("vm.a.image = 'x'\nvm.b.image = 'y'\nvm.b.depends_on = ['a']\n").unwrap();
    assert_eq!(d.vms[1].depends_on, ["a"]);
}

#[test]
fn errors_name_file_and_line() {
    assert_eq!(
        error("\n[vm.db]\nimage = 'x'\nmemory = '12q'\n"),
        "/nonexistent/shop.toml:4: VM \"db\": invalid memory size \"12q\": \
         use a number with b, k, m or g (at least 24m, which HyperKernel needs to boot)"
    );
    assert_eq!(
        error("[vm.db]\nimage = 'x'\n\n[vm.web]\nmemory = '64m'\n"),
        "/nonexistent/shop.toml:4: VM \"web\" has no image: add image = \"NAME:TAG\""
    );
    assert_eq!(
        error("[vm.a]\nimage='x'\ndepends_on=['b']\n[vm.b]\nimage='x'\ndepends_on=['c']\n[vm.c]\nimage='x'\ndepends_on=['a']\n"),
        "/nonexistent/shop.toml:3: dependency cycle: a -> b -> c -> a"
    );
}

#[test]
fn cycle_starts_at_its_first_vm_in_the_file() {
    let e = error(
        "[vm.x]\nimage='x'\ndepends_on=['b']\n\
         [vm.b]\nimage='x'\ndepends_on=['c']\n\
         [vm.c]\nimage='x'\ndepends_on=['b']\n",
    );
    assert!(e.ends_with(":6: dependency cycle: b -> c -> b"), "{e}");
}

#[test]
fn values_checked_beyond_the_fixtures() {
    for (text, want) in [
        (
            "[vm.a]\nimage='x'\nvcpus=65\n",
            "vcpus must be between 1 and 64, not 65",
        ),
        ("[vm.a]\nimage='x'\nvcpus=-1\n", "not -1"),
        ("[vm.a]\nimage='x'\ncommand=[]\n", "command is empty"),
        (
            "[vm.a]\nimage='x'\nworkdir='srv'\n",
            "workdir must be an absolute path",
        ),
        (
            "[vm.a]\nimage='x'\nenv={''='1'}\n",
            "invalid environment entry \"=1\"",
        ),
        (
            "[vm.a]\nimage='x'\nenv={'A=B'='1'}\n",
            "invalid environment entry \"A=B=1\"",
        ),
        (
            "[vm.a]\nimage='x'\nlabels={'hyperxl.deployment'='x'}\n",
            "invalid label",
        ),
        (
            "[vm.a]\nimage='x'\ndepends_on=['b','b']\n[vm.b]\nimage='x'\n",
            "lists \"b\" twice",
        ),
        (
            "name = 'a b'\n[vm.a]\nimage='x'\n",
            "invalid deployment name \"a b\"",
        ),
        (
            "[vm.a]\nimage='x'\n[vm.a.env]\nX='1'\n[vm.a.env]\nY='2'\n",
            "duplicate key `env`",
        ),
        (
            "[vm.a]\nimage=3\n",
            "invalid type: integer `3`, expected a string",
        ),
        ("vm = 3\n", "expected a map"),
        ("[vm]\na = 3\n", "expected a [vm.NAME] table"),
    ] {
        let e = error(text);
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn a_file_stem_that_is_no_name_asks_for_one() {
    let e = Deployment::parse("[vm.a]\nimage='x'\n", Path::new("/d/my app.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/d/my app.toml:1: the file name gives"),
        "{e}"
    );
    // A name in the file wins over the stem.
    let d = Deployment::parse(
        "name='ok'\n[vm.a]\nimage='x'\n",
        Path::new("/d/my app.toml"),
    );
    assert_eq!(d.unwrap().name, "ok");
}

#[test]
fn a_missing_env_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.toml");
    let e = Deployment::parse("[vm.a]\nimage='x'\nenv_file=['nope.env']\n", &file).unwrap_err();
    let want = format!(
        "{}:3: VM \"a\": reading env file {}: ",
        file.display(),
        dir.path().join("nope.env").display()
    );
    assert!(e.to_string().starts_with(&want), "{e}");
}

#[test]
fn a_missing_deployment_file_says_so() {
    let e = Deployment::load(Path::new("/nonexistent/shop.toml")).unwrap_err();
    assert!(matches!(e, DeployError::Read { .. }), "{e}");
    assert!(
        e.to_string().starts_with("/nonexistent/shop.toml: reading"),
        "{e}"
    );
}

#[test]
fn fingerprint_follows_what_shapes_the_vm() {
    let base = "[vm.a]\nimage='x'\nmemory='64m'\n";
    let fp = |text: &str| parse(text).unwrap().vms[0].fingerprint();
    let a = fp(base);
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    // Same definition, other spelling: same fingerprint.
    assert_eq!(
        a,
        fp("[vm.a]\nmemory = \"65536k\"\nimage = \"x\"\nvcpus = 1\ntype='pvh'\n")
    );
    for changed in [
        "[vm.a]\nimage='y'\nmemory='64m'\n",
        "[vm.a]\nimage='x'\nmemory='65m'\n",
        "[vm.a]\nimage='x'\nmemory='64m'\nenv={A='1'}\n",
        "[vm.a]\nimage='x'\nmemory='64m'\ncommand=['true']\n",
        "[vm.a]\nimage='x'\nmemory='64m'\nrestart='always'\n",
        "[vm.a]\nimage='x'\nmemory='64m'\nlabels={k='v'}\n",
        "[vm.a]\nimage='x'\nmemory='64m'\ntype='pv'\n",
    ] {
        assert_ne!(a, fp(changed), "{changed}");
    }
    // Only the start order changes with depends_on.
    let d =
        parse("[vm.a]\nimage='x'\nmemory='64m'\ndepends_on=['b']\n[vm.b]\nimage='x'\n").unwrap();
    assert_eq!(d.vms[1].name, "a");
    assert_eq!(a, d.vms[1].fingerprint());
}

#[test]
fn run_flags_match_what_run_builds() {
    let d = parse(
        "[vm.a]\nimage='x'\ncommand=['echo','hi']\nentrypoint=''\nenv={A='1'}\n\
         workdir='/w'\nuser='1:1'\n",
    )
    .unwrap();
    let flags = d.vms[0].run_flags();
    // What `hyperxl run -e A=1 -w /w -u 1:1 --entrypoint '' x echo hi` builds.
    assert_eq!(flags.env, ["A=1"]);
    assert_eq!(flags.workdir.as_deref(), Some("/w"));
    assert_eq!(flags.user.as_deref(), Some("1:1"));
    assert_eq!(flags.entrypoint.as_deref(), Some(""));
    assert_eq!(flags.command, ["echo", "hi"]);
    assert_eq!(
        flags.hostname, "",
        "launch names the host after the VM, as for run"
    );
}

#[test]
fn line_numbers() {
    assert_eq!(line_at("", 0), 1);
    assert_eq!(line_at("a\nb\nc", 2), 2);
    assert_eq!(line_at("a\nb\nc", 99), 3);
}

/// A change here changes every VM's fingerprint, so the next `up` replaces every VM:
/// make it on purpose (and bump `Canonical::version`).
#[test]
fn fingerprint_format_is_pinned() {
    let d = parse("[vm.a]\nimage='demo:latest'\nenv={A='1'}\nrestart='on-failure:2'\n").unwrap();
    assert_eq!(
        d.vms[0].fingerprint(),
        "e26591a0116f0d06e755bc55d748222a7db69eea380e99adc31d0dbf066c13af"
    );
}

#[test]
fn defect12_full_vm_names_longer_than_63_are_refused() {
    let vm = "v".repeat(60);
    let e = error(&format!("name='shop'\n[vm.{vm}]\nimage='x'\n"));
    assert!(
        e.contains(":2: VM ") && e.contains("is longer than 63 characters"),
        "{e}"
    );
    // 58 + "shop-" is 63: fine.
    parse(&format!(
        "name='shop'\n[vm.{}]\nimage='x'\n",
        "v".repeat(58)
    ))
    .unwrap();
}

#[test]
fn defect12_env_files_outside_the_deployment_dir_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("dep");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(root.path().join("secret.env"), "TOKEN=x\n").unwrap();
    std::fs::write(dir.join("sub/ok.env"), "A=1\n").unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.env"), dir.join("link.env")).unwrap();
    let file = dir.join("shop.toml");
    let load = |env_file: &str| {
        Deployment::parse(
            &format!("[vm.a]\nimage='x'\nenv_file=['{env_file}']\n"),
            &file,
        )
    };
    for bad in [
        "/etc/passwd",
        "../secret.env",
        "sub/../../secret.env",
        "link.env",
        "..",
        ".",
    ] {
        let e = load(bad).unwrap_err().to_string();
        let want = format!(
            "{}:3: VM \"a\": env file {bad:?} is outside the deployment file's directory",
            file.display()
        );
        assert_eq!(e, want, "{bad}");
    }
    for ok in ["sub/ok.env", "./sub/ok.env", "sub/../sub/ok.env"] {
        assert_eq!(load(ok).unwrap().vms[0].env, ["A=1"], "{ok}");
    }
}

#[test]
fn defect12_teardown_reads_no_env_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.toml");
    std::fs::write(
        &file,
        "[vm.db]\nimage='x'\nenv_file=['gone.env']\n[vm.web]\nimage='x'\ndepends_on=['db']\n",
    )
    .unwrap();
    assert!(Deployment::load(&file).is_err(), "up still needs it");
    let d = Deployment::load_for_teardown(&file).unwrap();
    assert_eq!(d.name, "shop");
    let names: Vec<&str> = d.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);
}

#[test]
fn log_opt_sets_the_console_log_limits_and_keeps_default_fingerprints() {
    let plain = parse("[vm.a]\nimage = \"demo\"\n").unwrap();
    let same = parse("[vm.a]\nimage = \"demo\"\nlog_opt = [\"max-size=32m\"]\n").unwrap();
    let small =
        parse("[vm.a]\nimage = \"demo\"\nlog_opt = [\"max-size=1m\", \"max-file=3\"]\n").unwrap();
    assert_eq!(small.vms[0].log.max_size, 1 << 20);
    assert_eq!(small.vms[0].log.max_files, 3);
    assert_eq!(plain.vms[0].fingerprint(), same.vms[0].fingerprint());
    assert_ne!(plain.vms[0].fingerprint(), small.vms[0].fingerprint());
}
