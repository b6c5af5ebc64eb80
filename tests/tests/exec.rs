//! `hyperxl exec` in the Xen test host: processes in a running VM over the control
//! channel (a vchan per session: dom0's libxenvchan, the init's own Rust client), with
//! docker exec's exit codes, flags, separate stdout and stderr, stdin, a terminal with
//! resize and ^C, signals, concurrent sessions, `run -i`, no QEMU and nothing left in
//! xenstore.

use hyperxl_e2e::{value, Batch};

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn exec_runs_processes_in_a_running_vm() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).unwrap();
    let scratch = dir.path().join("scratch.tar");
    hyperxl_e2e::demo::write_scratch_image(&scratch).unwrap();
    let mut batch = Batch::new();
    batch
        .add(&image, "/images/demo.tar")
        .add(&scratch, "/images/scratch.tar")
        .step(
            "start",
            "hyperxl load -q -i /images/demo.tar >/dev/null && \
             hyperxl run -d --name ex -m 64m --network none demo sh -c 'echo up; exec sleep 100000' >/dev/null && \
             echo domid=$(hyperxl inspect ex | sed -n 's/.*\"domid\": *\\([0-9]*\\).*/\\1/p' | head -n1)",
        )
        .step("exit42", "hyperxl exec ex sh -c 'exit 42'; echo rc=$?")
        .step("nosuch", "hyperxl exec ex nosuch-command; echo rc=$?")
        .step(
            "flags",
            "hyperxl exec -u 1234 -w /tmp -e A=b ex sh -c 'id -u; pwd; echo $A'",
        )
        .step(
            "split",
            "hyperxl exec ex sh -c 'echo out1; echo err1 >&2; echo out2; printf err2 >&2' >/tmp/o 2>/tmp/e; \
             echo rc=$?; \
             echo out=$(md5sum </tmp/o | cut -c1-32) want_out=$(printf 'out1\\nout2\\n' | md5sum | cut -c1-32); \
             echo err=$(md5sum </tmp/e | cut -c1-32) want_err=$(printf 'err1\\nerr2' | md5sum | cut -c1-32)",
        )
        .step("stdin", "printf 'hello\\n' | hyperxl exec -i ex cat")
        .step("no_stdin", "printf 'ignored\\n' | hyperxl exec ex cat; echo rc=$?")
        .step(
            "big",
            "head -c 100000000 /dev/urandom >/tmp/big; echo want=$(md5sum </tmp/big | cut -d' ' -f1); \
             s=$(date +%s); echo got=$(hyperxl exec -i ex cat </tmp/big | md5sum | cut -d' ' -f1); \
             echo secs=$(( $(date +%s) - s ))",
        )
        .step(
            "concurrent",
            "for i in 1 2 3 4; do (hyperxl exec ex sh -c \"sleep 1; echo s$i\" >/tmp/c$i; echo $? >/tmp/r$i; \
               hyperxl exec ex sh -c \"exit $((10 + i))\"; echo $? >>/tmp/r$i) & done; wait; \
             for i in 1 2 3 4; do echo \"c$i=$(cat /tmp/c$i) $(tr '\\n' ' ' </tmp/r$i)\"; done",
        )
        .step(
            "detach_and_processes",
            "hyperxl exec -d -u 0 ex sh -c 'sleep 1; echo detached >/tmp/d'; echo rc=$?; \
             hyperxl exec ex sleep 3 & sleep 1; \
             echo qemu=$(ps -o args | grep -c '[q]emu' || true); \
             echo hyperxl_procs=$(ps -o args | grep '[h]yperxl' | grep -vc 'exec ex' || true); wait; \
             sleep 2; hyperxl exec -u 0 ex cat /tmp/d",
        )
        .step(
            "tty",
            // A real terminal around hyperxl (script(1)), keys typed with pauses: the
            // guest's tty, its size at start and after a resize of ours, ^C reaching
            // the foreground job and not the shell, exit 3.
            "{ sleep 4; printf 'tty\\r'; sleep 2; printf 'stty size\\r'; sleep 2; \
               for p in $(ps -o pid,args | grep '[h]yperxl exec -it ex sh' | awk '{print $1}'); do \
                 t=$(readlink /proc/$p/fd/0); case $t in /dev/pts/*) break;; esac; done; \
               stty -F $t rows 33 cols 101; sleep 2; printf 'stty size\\r'; sleep 2; \
               printf 'sleep 100; echo slept\\r'; sleep 3; printf '\\003'; sleep 2; \
               printf 'echo alive\\r'; sleep 2; printf 'exit 3\\r'; sleep 4; } | \
             script -qfec 'stty rows 20 cols 70; hyperxl exec -it ex sh' /tmp/tty.log >/dev/null; \
             echo rc=$?; \
             tr -d '\\r' </tmp/tty.log",
        )
        .step(
            "signals",
            "hyperxl exec ex sh -c 'grep SigIgn /proc/self/status; grep SigIgn /proc/$(pidof sleep)/status'; \
             hyperxl exec ex sleep 100 & p=$!; sleep 4; kill -INT $p; wait $p; echo int_rc=$?; \
             hyperxl exec -i ex sleep 100 </dev/zero & p=$!; sleep 5; kill -INT $p; wait $p; echo unread_int_rc=$?; \
             { hyperxl exec ex yes; echo $? >/tmp/yrc; } | head -n1 >/dev/null; echo pipe_rc=$(cat /tmp/yrc); \
             sleep 1; echo yes_left=$(hyperxl exec ex sh -c 'pidof yes || echo none'); \
             d=$(hyperxl inspect ex | sed -n 's/.*\"domid\": *\\([0-9]*\\).*/\\1/p' | head -n1); \
             hyperxl exec ex sleep 100 & p=$!; sleep 4; kill -9 $p; wait $p 2>/dev/null; \
             echo killed_left=$(xenstore-list /local/domain/$d/hyperxl/exec 2>/dev/null | wc -l); \
             hyperxl exec ex true; \
             echo after_sweep=$(xenstore-list /local/domain/$d/hyperxl/exec 2>/dev/null | wc -l)",
        )
        .step(
            "top",
            "hyperxl top ex; echo rc=$?; hyperxl top nosuchvm; echo novm_rc=$?",
        )
        .step(
            "leftovers",
            "d=$(hyperxl inspect ex | sed -n 's/.*\"domid\": *\\([0-9]*\\).*/\\1/p' | head -n1); \
             echo sessions=$(xenstore-list /local/domain/$d/hyperxl/exec 2>/dev/null | wc -l)",
        )
        .step(
            "hostile",
            "hyperxl run -d -u 0 --name hx2 -m 64m --network none demo sh -c 'vchan-hostile 600; exec sleep 100000' >/dev/null; \
             s=$(date +%s); hyperxl exec hx2 sleep 30; rc=$?; echo rc=$rc; echo secs=$(( $(date +%s) - s )); \
             echo other=$(hyperxl exec ex echo fine); hyperxl rm -f hx2 >/dev/null; \
             hyperxl run -d -u 0 --name hx3 -m 64m --network none demo sh -c 'vchan-hostile 600 --hangup; exec sleep 100000' >/dev/null; \
             s=$(date +%s); timeout 90 hyperxl exec -i hx3 cat </dev/zero >/dev/null; echo hangup_rc=$?; \
             echo hangup_secs=$(( $(date +%s) - s )); hyperxl rm -f hx3 >/dev/null",
        )
        .step(
            "run_i",
            // run -i: our stdin to the app's (EOF closes it), and an app that never reads.
            "echo one=$(printf 'x' | hyperxl run -i --rm -m 64m --network none demo wc -c | tr -d '\r'); \
             head -c 3000000 /dev/urandom >/tmp/r; echo want=$(md5sum </tmp/r | cut -d' ' -f1); \
             echo got=$(hyperxl run -i --rm -m 64m --network none demo md5sum </tmp/r | tr -d '\r' | cut -d' ' -f1); \
             echo hi | hyperxl run -i --rm -m 64m --network none demo true; echo unread_rc=$?",
        )
        .step(
            "run_tty",
            // run -it through a real terminal: the app's tty, its size and a resize,
            // ^C to the foreground job, the exit code; logs still hold the output.
            "{ sleep 20; printf 'tty\\r'; sleep 2; printf 'stty size\\r'; sleep 2; \
               for p in $(ps -o pid,args | grep '[h]yperxl run -it' | awk '{print $1}'); do \
                 t=$(readlink /proc/$p/fd/0); case $t in /dev/pts/*) break;; esac; done; \
               stty -F $t rows 33 cols 101; sleep 2; printf 'stty size\\r'; sleep 2; \
               printf 'sleep 100; echo slept\\r'; sleep 3; printf '\\003'; sleep 2; \
               printf 'echo alive-$((40+2))\\r'; sleep 2; printf 'exit 3\\r'; sleep 6; } | \
             script -qfec 'stty rows 20 cols 70; hyperxl run -it --name rt -m 64m --network none demo sh' /tmp/rt.log >/dev/null; \
             echo rc=$?; echo logged=$(hyperxl logs rt | grep -c alive-42); hyperxl rm rt >/dev/null; \
             tr -d '\\r' </tmp/rt.log",
        )
        .step(
            "attach",
            // run -dit, attach, detach with ^P^Q (the VM runs on), attach again, exit 5.
            // Without a tty: attach feeds stdin to a run -di app and shows its output.
            "hyperxl run -dit --name at -m 64m --network none demo sh >/dev/null; hyperxl exec at true; \
             { sleep 4; printf 'echo attached-$((6*7))\\r'; sleep 3; printf '\\020\\021'; sleep 3; } | \
             script -qfec 'hyperxl attach at' /tmp/at1.log >/dev/null; echo detach_rc=$?; \
             echo after=$(hyperxl exec at echo still-running); \
             { sleep 4; printf 'exit 5\\r'; sleep 6; } | script -qfec 'hyperxl attach at' /tmp/at2.log >/dev/null; \
             echo attach_rc=$?; echo waited=$(hyperxl wait at); \
             echo at_logged=$(hyperxl logs at | grep -c attached-42); hyperxl rm at >/dev/null; \
             hyperxl run -d -i --name ai -m 64m --network none demo sh -c 'read x; echo got-$x; exit 4' >/dev/null; \
             hyperxl exec ai true; echo hello | hyperxl attach ai; echo ai_rc=$?; hyperxl rm ai >/dev/null; \
             echo ---at1; tr -d '\\r' </tmp/at1.log",
        )
        .step(
            "cp_start",
            // cp on an image with one static binary and no tar on PATH.
            "hyperxl load -q -i /images/scratch.tar >/dev/null && \
             hyperxl run -d --name sc -m 64m --network none scratch >/dev/null; \
             hyperxl exec sc tar 2>/dev/null; echo tar_rc=$?",
        )
        .step(
            "cp_out",
            "mkdir -p /tmp/cpo; hyperxl cp sc:/data /tmp/cpo; echo rc=$?; cd /tmp/cpo/data && \
             echo tree=$(find . | sort | tr '\n' ' '); \
             echo modes=$(stat -c '%n:%a' motd sub sub/deep.bin suid | tr '\n' ' '); \
             echo link=$(readlink link); echo motd=$(cat motd); \
             echo deep=$(md5sum <sub/deep.bin | cut -d' ' -f1); \
             echo want=$(hyperxl exec sc /bin/busybox md5sum /data/sub/deep.bin | cut -d' ' -f1); \
             hyperxl cp sc:/data/motd /tmp/cpo/renamed; echo renamed=$(cat /tmp/cpo/renamed); \
             hyperxl cp sc:/data/. /tmp/cpo/contents; echo contents=$(ls /tmp/cpo/contents | sort | tr '\n' ' '); \
             echo stream=$(hyperxl cp sc:/data/motd - | tar tf -); \
             hyperxl cp sc:/nosuch /tmp/cpo/x; echo missing_rc=$?; \
             hyperxl cp /tmp/cpo nosuchvm:/x; echo novm_rc=$?",
        )
        .step(
            "cp_in",
            "mkdir -p /tmp/cpi/tree/sub; printf 'in\n' >/tmp/cpi/tree/a; chmod 640 /tmp/cpi/tree/a; \
             head -c 200000 /dev/urandom >/tmp/cpi/tree/sub/r; chmod 755 /tmp/cpi/tree/sub/r; \
             ln -s /etc/shadow /tmp/cpi/tree/l; \
             hyperxl cp /tmp/cpi/tree sc:/srv; echo rc=$?; \
             echo modes=$(hyperxl exec sc /bin/busybox stat -c '%n:%a' /srv/a /srv/sub/r | tr '\n' ' '); \
             echo link=$(hyperxl exec sc /bin/busybox readlink /srv/l); \
             echo want=$(md5sum </tmp/cpi/tree/sub/r | cut -d' ' -f1); \
             echo got=$(hyperxl exec sc /bin/busybox md5sum /srv/sub/r | cut -d' ' -f1); \
             hyperxl cp /tmp/cpi/tree/a sc:/data/; echo into=$(hyperxl exec sc /bin/busybox cat /data/a); \
             (cd /tmp/cpi && tar cf - tree) | hyperxl cp - sc:/data; \
             echo streamed=$(hyperxl exec sc /bin/busybox cat /data/tree/a); \
             hyperxl cp /tmp/cpi/tree sc:/nosuch/dir; echo noparent_rc=$?",
        )
        .step(
            "cp_hostile",
            // A symlink the guest made pointing at a dom0 directory, then replaced by a
            // directory: the second copy lands in DEST, not through the old link. Then
            // guest root subverts its copy helper (tmpfs over /proc: /proc/self/exe is
            // its script) to send '..' names: refused, nothing outside DEST.
            "mkdir -p /tmp/outside; \
             hyperxl exec -u 0 sc /bin/busybox sh -c '/bin/busybox mkdir -p /h/t && /bin/busybox ln -s /tmp/outside /h/t/link'; \
             hyperxl cp sc:/h/t /tmp/hd; echo first=$(readlink /tmp/hd/link); \
             hyperxl exec -u 0 sc /bin/busybox sh -c '/bin/busybox rm /h/t/link && /bin/busybox mkdir /h/t/link && echo x >/h/t/link/pwned'; \
             hyperxl cp sc:/h/t/. /tmp/hd; echo second_rc=$?; \
             echo landed=$(cat /tmp/hd/link/pwned); \
             hyperxl exec -u 0 sc /bin/busybox sh -c '/bin/busybox mount -t tmpfs none /proc && /bin/busybox mkdir /proc/self && /bin/busybox cp /evil.sh /proc/self/exe'; \
             hyperxl cp sc:/data /tmp/hx; echo evil_rc=$?; \
             echo outside=$(ls -A /tmp/outside | wc -l); echo hx=$(ls -A /tmp/hx 2>/dev/null | tr '\n' ' '); \
             hyperxl rm -f sc >/dev/null",
        )
        .step(
            "stopped",
            "hyperxl stop ex >/dev/null; hyperxl exec ex true; echo rc=$?; hyperxl rm ex >/dev/null",
        );
    let run = batch.run().expect("test host runs the batch");

    run["start"].assert_success("start");
    assert_eq!(
        value(&run["exit42"].stdout, "rc="),
        "42",
        "{}",
        run["exit42"]
    );
    let n = &run["nosuch"];
    assert_eq!(value(&n.stdout, "rc="), "127", "{n}");
    assert!(n.stderr.contains("nosuch-command"), "{n}");
    assert_eq!(
        run["flags"].assert_success("flags").stdout,
        "1234\n/tmp\nb\n"
    );
    let s = &run["split"].stdout;
    assert_eq!(value(s, "rc="), "0", "{s}");
    let line = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    let pair = |l: String| {
        let mut it = l
            .split_whitespace()
            .map(|w| w.split_once('=').unwrap().1.to_string());
        (it.next().unwrap(), it.next().unwrap())
    };
    let (got, want) = pair(line("out="));
    assert_eq!(got, want, "stdout byte for byte: {s}");
    let (got, want) = pair(line("err="));
    assert_eq!(got, want, "stderr byte for byte: {s}");
    assert_eq!(run["stdin"].assert_success("stdin").stdout, "hello\n");
    assert_eq!(run["no_stdin"].stdout, "rc=0\n", "{}", run["no_stdin"]);
    let b = &run["big"].stdout;
    eprintln!("100 MB through exec -i cat: {b}");
    assert_eq!(value(b, "got="), value(b, "want="), "{}", run["big"]);
    let c = &run["concurrent"].stdout;
    for i in 1..=4 {
        assert_eq!(
            value(c, &format!("c{i}=")),
            format!("s{i} 0 {}", 10 + i),
            "{c}"
        );
    }
    let d = &run["detach_and_processes"];
    assert_eq!(value(&d.stdout, "rc="), "0", "{d}");
    assert_eq!(value(&d.stdout, "qemu="), "0", "{d}");
    // Only the VM's watcher (its monitor): no process per VM or session beyond it.
    assert_eq!(value(&d.stdout, "hyperxl_procs="), "1", "{d}");
    assert!(d.stdout.ends_with("detached\n"), "{d}");
    // -it: the guest's own terminal, our size followed, ^C for the job, not the shell.
    let t = &run["tty"];
    assert_eq!(value(&t.stdout, "rc="), "3", "{t}");
    assert!(t.stdout.contains("/dev/pts/"), "{t}");
    assert!(
        t.stdout.contains("\n20 70\n"),
        "size at start not sent: {t}"
    );
    assert!(t.stdout.contains("\n33 101\n"), "resize not followed: {t}");
    assert!(t.stdout.contains("alive"), "^C did not reach sleep: {t}");
    assert!(!t.stdout.lines().any(|l| l == "slept"), "{t}");
    // Processes start with no ignored signals (the init ignores SIGPIPE); ^C reaches
    // the process (130); a closed stdout ends exec as SIGPIPE would (141) and ends the
    // process; a killed exec's session is swept by the next one.
    let g = &run["signals"];
    for line in g.stdout.lines().filter(|l| l.starts_with("SigIgn")) {
        assert!(line.ends_with("0000000000000000"), "ignored signals: {g}");
    }
    assert_eq!(
        g.stdout.lines().filter(|l| l.starts_with("SigIgn")).count(),
        2,
        "{g}"
    );
    assert_eq!(value(&g.stdout, "int_rc="), "130", "{g}");
    // A signal reaches a process that reads none of the stdin sent to it (stdin is
    // flow-controlled, so the Signal frame never waits behind it).
    assert_eq!(value(&g.stdout, "unread_int_rc="), "130", "{g}");
    assert_eq!(value(&g.stdout, "pipe_rc="), "141", "{g}");
    assert_eq!(value(&g.stdout, "yes_left="), "none", "{g}");
    assert_eq!(value(&g.stdout, "killed_left="), "1", "{g}");
    assert_eq!(value(&g.stdout, "after_sweep="), "0", "{g}");
    assert_eq!(value(&run["leftovers"].stdout, "sessions="), "0");
    // top: the guest's processes, the app's among them, from the init itself.
    let t = &run["top"];
    assert_eq!(value(&t.stdout, "rc="), "0", "{t}");
    assert!(t.stdout.starts_with("PID"), "{t}");
    assert!(t.stdout.contains("COMMAND"), "{t}");
    assert!(t.stdout.contains("sleep 100000"), "{t}");
    assert!(!t.stdout.contains("/proc/self/exe top"), "{t}");
    assert_eq!(value(&t.stdout, "novm_rc="), "125", "{t}");
    // A guest process corrupting its session's ring: exec ends with one clear line long
    // before the process would have, and another VM's exec is unaffected.
    let h = &run["hostile"];
    assert_eq!(value(&h.stdout, "rc="), "125", "{h}");
    assert!(h.stderr.contains("corrupted"), "{h}");
    let secs: u64 = value(&h.stdout, "secs=").parse().unwrap();
    assert!(secs < 30, "{h}");
    assert_eq!(value(&h.stdout, "other="), "fine", "{h}");
    // A guest that hangs its session up without an exit code, while dom0 has endless
    // stdin to send: exec ends at once with one line (it once spun on its stdin).
    assert_eq!(value(&h.stdout, "hangup_rc="), "125", "{h}");
    assert!(h.stderr.contains("without an exit code"), "{h}");
    let secs: u64 = value(&h.stdout, "hangup_secs=").parse().unwrap();
    assert!(secs < 60, "{h}");
    let r = &run["run_i"];
    assert_eq!(value(&r.stdout, "one="), "1", "{r}");
    assert_eq!(value(&r.stdout, "got="), value(&r.stdout, "want="), "{r}");
    assert_eq!(value(&r.stdout, "unread_rc="), "0", "{r}");
    // run -it and attach.
    let t = &run["run_tty"];
    assert_eq!(value(&t.stdout, "rc="), "3", "{t}");
    assert!(t.stdout.contains("/dev/pts/"), "{t}");
    assert!(t.stdout.contains("20 70"), "{t}");
    assert!(t.stdout.contains("33 101"), "{t}");
    assert!(t.stdout.contains("alive-42"), "{t}");
    // The shell echoes the typed "sleep 100; echo slept"; ^C kept its output away.
    assert!(!t.stdout.lines().any(|l| l.trim() == "slept"), "{t}");
    assert_eq!(value(&t.stdout, "logged="), "1", "{t}");
    let a = &run["attach"];
    assert_eq!(value(&a.stdout, "detach_rc="), "0", "{a}");
    assert_eq!(value(&a.stdout, "after="), "still-running", "{a}");
    assert_eq!(value(&a.stdout, "attach_rc="), "5", "{a}");
    assert_eq!(value(&a.stdout, "waited="), "5", "{a}");
    assert_eq!(value(&a.stdout, "at_logged="), "1", "{a}");
    assert!(a.stdout.contains("got-hello"), "{a}");
    assert_eq!(value(&a.stdout, "ai_rc="), "4", "{a}");
    assert!(a.stdout.contains("attached-42"), "{a}");
    assert!(a.stdout.contains("detached"), "{a}");
    // cp: both ways on an image without tar, modes and contents kept, set-uid dropped
    // on dom0, a symlink copied as a symlink; hostile streams write nothing outside.
    assert_eq!(value(&run["cp_start"].stdout, "tar_rc="), "127");
    let o = &run["cp_out"];
    assert_eq!(value(&o.stdout, "rc="), "0", "{o}");
    assert_eq!(
        value(&o.stdout, "tree="),
        ". ./link ./motd ./sub ./sub/deep.bin ./suid",
        "{o}"
    );
    assert_eq!(
        value(&o.stdout, "modes="),
        "motd:600 sub:755 sub/deep.bin:755 suid:755",
        "{o}"
    );
    assert_eq!(value(&o.stdout, "link="), "/etc/passwd", "{o}");
    assert_eq!(value(&o.stdout, "motd="), "hello scratch", "{o}");
    assert_eq!(value(&o.stdout, "deep="), value(&o.stdout, "want="), "{o}");
    assert_eq!(value(&o.stdout, "renamed="), "hello scratch", "{o}");
    assert_eq!(value(&o.stdout, "contents="), "link motd sub suid", "{o}");
    assert_eq!(value(&o.stdout, "stream="), "motd", "{o}");
    assert_eq!(value(&o.stdout, "missing_rc="), "125", "{o}");
    assert!(o.stderr.contains("/nosuch"), "{o}");
    assert_eq!(value(&o.stdout, "novm_rc="), "125", "{o}");
    let i = &run["cp_in"];
    assert_eq!(value(&i.stdout, "rc="), "0", "{i}");
    assert_eq!(
        value(&i.stdout, "modes="),
        "/srv/a:640 /srv/sub/r:755",
        "{i}"
    );
    assert_eq!(value(&i.stdout, "link="), "/etc/shadow", "{i}");
    assert_eq!(value(&i.stdout, "got="), value(&i.stdout, "want="), "{i}");
    assert_eq!(value(&i.stdout, "into="), "in", "{i}");
    assert_eq!(value(&i.stdout, "streamed="), "in", "{i}");
    assert_eq!(value(&i.stdout, "noparent_rc="), "125", "{i}");
    let h = &run["cp_hostile"];
    assert_eq!(value(&h.stdout, "first="), "/tmp/outside", "{h}");
    assert_eq!(value(&h.stdout, "second_rc="), "0", "{h}");
    assert_eq!(value(&h.stdout, "landed="), "x", "{h}");
    assert_eq!(value(&h.stdout, "evil_rc="), "125", "{h}");
    assert!(h.stderr.contains("refused"), "{h}");
    assert_eq!(value(&h.stdout, "outside="), "0", "{h}");
    let st = &run["stopped"];
    assert_eq!(value(&st.stdout, "rc="), "125", "{st}");
    assert!(st.stderr.contains("is not running"), "{st}");
}
