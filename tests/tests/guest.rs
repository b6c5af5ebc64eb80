//! The guest on real Xen, before the toolstack drives it: HyperKernel + hyperstart-pv
//! booted with `xl create -p`, the spec written to xenstore by hand as the contract says
//! (tests/dom0/boot-spec), then unpaused. Asserts what the app printed, the exit code the
//! init reported, and that the domain powered itself off, as PVH and as PV.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use hyperxl_e2e::{repo_root, Batch, BatchRun};

/// A busybox rootfs as a squashfs, with users root, nobody and app (1000).
fn build_rootfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    for d in ["bin", "etc", "tmp", "srv"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("static /bin/busybox (busybox-static)");
    for applet in [
        "sh", "echo", "cat", "id", "pwd", "env", "sleep", "hostname", "grep", "kill", "wc", "ls",
    ] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
         app:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    let img = dir.join("rootfs.squashfs");
    let out = Command::new("mksquashfs")
        .arg(&root)
        .arg(&img)
        .args([
            "-all-root",
            "-comp",
            "zstd",
            "-quiet",
            "-noappend",
            "-no-progress",
        ])
        .output()
        .expect("mksquashfs runs");
    assert!(out.status.success(), "mksquashfs: {out:?}");
    img
}

/// A spec (contract v1) running `script` under /bin/sh.
fn spec(script: &str, extra: &str) -> String {
    let args = serde_json_str(script);
    format!(r#"{{"version":1,"args":["/bin/sh","-c",{args}],"env":["PATH=/bin"]{extra}}}"#)
}

/// `s` as a JSON string literal (the scripts here hold no control characters).
fn serde_json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A dom0 step that boots one guest; `spec` is passed in single quotes, its backslashes
/// doubled because `xenstore-write` unescapes its value.
fn boot(name: &str, kind: &str, spec: &str) -> String {
    assert!(!spec.contains('\''), "spec must not hold single quotes");
    let spec = spec.replace('\\', "\\\\");
    format!("/hx/tests/boot-spec {name} {kind} '{spec}'")
}

/// Parses boot-spec's "key: value" trailer and the console lines before it.
struct Guest {
    console: Vec<String>,
    state: String,
    exit_code: String,
    error: String,
    shutdown: String,
}

fn guest(run: &BatchRun, step: &str) -> Guest {
    let out = &run[step].assert_success(step).stdout;
    let lines: Vec<String> = out.lines().map(|l| l.trim_end().to_owned()).collect();
    let field = |k: &str| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")).map(str::to_owned))
            .or_else(|| {
                lines
                    .iter()
                    .rev()
                    .find(|l| *l == &format!("{k}:"))
                    .map(|_| String::new())
            })
            .unwrap_or_else(|| panic!("{step}: no {k} in:\n{out}"))
    };
    Guest {
        state: field("state"),
        exit_code: field("exit-code"),
        error: field("error"),
        shutdown: field("shutdown"),
        console: lines,
    }
}

impl Guest {
    #[track_caller]
    fn assert_line(&self, line: &str) {
        assert!(
            self.console.iter().any(|l| l == line),
            "no line {line:?} in console:\n{}",
            self.console.join("\n")
        );
    }

    #[track_caller]
    fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.exit_code,
            code.to_string(),
            "console:\n{}",
            self.console.join("\n")
        );
        assert_eq!(self.state, "exited");
        assert_eq!(self.shutdown, "yes", "the domain did not power itself off");
    }
}

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn hyperstart_runs_the_spec_and_reports_exit_codes_pvh_and_pv() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = build_rootfs(dir.path());
    let applied = spec(
        "echo hello; echo FOO=$FOO; pwd; id -un; hostname; exit 7",
        r#","env":["PATH=/bin","FOO=bar"],"working_dir":"/srv/app","user":"nobody","hostname":"web1""#,
    )
    .replacen(r#","env":["PATH=/bin"]"#, "", 1);
    // The inner sh exits at once, so its background sleep is reparented to PID 1 and
    // becomes a zombie unless the init reaps it; the main process counts zombies later.
    let zombie = spec(
        r#"sh -c "sleep 0.2 &"; sleep 1; echo ZOMBIES=$(grep -l "^State:.Z" /proc/[0-9]*/status 2>/dev/null | wc -l); id; exit 5"#,
        r#","user":"1000:1000""#,
    );
    let mut batch = Batch::new();
    batch
        .add(&rootfs, "/images/rootfs.squashfs")
        .add(
            repo_root().join("tests/dom0/boot-spec"),
            "/hx/tests/boot-spec",
        )
        .step("pvh_applied", &boot("g-applied", "pvh", &applied))
        .step(
            "pvh_missing",
            &boot("g-missing", "pvh", &spec_args(&["/bin/no-such-app"])),
        )
        .step(
            "pvh_killed",
            &boot("g-killed", "pvh", &spec("kill -9 $$", "")),
        )
        .step("pvh_zombie", &boot("g-zombie", "pvh", &zombie))
        .step(
            "pvh_bad_spec",
            &boot("g-bad", "pvh", r#"{"version":1,"args":"#),
        )
        .step("pv_applied", &boot("p-applied", "pv", &applied))
        .step(
            "pv_killed",
            &boot("p-killed", "pv", &spec("kill -9 $$", "")),
        )
        .step("list", "xl list | tail -n +2; losetup -a");
    let run = batch.run().expect("test host runs the batch");

    for step in ["pvh_applied", "pv_applied"] {
        let g = guest(&run, step);
        g.assert_line("hello");
        g.assert_line("FOO=bar");
        g.assert_line("/srv/app");
        g.assert_line("nobody");
        g.assert_line("web1");
        g.assert_exit(7);
    }
    let g = guest(&run, "pvh_missing");
    g.assert_exit(127);
    assert!(g.error.contains("no-such-app"), "error: {}", g.error);
    for step in ["pvh_killed", "pv_killed"] {
        guest(&run, step).assert_exit(128 + 9);
    }
    // The init's own failure is reported through the same keys, and it still powers off.
    let g = guest(&run, "pvh_bad_spec");
    assert_eq!(g.state, "failed");
    assert!(g.error.contains("invalid spec"), "error: {}", g.error);
    assert_eq!(g.exit_code, "");
    assert_eq!(g.shutdown, "yes");
    g.assert_line(&format!("hyperstart: error: {}", g.error));

    let g = guest(&run, "pvh_zombie");
    g.assert_line("ZOMBIES=0");
    g.assert_line("uid=1000(app) gid=1000(app)");
    g.assert_exit(5);

    let left = &run["list"].stdout;
    let lines: Vec<&str> = left.lines().collect();
    assert_eq!(lines.len(), 1, "domains or loop devices left:\n{left}");
    assert!(lines[0].starts_with("Domain-0"), "{left}");
}

/// A spec with explicit argv.
fn spec_args(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| serde_json_str(a)).collect();
    format!(
        r#"{{"version":1,"args":[{}],"env":["PATH=/bin"]}}"#,
        args.join(",")
    )
}
