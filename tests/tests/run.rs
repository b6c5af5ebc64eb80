//! `hyperxl run` end to end in the Xen test host: a test image loaded from a
//! `docker save` tarball, run through libxl with HyperKernel + hyperstart-pv.

use hyperxl_e2e::Batch;

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn run_boots_images_and_exits_with_the_apps_code() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).expect("demo image");
    let mut batch = Batch::new();
    batch
        .add(&image, "/images/demo.tar")
        .step("load", "hyperxl load -i /images/demo.tar")
        .step("image_config", "hyperxl run --rm demo")
        .step("hello", "hyperxl run --rm demo echo hello")
        .step("exit3", "hyperxl run --rm demo sh -c 'exit 3'")
        .step("missing", "hyperxl run --rm demo no-such-command")
        .step(
            "flags",
            "hyperxl run --rm -e FOO=cli -w /tmp/wd -u nobody demo sh -c 'echo FOO=$FOO; pwd; id -un'",
        )
        .step("pv", "hyperxl run --rm --type pv demo echo pv-hello")
        // Two vCPUs: both present (HyperKernel skips only absent ACPI processors).
        .step(
            "cpus",
            "hyperxl run --rm --cpus 2 demo sh -c 'grep -c ^processor /proc/cpuinfo'",
        )
        .step("cpus_over", "hyperxl run --rm --cpus 65 demo true")
        .step("named", "hyperxl run --name keep demo true")
        .step("duplicate", "hyperxl run --name keep demo true")
        .step("ps_running", "hyperxl ps")
        .step("ps_all", "hyperxl ps -a --format json")
        .step("after_run", "ls $HYPERXL_STATE_DIR/vms")
        .step("rm", "hyperxl rm keep && hyperxl rm keep")
        .step("after", "xl list | tail -n +2; losetup -a; ls $HYPERXL_STATE_DIR/vms");
    let run = batch.run().expect("test host runs the batch");

    run["load"].assert_success("load");
    let out = &run["image_config"].assert_success("image_config").stdout;
    assert_eq!(
        out, "image-cmd FOO=image\n/srv\napp\n",
        "{}",
        run["image_config"]
    );
    assert_eq!(run["hello"].assert_success("hello").stdout, "hello\n");
    assert_eq!(run["exit3"].status, 3, "{}", run["exit3"]);
    assert_eq!(run["missing"].status, 127, "{}", run["missing"]);
    assert!(
        run["missing"].stderr.contains("no-such-command"),
        "{}",
        run["missing"]
    );
    assert_eq!(
        run["flags"].assert_success("flags").stdout,
        "FOO=cli\n/tmp/wd\nnobody\n"
    );
    assert_eq!(run["pv"].assert_success("pv").stdout, "pv-hello\n");
    assert_eq!(run["cpus"].assert_success("cpus").stdout, "2\n");
    let over = &run["cpus_over"];
    assert_eq!(over.status, 125, "{over}");
    assert_eq!(
        over.stderr, "hyperxl: vcpus must be between 1 and 64, not 65\n",
        "{over}"
    );
    run["named"].assert_success("named");
    let dup = &run["duplicate"];
    assert_eq!(dup.status, 125, "{dup}");
    assert!(dup.stderr.contains("already in use"), "{dup}");
    // ps shows no running VM; ps -a shows the kept one, exited with code 0.
    assert_eq!(
        run["ps_running"]
            .assert_success("ps")
            .stdout
            .lines()
            .count(),
        1
    );
    let all = &run["ps_all"].assert_success("ps_all").stdout;
    assert!(all.contains(r#""name": "keep""#), "{all}");
    assert!(
        all.contains(r#""status": "exited""#) && all.contains(r#""exit_code": 0"#),
        "{all}"
    );
    assert_eq!(
        all.matches(r#""id":"#).count(),
        1,
        "--rm VMs left state:\n{all}"
    );
    assert_eq!(
        run["after_run"].stdout.lines().count(),
        1,
        "{}",
        run["after_run"]
    );
    // rm removes it; a second rm of the same name fails with a clear error.
    let rm = &run["rm"];
    assert_eq!(rm.stdout, "keep\n", "{rm}");
    assert_eq!(rm.status, 125, "{rm}");
    assert!(rm.stderr.contains("no such VM: keep"), "{rm}");
    // Only dom0 is left, no loop device, no VM state.
    let after: Vec<&str> = run["after"].stdout.lines().collect();
    assert_eq!(after.len(), 1, "leftovers:\n{}", run["after"]);
    assert!(after[0].starts_with("Domain-0"), "{}", run["after"]);
}
