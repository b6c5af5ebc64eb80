//! Hostile guests against dom0, in the Xen test host, through the real binary (issue 10):
//! a console flood without newlines, a chatty VM restarted again and again, a state disk
//! that fills up under a running VM, a stale `supervisor.pid` naming another VM's
//! monitor, and a spec too large for xenstore.

use std::fs;

use hyperxl_e2e::Batch;

/// Nothing left: only dom0 in `xl list`, no loop device, no VM state.
const LEFTOVERS: &str =
    "xl list | tail -n +2 | grep -v '^Domain-0'; losetup -a; ls $HYPERXL_STATE_DIR/vms";

/// The monitor of VM `$1`'s pid, from `inspect`.
const MONITOR_PID: &str =
    "monitor_pid() { hyperxl inspect \"$1\" | sed -n 's/.*\"monitor_pid\": \\([0-9]*\\).*/\\1/p'; }";

/// Total bytes of VM `$1`'s console log files.
const LOG_BYTES: &str = "log_bytes() { d=$HYPERXL_STATE_DIR/vms/$(hyperxl inspect \"$1\" | sed -n 's/.*\"id\": \"\\([0-9a-f]*\\)\".*/\\1/p' | head -1); cat $d/console.log* | wc -c; }";

/// A deployment whose VM prints 1.5 MB and exits, restarted for ever, its log capped at
/// 2 x 256 KiB.
const CHATTY: &str = r#"name = "chatty"
[vm.talk]
image = "demo"
command = ["sh", "-c", "head -c 1500000 /dev/zero | tr '\\0' B; echo; echo run-done"]
restart = "always"
log_opt = ["max-size=256k", "max-file=2"]
"#;

/// A deployment with one long-running VM, for the supervisor test.
const SUP: &str = r#"name = "sup"
[vm.a]
image = "demo"
command = ["sleep", "1000"]
restart = "always"
"#;

fn kib(text: &str, key: &str) -> u64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
}

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn hostile_guests_cannot_hurt_dom0() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).expect("demo image");
    let cfg = dir.path().join("cfg");
    fs::create_dir(&cfg).unwrap();
    fs::write(cfg.join("chatty.toml"), CHATTY).unwrap();
    fs::write(cfg.join("sup.toml"), SUP).unwrap();

    let mut batch = Batch::new();
    batch
        .timeout(1500)
        .add(&image, "/images/demo.tar")
        .add(&cfg, "/hx/cfg")
        .step("load", "hyperxl load -i /images/demo.tar")
        // Defect 8: a spec over xenstore's value limit fails before any domain exists.
        .step(
            "big_env",
            "hyperxl run --rm -e X=$(printf '%05000d' 0) demo true; echo rc=$?",
        )
        .step("after_big_env", LEFTOVERS)
        // Defect 1: 64 KiB chunks without a newline, for 30 s. A PV guest: a PVH guest
        // flooding its console at full speed has frozen the emulated machine about one
        // run in two (QEMU 7.2's TCG, nested SVM: the CPU stuck right after the guest's
        // `vmmcall` in xen_hypercall_amd, no dom0 heartbeat; scripts/xen-testhost
        // prints where a frozen CPU is). The console path in dom0 is the same for both.
        .step(
            "flood",
            &format!(
                "{MONITOR_PID}; {LOG_BYTES}
                 hyperxl run -d --name flood --type pv --log-opt max-size=1m --log-opt max-file=2 demo \
                   sh -c 'while :; do head -c 65536 /dev/zero | tr \"\\0\" A; done' >/dev/null || exit 1
                 pid=$(monitor_pid flood)
                 sleep 5; r1=$(awk '/VmRSS/ {{print $2}}' /proc/$pid/status)
                 sleep 30; r2=$(awk '/VmRSS/ {{print $2}}' /proc/$pid/status)
                 d=$HYPERXL_STATE_DIR/vms/$(hyperxl ps -q -f name=flood)*
                 echo rss_start=$r1 rss_end=$r2 log=$(log_bytes flood) files=$(ls $d/console.log* | wc -l)
                 hyperxl kill flood >/dev/null && hyperxl rm flood >/dev/null"
            ),
        )
        // Defect 1: the cap holds across restarts of the same VM.
        .step(
            "chatty",
            &format!(
                "{LOG_BYTES}
                 hyperxl up -d -f /hx/cfg/chatty.toml >/dev/null || exit 1
                 for i in $(seq 1500); do
                   hyperxl inspect chatty-talk 2>/dev/null | grep -q '\"restart_count\": [3-9]' && break; sleep 0.2; done
                 hyperxl inspect chatty-talk | grep restart_count | tr -d ' ,'
                 echo log=$(log_bytes chatty-talk)
                 hyperxl logs chatty-talk | grep -c run-done
                 hyperxl down -f /hx/cfg/chatty.toml >/dev/null"
            ),
        )
        // Defect 4: the state disk fills up while the guest boots; the VM lives on,
        // and still stops cleanly.
        .step(
            "full_setup",
            "mkdir -p /small && mount -t tmpfs -o size=128m small /small &&
             HYPERXL_STATE_DIR=/small/st hyperxl load -i /images/demo.tar >/dev/null",
        )
        .step(
            "full_run",
            "export HYPERXL_STATE_DIR=/small/st
             hyperxl run -d --name full demo sh -c 'while :; do echo tick; sleep 1; done' >/dev/null || exit 1
             dd if=/dev/zero of=/small/fill bs=64k 2>/dev/null; echo avail=$(df -k /small | awk 'NR==2 {print $4}')
             for i in $(seq 600); do xenstore-read /local/domain/$(xl domid hyperxl-full)/data/hyperxl/started >/dev/null 2>&1 && break; sleep 0.2; done
             sleep 5
             xl list hyperxl-full >/dev/null 2>&1 && echo alive
             hyperxl ps -q -f status=running | wc -l",
        )
        .step(
            "full_stop",
            "export HYPERXL_STATE_DIR=/small/st
             hyperxl stop -t 30 full; echo rc=$?
             xl list hyperxl-full >/dev/null 2>&1 && echo domain-left; true",
        )
        .step(
            "full_after",
            "export HYPERXL_STATE_DIR=/small/st
             rm /small/fill
             hyperxl inspect full | grep -e '\"status\"' -e exit_code | tr -d ' ,'
             hyperxl rm full >/dev/null; losetup -a; xl list | tail -n +2 | grep -v '^Domain-0'; true",
        )
        // Defect 5: `down` with another VM's monitor in a stale supervisor.pid.
        .step(
            "sup",
            &format!(
                "{MONITOR_PID}
                 hyperxl run -d --name other demo sleep 1000 >/dev/null || exit 1
                 hyperxl up -d -f /hx/cfg/sup.toml >/dev/null || exit 1
                 d=$HYPERXL_STATE_DIR/deployments/sup
                 for i in $(seq 300); do [ -s $d/supervisor.pid ] && break; sleep 0.1; done
                 kill -9 $(cut -d' ' -f1 $d/supervisor.pid); sleep 1
                 mpid=$(monitor_pid other); echo $mpid > $d/supervisor.pid
                 hyperxl down -f /hx/cfg/sup.toml >/dev/null; echo down_rc=$?
                 sleep 2
                 kill -0 $mpid && echo monitor-alive
                 hyperxl ps -f name=other | grep -c running
                 hyperxl rm -f other >/dev/null"
            ),
        )
        // Defect 7: the watcher dies before unpause; the paused domain is reaped by the
        // next command instead of holding its memory until someone runs `rm -f`.
        .step(
            "paused_orphan",
            "hyperxl run --name orphan demo sleep 1000 >/dev/null 2>&1 & pid=$!
             for i in $(seq 600); do xl list | grep -q hyperxl-orphan && break; sleep 0.05; done
             kill -STOP $pid
             xl list | grep hyperxl-orphan | awk '{print \"state=\" $5}'
             kill -9 $pid; kill -CONT $pid; wait $pid
             hyperxl ps -a -f name=orphan | tail -n +2 | grep -c exited
             hyperxl inspect orphan | grep -c 'watcher died before the VM started'
             xl list | grep -c hyperxl-orphan
             hyperxl rm orphan >/dev/null",
        )
        // Defects 10 and 11: private files; one corrupt record hides nothing else.
        .step(
            "private_and_corrupt",
            "hyperxl run --name c1 demo true >/dev/null && hyperxl run --name c2 demo true >/dev/null || exit 1
             id=$(hyperxl ps -a -q -f name=c1); d=$(ls -d $HYPERXL_STATE_DIR/vms/$id*)
             stat -c '%a %n' $HYPERXL_STATE_DIR $d $d/state.json $d/spec.json $d/console.log | sed \"s|$HYPERXL_STATE_DIR|S|; s|/vms/[0-9a-f]*|/vms/ID|\"
             echo '{garbage' > $d/state.json
             hyperxl ps -a 2>/tmp/warn | tail -n +2 | awk '{print $2}'
             grep -c 'corrupt state.json' /tmp/warn
             hyperxl rm -f $id >/dev/null; hyperxl rm c2 >/dev/null; ls $HYPERXL_STATE_DIR/vms | wc -l",
        )
        .step("after", LEFTOVERS);
    let run = batch.run().expect("test host runs the batch");

    run["load"].assert_success("load");

    let big = &run["big_env"];
    assert!(big.stdout.ends_with("rc=125\n"), "{big}");
    let err: Vec<&str> = big.stderr.lines().collect();
    assert_eq!(err.len(), 1, "one line: {big}");
    assert!(
        err[0].contains("xenstore") && err[0].contains("environment"),
        "{big}"
    );
    assert_eq!(run["after_big_env"].stdout, "", "{}", run["after_big_env"]);

    let flood = &run["flood"].assert_success("flood").stdout;
    println!("flood: {flood}");
    let (r1, r2) = (kib(flood, "rss_start="), kib(flood, "rss_end="));
    assert!(r2 < 32 * 1024, "watcher RSS {r2} KiB: {flood}");
    assert!(r2 < r1 + 2048, "watcher RSS grew {r1} -> {r2} KiB: {flood}");
    let log = kib(flood, "log=");
    assert!(
        log <= 2 * 1024 * 1024 + 64 * 1024,
        "log {log} bytes: {flood}"
    );
    assert!(log > 1024 * 1024, "the flood reached the log: {flood}");
    assert_eq!(kib(flood, "files="), 2, "rotated once at least: {flood}");

    let chatty = &run["chatty"].assert_success("chatty").stdout;
    println!("chatty: {chatty}");
    assert!(kib(chatty, "\"restart_count\":") >= 3, "{}", run["chatty"]);
    let log = kib(chatty, "log=");
    assert!(
        log <= 512 * 1024 + 16 * 1024,
        "log {log} bytes after 4 runs of 1.5 MB: {chatty}"
    );
    assert!(log > 256 * 1024, "{chatty}");

    run["full_setup"].assert_success("full_setup");
    let full = &run["full_run"].assert_success("full_run").stdout;
    assert!(kib(full, "avail=") < 64, "the disk is full: {full}");
    assert!(
        full.contains("alive\n"),
        "the VM survived: {}",
        run["full_run"]
    );
    assert!(full.ends_with("1\n"), "ps shows it running: {full}");
    let stop = &run["full_stop"];
    assert_eq!(stop.stdout, "full\nrc=0\n", "{stop}");
    let after = &run["full_after"].assert_success("full_after").stdout;
    for want in ["\"status\":\"exited\"\n", "\"exit_code\":143\n"] {
        assert!(after.contains(want), "{}", run["full_after"]);
    }

    let sup = &run["sup"].assert_success("sup").stdout;
    assert!(sup.contains("down_rc=0\n"), "{}", run["sup"]);
    assert!(sup.contains("monitor-alive\n"), "{}", run["sup"]);
    assert!(sup.ends_with("monitor-alive\n1\n"), "{}", run["sup"]);

    let orphan = &run["paused_orphan"].assert_success("paused_orphan").stdout;
    assert_eq!(
        orphan, "state=--p---\n1\n1\n0\n",
        "{}",
        run["paused_orphan"]
    );

    let pc = &run["private_and_corrupt"];
    assert_eq!(
        pc.stdout,
        "700 S\n700 S/vms/ID\n600 S/vms/ID/state.json\n600 S/vms/ID/spec.json\n600 S/vms/ID/console.log\nc2\n1\n0\n",
        "{pc}"
    );

    assert_eq!(run["after"].stdout, "", "{}", run["after"]);
}
