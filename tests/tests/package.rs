//! The Debian package in the Xen test host: its files (unpacked from the .deb that
//! `scripts/package` builds, not the dev build) run the demo image with the packaged
//! guest artefacts and hotplug helpers; the systemd units' ExecStart/ExecStop lines run
//! as systemd would run them (a clean environment, the default state dir); `version`,
//! `info` and `system df|prune` see the real Xen.

use std::process::Command;

use hyperxl_e2e::{repo_root, value, Batch};

/// Runs the packaged binary as a unit would: no test-host environment, default paths.
const PK: &str = r#"pk() { env -u HYPERXL_GUEST_DIR -u HYPERXL_STATE_DIR /usr/bin/hyperxl "$@"; }
unit_line() { # UNIT KEY INSTANCE: the command of KEY= in a packaged unit, %i filled in
    grep "^$2=" "/lib/systemd/system/$1" | head -n1 | cut -d= -f2- | sed "s/%i/$3/g"
}
as_unit() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH="$LD_LIBRARY_PATH" sh -c "$1"; }
"#;

const DEPLOYMENT: &str = r#"
[vm.web]
image = "demo:latest"
command = ["sh", "-c", "echo web up; exec sleep 100000"]
restart = "always"
memory = "48m"
network = "none"
"#;

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn the_packaged_files_run_vms_and_the_units_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo_root().join("scripts/package"))
        .arg(dir.path())
        .output()
        .expect("scripts/package runs");
    assert!(
        out.status.success(),
        "scripts/package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let fsys = dir.path().join("pkg.tar");
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{deb}' > '{}'",
            fsys.display()
        ))
        .status()
        .unwrap();
    assert!(tar.success());
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).unwrap();
    let dep = dir.path().join("pkg.toml");
    std::fs::write(&dep, DEPLOYMENT).unwrap();

    let step = |body: &str| format!("{PK}{body}");
    let mut batch = Batch::new();
    batch
        .add(&fsys, "/hx/pkg.tar")
        .add(&image, "/images/demo.tar")
        .add(&dep, "/images/pkg.toml")
        .step(
            "install",
            "tar -xf /hx/pkg.tar -C / && ls /usr/bin/hyperxl /usr/libexec/hyperxl /usr/lib/hyperxl",
        )
        .step(
            "main_job",
            &step("pk load -q -i /images/demo.tar >/dev/null && pk run --rm demo echo 'hello from a Xen VM'"),
        )
        .step(
            "helpers",
            &step(
                r#"set -e
pk run -d --name pk1 -m 48m --network none demo sleep 100000 >/dev/null
domid=$(pk inspect pk1 | sed -n 's/.*"domid": *\([0-9]*\).*/\1/p' | head -n1)
echo "domid=$domid"
echo "script=$(xenstore-read $(xenstore-list -p /local/domain/0/backend/vbd/$domid | head -n1)/script)"
ps -o pid,args | grep '[h]yperxl .*monitor' | sed 's/^ *[0-9]* */monitor=/'
pk rm -f pk1 >/dev/null"#,
            ),
        )
        .step("version", &step("pk version && pk info"))
        .step(
            "unit_start",
            &step(
                r#"set -e
mkdir -p /etc/hyperxl && cp /images/pkg.toml /etc/hyperxl/pkg.toml
cmd=$(unit_line hyperxl-deployment@.service ExecStart pkg); echo "ExecStart=$cmd"
as_unit "$cmd"
pk ps | awk 'NR > 1 {print "vm=" $2, $5}'"#,
            ),
        )
        .step(
            "unit_stop",
            &step(
                r#"set -e
cmd=$(unit_line hyperxl-deployment@.service ExecStop pkg); echo "ExecStop=$cmd"
as_unit "$cmd"
echo "ps=$(pk ps -q | wc -l)"
echo "supervisors=$(ps -o args | grep -c '[h]yperxl .*supervise' || true)"
echo "domains=$(xl list | tail -n +2 | wc -l)""#,
            ),
        )
        .step(
            "reconcile",
            &step(
                r#"set -e
pk run -d --name stale -m 48m --network none demo sleep 100000 >/dev/null
pid=$(pk inspect stale | sed -n 's/.*"monitor_pid": *\([0-9]*\).*/\1/p' | head -n1)
domid=$(pk inspect stale | sed -n 's/.*"domid": *\([0-9]*\).*/\1/p' | head -n1)
# What a dom0 reboot leaves: no watcher, no domain; the record still says running.
kill -9 "$pid"; xl destroy "$domid"
echo "record=$(sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p' $(ls -d /var/lib/hyperxl/vms/*)/state.json | sort | tr '\n' ' ')"
as_unit "$(unit_line hyperxl-reconcile.service ExecStart x)"
pk ps -a | awk 'NR > 1 {print "vm=" $2, $5}'"#,
            ),
        )
        .step(
            "df_prune",
            &step(
                r#"pk system df
pk system prune </dev/null; echo "unconfirmed=$?"
pk system prune -f -a --volumes
pk system df --format json | tr -d ' \n'; echo
echo "images=$(pk images | tail -n +2 | wc -l) vms=$(ls /var/lib/hyperxl/vms | wc -l) blobs=$(ls /var/lib/hyperxl/images/blobs/sha256 | wc -l)"
echo "loops=$(losetup -a | wc -l)""#,
            ),
        );
    let run = batch.run().expect("test host runs the batch");

    run["install"].assert_success("install");
    assert_eq!(
        run["main_job"].assert_success("main_job").stdout,
        "hello from a Xen VM\n",
        "{}",
        run["main_job"]
    );

    let h = &run["helpers"].assert_success("helpers").stdout;
    assert_eq!(
        value(h, "script="),
        "/usr/libexec/hyperxl/hyperxl-block",
        "{h}"
    );
    assert!(
        value(h, "monitor=").starts_with("/usr/bin/hyperxl --state-dir /var/lib/hyperxl monitor"),
        "{h}"
    );

    let v = &run["version"].assert_success("version").stdout;
    assert!(value(v, "Xen:").starts_with("4.17"), "{v}");
    assert_eq!(
        value(v, "guest:"),
        "/usr/lib/hyperxl (vmlinuz, initramfs.cpio)",
        "{v}"
    );
    assert!(value(v, "Memory:").contains("free for VMs"), "{v}");

    let s = &run["unit_start"].assert_success("unit_start").stdout;
    assert_eq!(
        value(s, "ExecStart="),
        "/usr/bin/hyperxl up -d -f /etc/hyperxl/pkg.toml",
        "{s}"
    );
    assert_eq!(value(s, "vm="), "pkg-web running", "{s}");
    let s = &run["unit_stop"].assert_success("unit_stop").stdout;
    assert_eq!(
        value(s, "ExecStop="),
        "/usr/bin/hyperxl down -f /etc/hyperxl/pkg.toml"
    );
    assert_eq!(value(s, "ps="), "0", "{s}");
    assert_eq!(value(s, "supervisors="), "0", "{s}");
    assert_eq!(value(s, "domains="), "1", "only Domain-0: {s}");

    let r = &run["reconcile"].assert_success("reconcile").stdout;
    assert!(value(r, "record=").contains("running"), "{r}");
    assert!(r.contains("stale: exited"), "{r}");
    assert!(value(r, "vm=").starts_with("stale exited"), "{r}");

    let d = &run["df_prune"];
    assert!(d.stdout.contains("Images"), "{d}");
    assert_eq!(value(&d.stdout, "unconfirmed="), "125", "{d}");
    assert!(d.stdout.contains("Deleted VMs:"), "{d}");
    assert!(d.stdout.contains("untagged: demo:latest"), "{d}");
    assert!(
        d.stdout
            .contains("\"images\":{\"total\":0,\"active\":0,\"size\":0"),
        "{d}"
    );
    assert!(d.stdout.contains("images=0 vms=0 blobs=0"), "{d}");
    assert_eq!(value(&d.stdout, "loops="), "0", "{d}");
}
