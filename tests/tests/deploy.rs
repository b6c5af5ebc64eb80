//! Deployments and xl interoperability in the Xen test host: the examples in
//! `xen-configs/` booted as documented (deployment files with `hyperxl up`, xl.cfg files
//! with plain `xl create` plus `hyperxl spec write`), an `up` after an edit replacing
//! only the changed VM, restart policies, and malformed files starting nothing.

use std::fs;

use hyperxl_e2e::{repo_root, Batch};

const LEFTOVERS: &str =
    "xl list | tail -n +2 | grep -v '^Domain-0'; losetup -a; ls $HYPERXL_STATE_DIR/vms";

/// Boots an xl.cfg example the documented way and prints its console once it ended.
fn xl_boot(cfg: &str, domain: &str) -> String {
    xl_boot_file(&format!("/hx/configs/{cfg}"), domain)
}

/// Boots the xl.cfg at `path` with `xl create -p` + `hyperxl spec write` + `xl unpause`.
fn xl_boot_file(path: &str, domain: &str) -> String {
    format!(
        "xl create -p {path} && hyperxl spec write $(xl domid {domain}) {path} && xl unpause {domain}
         for i in $(seq 900); do xl list {domain} >/dev/null 2>&1 || break; sleep 0.2; done
         xl list {domain} >/dev/null 2>&1 && echo still running
         grep -v -e '^hyperstart: ' -e '^\\[' -e '^reboot: ' /var/log/xen/console/guest-{domain}.log | tr -d '\\r'"
    )
}

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn deployments_and_xl_configs_run_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).expect("demo image");
    let bad_dir = repo_root().join("tests/deployments/bad");
    let mut bad: Vec<(String, String)> = fs::read_dir(&bad_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no # expect: line", p.display()))
                .to_string();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                expect,
            )
        })
        .collect();
    bad.sort();
    assert!(bad.len() >= 10, "at least ten malformed files");

    let mut batch = Batch::new();
    batch
        .timeout(1500)
        .add(&image, "/images/demo.tar")
        .add(repo_root().join("xen-configs"), "/hx/configs")
        .add(&bad_dir, "/hx/bad")
        .step(
            "setup",
            "hyperxl load -i /images/demo.tar >/dev/null && mkdir -p /usr/lib/hyperxl /var/lib/hyperxl &&
             ln -sf /hx/guest/vmlinuz /hx/guest/initramfs.cpio /usr/lib/hyperxl/ &&
             ln -sf \"$(hyperxl image disk demo)\" /var/lib/hyperxl/demo.squashfs",
        )
        .step("xl_pvh", &xl_boot("hello-pvh.cfg", "hyperxl-hello-pvh"))
        .step("xl_pv", &xl_boot("hello-pv.cfg", "hyperxl-hello-pv"))
        .step(
            "config",
            "hyperxl config --name cfgtest -e WHO=config demo sh -c 'echo booted from hyperxl config by $WHO' >/tmp/c.cfg &&
             grep -c '^# hyperxl-spec: ' /tmp/c.cfg && grep -c '^vif' /tmp/c.cfg;
             hyperxl config -p 8080:80 demo true >/tmp/p.cfg 2>/tmp/p.err; echo \"net rc=$? $(wc -l < /tmp/p.err) $(wc -c < /tmp/p.cfg)\"",
        )
        .step("config_boot", &xl_boot_file("/tmp/c.cfg", "hyperxl-cfgtest"))
        .step("after_xl", LEFTOVERS)
        .step(
            "malformed",
            "for f in /hx/bad/*.toml; do hyperxl up -d -f $f 2>/tmp/err; echo \"${f##*/} rc=$? $(cat /tmp/err | wc -l) $(cat /tmp/err)\"; done",
        )
        .step("after_malformed", &format!("{LEFTOVERS}; ls $HYPERXL_STATE_DIR/deployments 2>/dev/null"))
        .step("up", "hyperxl up -d -f /hx/configs/shop.toml")
        .step("ps", "hyperxl ps --deployment shop")
        .step("ps_before", "hyperxl ps --deployment shop --format json | grep -e '\"id\"' -e '\"name\"'")
        .step(
            "logs",
            // `up` returns once each app started; its first line may still be on its way
            // through the console to the log file (seen on a loaded machine): wait for it.
            "for v in db cache web; do f=$HYPERXL_STATE_DIR/vms/$(hyperxl ps -q -f name=shop-$v)/console.log; for i in $(seq 60); do grep -q ready $f 2>/dev/null && break; sleep 0.5; done; hyperxl logs shop-$v; done",
        )
        .step(
            "edit",
            "mkdir -p /tmp/edit && sed 's/MODE = \"primary\"/MODE = \"replica\"/' /hx/configs/shop.toml >/tmp/edit/shop.toml &&
             grep -q replica /tmp/edit/shop.toml && hyperxl up -d -f /tmp/edit/shop.toml",
        )
        .step("ps_after", "hyperxl ps --deployment shop --format json | grep -e '\"id\"' -e '\"name\"'")
        .step(
            "logs_db",
            "f=$HYPERXL_STATE_DIR/vms/$(hyperxl ps -q -f name=shop-db)/console.log; for i in $(seq 60); do grep -q ready $f 2>/dev/null && break; sleep 0.5; done; hyperxl logs shop-db",
        )
        .step("down", "hyperxl down -f /tmp/edit/shop.toml")
        .step("after_down", &format!("{LEFTOVERS}; ls $HYPERXL_STATE_DIR/deployments"))
        // Attached this time: `up` supervises in the foreground and says what happens.
        .step(
            "restart_up",
            "hyperxl up -f /hx/configs/restart.toml >/tmp/up.out 2>&1 & echo $! >/tmp/up.pid",
        )
        .step(
            "restart_wait",
            "for i in $(seq 1500); do
               hyperxl inspect restart-flaky 2>/dev/null | grep -q '\"restart_count\": 2' &&
               hyperxl inspect restart-flaky | grep -q '\"status\": \"exited\"' && break; sleep 0.2; done
             sleep 3; hyperxl inspect restart-flaky | grep -e restart_count -e '\"status\"' -e exit_code",
        )
        .step("restart_logs", "hyperxl logs restart-flaky")
        .step(
            "stop_always",
            "hyperxl stop restart-steady && sleep 5 && hyperxl inspect restart-steady | grep -e restart_count -e '\"status\"' -e stopped_by_user",
        )
        // Nothing runs or will run again: the attached `up` ends by itself.
        .step(
            "up_output",
            "pid=$(cat /tmp/up.pid); for i in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.2; done
             kill -0 $pid 2>/dev/null && echo still running; cat /tmp/up.out",
        )
        .step("restart_down", "hyperxl down -f /hx/configs/restart.toml")
        .step("after", LEFTOVERS);
    let run = batch.run().expect("test host runs the batch");

    run["setup"].assert_success("setup");
    // The spec line, no vif; a published port is refused in one line, printing nothing.
    assert_eq!(
        run["config"].assert_success("config").stdout,
        "1\n0\nnet rc=125 1 0\n"
    );
    assert_eq!(
        run["config_boot"]
            .assert_success("config_boot")
            .stdout
            .trim(),
        "booted from hyperxl config by config",
        "{}",
        run["config_boot"]
    );
    assert_eq!(
        run["xl_pvh"].assert_success("xl_pvh").stdout.trim(),
        "hello from xl create as nobody in /srv",
        "{}",
        run["xl_pvh"]
    );
    assert_eq!(
        run["xl_pv"].assert_success("xl_pv").stdout.trim(),
        "hello from a PV guest, FOO=from-spec",
        "{}",
        run["xl_pv"]
    );
    // Only the symlinked disk's loop device may remain? No: xl's block script frees it.
    assert_eq!(run["after_xl"].stdout, "", "{}", run["after_xl"]);

    let malformed = &run["malformed"].stdout;
    for (file, expect) in &bad {
        let line = malformed
            .lines()
            .find(|l| l.starts_with(&format!("{file} ")))
            .unwrap_or_else(|| panic!("{file} not run: {malformed}"));
        assert!(
            line.contains(" rc=125 1 hyperxl: "),
            "one line, exit 125: {line}"
        );
        assert!(
            line.contains(expect.as_str()),
            "{file} must say {expect:?}: {line}"
        );
    }
    assert_eq!(
        run["after_malformed"].stdout, "",
        "malformed files started something"
    );

    let up = &run["up"].assert_success("up").stdout;
    let order: Vec<&str> = up.lines().collect();
    assert_eq!(
        &order[..3],
        [
            "shop-db: started",
            "shop-cache: started",
            "shop-web: started"
        ],
        "dependency order: {up}"
    );
    let ps = &run["ps"].assert_success("ps").stdout;
    assert_eq!(ps.lines().count(), 4, "header + 3 VMs: {ps}");
    assert_eq!(ps.matches("running").count(), 3, "{ps}");
    assert_eq!(
        run["logs"].stdout, "db ready MODE=primary\ncache ready\nweb ready\n",
        "{}",
        run["logs"]
    );
    let edit = &run["edit"].assert_success("edit").stdout;
    for want in [
        "shop-db: replaced",
        "shop-cache: unchanged, running",
        "shop-web: unchanged, running",
    ] {
        assert!(edit.contains(want), "{want}: {edit}");
    }
    // Same ids for the unchanged VMs, a new one for db.
    let ids = |s: &str| -> Vec<(String, String)> {
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        lines
            .chunks(2)
            .map(|c| (c[0].to_string(), c.get(1).unwrap_or(&"").to_string()))
            .collect()
    };
    let before = ids(&run["ps_before"].stdout);
    let after = ids(&run["ps_after"].stdout);
    assert_eq!(before.len(), 3, "{:?}", before);
    assert_eq!(after.len(), 3, "{:?}", after);
    for (id, name) in &before {
        let kept = after.iter().any(|(i, _)| i == id);
        assert_eq!(
            kept,
            !name.contains("shop-db"),
            "{name}: before {before:?} after {after:?}"
        );
    }
    assert_eq!(run["logs_db"].stdout, "db ready MODE=replica\n");
    let down = &run["down"].assert_success("down").stdout;
    assert_eq!(
        down, "shop-web: removed\nshop-cache: removed\nshop-db: removed\n",
        "reverse order"
    );
    assert_eq!(run["after_down"].stdout, "", "{}", run["after_down"]);

    run["restart_up"].assert_success("restart_up");
    let up_out = &run["up_output"].stdout;
    for want in [
        "restart-flaky: started",
        "restart-steady: started",
        "restart-flaky: exited (1); restarting",
        "restart-flaky: restarted (1)",
        "restart-flaky: restarted (2)",
        "restart-flaky: exited (1)\n",
        "restart-steady: exited (143), stopped by the user",
        "restart: nothing left running",
    ] {
        assert!(up_out.contains(want), "{want:?} in:\n{up_out}");
    }
    assert!(!up_out.contains("still running"), "{up_out}");
    assert!(!up_out.contains("restarted (3)"), "{up_out}");
    let flaky = &run["restart_wait"].stdout;
    assert!(flaky.contains("\"restart_count\": 2"), "{flaky}");
    assert!(flaky.contains("\"status\": \"exited\""), "{flaky}");
    assert!(flaky.contains("\"exit_code\": 1"), "{flaky}");
    assert_eq!(
        run["restart_logs"].stdout, "flaky run\nflaky run\nflaky run\n",
        "started 3 times in all"
    );
    let steady = &run["stop_always"].assert_success("stop_always").stdout;
    assert!(steady.contains("\"restart_count\": 0"), "{steady}");
    assert!(
        steady.contains("\"status\": \"exited\""),
        "stays stopped: {steady}"
    );
    assert!(steady.contains("\"stopped_by_user\": true"), "{steady}");
    run["restart_down"].assert_success("restart_down");
    assert_eq!(run["after"].stdout, "", "{}", run["after"]);
}
