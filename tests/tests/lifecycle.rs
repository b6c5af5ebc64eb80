//! A VM's life beyond one attached run, in the Xen test host: `run -d`, `ps`, `logs`,
//! `stop`, `kill`, `wait`, `inspect`, `rm`; two runs at once; an attached run killed
//! with SIGKILL mid-boot and cleaned up by the next commands; and what xenstore lets a
//! guest write.

use hyperxl_e2e::Batch;

/// Nothing left: only dom0 in `xl list`, no loop device, no VM state.
const LEFTOVERS: &str =
    "xl list | tail -n +2 | grep -v '^Domain-0'; losetup -a; ls $HYPERXL_STATE_DIR/vms";

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn vms_are_managed_from_start_to_removal() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).expect("demo image");
    let mut batch = Batch::new();
    batch
        .timeout(900)
        .add(&image, "/images/demo.tar")
        .step("load", "hyperxl load -i /images/demo.tar")
        // Detached: prints the id, the VM keeps running.
        .step("detach", "hyperxl run -d --name bg demo sh -c 'echo bg-up; exec sleep 1000'")
        .step("ps_bg", "hyperxl ps")
        .step(
            "logs_bg",
            "for i in $(seq 100); do hyperxl logs bg | grep -q bg-up && break; sleep 0.2; done; hyperxl logs bg",
        )
        // pause/unpause: Xen's pause, seen by ps and xl; left paused for the stop.
        .step(
            "pause_bg",
            "hyperxl pause bg >/dev/null && echo \"paused: $(hyperxl ps -f name=bg | grep -o paused) xl=$(xl list | awk '/hyperxl-bg/ {print $5}')\"
             hyperxl unpause bg >/dev/null && echo \"unpaused: $(hyperxl ps -f name=bg | grep -o running) exec=$(hyperxl exec bg echo alive)\"
             hyperxl pause bg >/dev/null; hyperxl unpause no-such-vm; echo rc=$?",
        )
        // Graceful, paused or not (a stop lets a paused VM run again): SIGTERM ends
        // `sleep` long before the 60 s timeout, so the code is 143 (SIGTERM), not 137
        // (destroyed after the timeout).
        .step("stop_bg", "hyperxl stop -t 60 bg")
        .step("inspect_bg", "hyperxl inspect bg")
        .step("stop_again", "hyperxl stop bg")
        .step("rm_bg", "hyperxl rm bg")
        // kill -s: a signal other than KILL reaches the app (its trap runs, the VM runs
        // on); TERM ends it as the app's own default says (143); a bad name is refused.
        .step(
            "kill_signal",
            "hyperxl run -d --name sg demo sh -c 'trap \"echo got-usr1\" USR1; echo ready; while :; do sleep 1; done' >/dev/null
             for i in $(seq 100); do hyperxl logs sg | grep -q ready && break; sleep 0.2; done
             echo \"sent=$(hyperxl kill -s usr1 sg)\"
             for i in $(seq 50); do hyperxl logs sg | grep -q got-usr1 && break; sleep 0.2; done
             echo \"trapped=$(hyperxl logs sg | grep -c got-usr1) $(hyperxl ps -f name=sg | grep -o running)\"
             hyperxl kill -s NOPE sg; echo bad_rc=$?
             hyperxl kill -s SIGTERM sg >/dev/null; echo \"waited=$(hyperxl wait sg)\"; hyperxl rm sg >/dev/null",
        )
        // Two attached runs at the same time, racing for loop devices and the store.
        .step(
            "parallel",
            "(hyperxl run --rm --name p1 demo sh -c 'echo from-p1; exit 11' >/tmp/p1 2>&1; echo rc=$? >>/tmp/p1) &
             (hyperxl run --rm --name p2 demo sh -c 'echo from-p2; exit 12' >/tmp/p2 2>&1; echo rc=$? >>/tmp/p2) &
             wait; cat /tmp/p1 /tmp/p2",
        )
        // Two detached ones, then `wait` for both.
        .step(
            "wait_two",
            "hyperxl run -d --name w1 demo sh -c 'sleep 1; exit 4' >/dev/null &&
             hyperxl run -d --name w2 demo sh -c 'exit 5' >/dev/null && hyperxl wait w1 w2",
        )
        .step("rm_two", "hyperxl rm w1 w2")
        // logs -f follows the console as it comes, and returns once the VM exited.
        .step(
            "logs_follow",
            "hyperxl run -d --name lf demo sh -c 'echo one; sleep 2; echo two; exit 2' >/dev/null &&
             hyperxl logs -f lf && hyperxl ps -a -f name=lf | grep -c 'exited (2)' && hyperxl rm lf >/dev/null",
        )
        // `wait` on a --rm VM still gets its exit code; ps filters as Docker's.
        .step(
            "wait_rm",
            "id=$(hyperxl run -d --rm --name gone demo sh -c 'sleep 1; exit 9') && hyperxl ps -q -f name=gone && hyperxl wait $id",
        )
        // Ctrl-C on an attached run stops the VM gracefully: the app gets SIGTERM.
        .step(
            "ctrl_c",
            "hyperxl run --rm --name sig demo sh -c 'echo sig-up; exec sleep 1000' & pid=$!
             for i in $(seq 600); do hyperxl logs sig 2>/dev/null | grep -q sig-up && break; sleep 0.2; done
             kill -INT $pid; wait $pid; echo rc=$?",
        )
        // kill: destroyed at once, recorded as 137.
        .step("kill", "hyperxl run -d --name k demo sleep 1000 >/dev/null && hyperxl kill k")
        .step("inspect_k", "hyperxl inspect k")
        .step("rm_k", "hyperxl rm k")
        // An attached run killed with SIGKILL once its domain exists.
        .step(
            "sigkill",
            "hyperxl run --name crash demo sleep 1000 >/dev/null 2>&1 & pid=$!
             for i in $(seq 600); do xl list | grep -q hyperxl-crash && break; sleep 0.1; done
             kill -9 $pid; wait $pid
             echo killed",
        )
        .step("ps_crash", "hyperxl ps -a")
        .step("rmf_crash", "hyperxl rm -f crash")
        .step("after_crash", LEFTOVERS)
        // The same, but the app ends by itself with nobody watching: the next command
        // finds the exit code the guest left, and tears the domain down.
        .step(
            "orphan",
            "hyperxl run --name orphan demo sh -c 'sleep 3; exit 6' >/dev/null 2>&1 & pid=$!
             for i in $(seq 600); do hyperxl inspect orphan 2>/dev/null | grep -q '\"started_at\": [0-9]' && break; sleep 0.2; done
             kill -9 $pid; wait $pid
             for i in $(seq 600); do xl list | grep hyperxl-orphan | grep -q 's-' && break; sleep 0.2; done
             xl list | grep hyperxl-orphan | grep -q 's-' && echo ended",
        )
        .step("ps_orphan", "hyperxl ps -a --format json")
        .step("rm_orphan", "hyperxl rm orphan")
        // A guest may write its own status keys, and nothing else.
        .step("victim", "hyperxl run -d --name victim demo sleep 1000 >/dev/null && xl domid hyperxl-victim")
        .step(
            "xenstore",
            "hyperxl run --rm -u root -e VICTIM=$(xl domid hyperxl-victim) demo sh -c '
               d=$(xs domid)
               xs write /local/domain/$d/hyperxl/spec x
               xs write /local/domain/$d/hyperxl/new x
               xs write /local/domain/$VICTIM/data/hyperxl/exit-code 0
               xs read /local/domain/$VICTIM/hyperxl/spec
               xs write /local/domain/0/evil x
               xs write /local/domain/$d/data/hyperxl/probe mine'",
        )
        // Hostile status keys: terminal escapes are neutralised, and an exit code that is
        // not a number is a crash (125), never a success.
        .step(
            "hostile_status",
            "hyperxl run --rm -u root demo sh -c '
               d=$(xs domid)
               xs write /local/domain/$d/data/hyperxl/error \"$(printf \"bad\\033[2Jthing\")\" >/dev/null
               xs write /local/domain/$d/data/hyperxl/exit-code \"$(printf \"0\\033]0;owned\\007\")\" >/dev/null
               sleep 30'; echo rc=$?",
        )
        .step("victim_state", "hyperxl ps --format json; xenstore-read /local/domain/$(xl domid hyperxl-victim)/hyperxl/spec | head -c 13; echo")
        .step("rmf_victim", "hyperxl rm -f victim")
        .step("after", LEFTOVERS);
    let run = batch.run().expect("test host runs the batch");

    run["load"].assert_success("load");
    let id = run["detach"]
        .assert_success("detach")
        .stdout
        .trim()
        .to_string();
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "run -d prints the id: {}",
        run["detach"]
    );
    let ps = &run["ps_bg"].assert_success("ps_bg").stdout;
    let line = ps
        .lines()
        .find(|l| l.contains(" bg "))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(line.starts_with(&id) && line.contains("running"), "{ps}");
    assert!(!line.contains("unwatched"), "the monitor watches it: {ps}");
    assert_eq!(run["logs_bg"].assert_success("logs_bg").stdout, "bg-up\n");
    let pause = &run["pause_bg"].stdout;
    let xl_state = pause
        .lines()
        .find_map(|l| l.strip_prefix("paused: paused xl="))
        .unwrap_or_else(|| panic!("{}", run["pause_bg"]));
    assert!(xl_state.contains('p'), "{}", run["pause_bg"]);
    assert!(
        pause.contains("unpaused: running exec=alive\n"),
        "{}",
        run["pause_bg"]
    );
    assert!(pause.ends_with("rc=125\n"), "{}", run["pause_bg"]);
    assert!(
        run["pause_bg"].stderr.contains("no-such-vm"),
        "{}",
        run["pause_bg"]
    );
    assert_eq!(run["stop_bg"].assert_success("stop_bg").stdout, "bg\n");
    let inspect = &run["inspect_bg"].assert_success("inspect_bg").stdout;
    assert!(inspect.contains(r#""status": "exited""#), "{inspect}");
    assert!(
        inspect.contains(r#""exit_code": 143"#),
        "stopped gracefully: {inspect}"
    );
    assert!(inspect.contains(r#""killed": false"#), "{inspect}");
    assert!(
        inspect.contains(r#""args": ["#),
        "the spec is shown: {inspect}"
    );
    run["stop_again"].assert_success("stop_again");
    run["rm_bg"].assert_success("rm_bg");
    let k = &run["kill_signal"];
    assert!(k.stdout.contains("sent=sg\n"), "{k}");
    assert!(k.stdout.contains("trapped=1 running\n"), "{k}");
    assert!(k.stdout.contains("bad_rc=125\n"), "{k}");
    assert_eq!(
        k.stderr
            .lines()
            .filter(|l| l.contains("invalid signal"))
            .count(),
        1,
        "{k}"
    );
    assert!(k.stdout.contains("waited=143\n"), "{k}");

    let par = &run["parallel"].stdout;
    for want in ["from-p1\nrc=11\n", "from-p2\nrc=12\n"] {
        assert!(par.contains(want), "{}", run["parallel"]);
    }
    assert_eq!(run["wait_two"].assert_success("wait_two").stdout, "4\n5\n");
    run["rm_two"].assert_success("rm_two");
    assert_eq!(
        run["logs_follow"].assert_success("logs_follow").stdout,
        "one\ntwo\n1\n"
    );
    let wait_rm = &run["wait_rm"].assert_success("wait_rm").stdout;
    let lines: Vec<&str> = wait_rm.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].len() == 16 && lines[1] == "9",
        "{wait_rm}"
    );

    assert_eq!(
        run["ctrl_c"].stdout, "sig-up\nrc=143\n",
        "{}",
        run["ctrl_c"]
    );
    assert_eq!(run["kill"].assert_success("kill").stdout, "k\n");
    let k = &run["inspect_k"].stdout;
    assert!(
        k.contains(r#""exit_code": 137"#) && k.contains(r#""killed": true"#),
        "{k}"
    );
    run["rm_k"].assert_success("rm_k");

    assert_eq!(run["sigkill"].stdout, "killed\n", "{}", run["sigkill"]);
    let ps = &run["ps_crash"].assert_success("ps_crash").stdout;
    let line = ps
        .lines()
        .find(|l| l.contains(" crash "))
        .unwrap_or_else(|| panic!("{ps}"));
    // Killed before unpause, the paused domain is reaped at once (issue 10, defect 7,
    // checked deterministically in hardening.rs); killed just after, it runs unwatched.
    assert!(
        line.contains("(unwatched)") || line.contains("exited"),
        "ps tells the truth: {ps}"
    );
    assert_eq!(
        run["rmf_crash"].assert_success("rmf_crash").stdout,
        "crash\n"
    );
    assert_eq!(
        run["after_crash"].stdout, "",
        "leftovers: {}",
        run["after_crash"]
    );

    assert_eq!(run["orphan"].stdout, "ended\n", "{}", run["orphan"]);
    let ps = &run["ps_orphan"].assert_success("ps_orphan").stdout;
    assert!(
        ps.contains(r#""status": "exited""#) && ps.contains(r#""exit_code": 6"#),
        "{ps}"
    );
    run["rm_orphan"].assert_success("rm_orphan");

    let xs = &run["xenstore"];
    let lines: Vec<&str> = xs.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{xs}");
    for (i, what) in [
        "own spec",
        "own hyperxl dir",
        "another guest's status",
        "another guest's spec",
        "dom0's keys",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            lines[i].starts_with("error: ") && lines[i].ends_with("EACCES"),
            "{what} must be refused: {xs}"
        );
    }
    assert_eq!(lines[5], "ok", "its own status keys are writable: {xs}");
    let hostile = &run["hostile_status"];
    assert_eq!(hostile.stdout, "rc=125\n", "{hostile}");
    assert!(hostile.stderr.contains("bad?[2Jthing"), "{hostile}");
    assert!(
        !hostile.stderr.contains('\u{1b}'),
        "no escape reaches dom0's terminal: {hostile}"
    );
    let victim = &run["victim_state"].stdout;
    assert!(victim.contains(r#""status": "running""#), "{victim}");
    assert!(
        victim.ends_with("{\"version\":1\n") || victim.contains("{\"version\""),
        "spec untouched: {victim}"
    );
    run["rmf_victim"].assert_success("rmf_victim");
    assert_eq!(run["after"].stdout, "", "leftovers: {}", run["after"]);
}
