//! Many small VMs at once, in one boot of the Xen test host: each `run -d` of a 32 MiB
//! VM takes about as long as the first did, idle VMs cost dom0 (almost) nothing (the
//! watchers sleep on the console and xenstore watches, no periodic work), every VM
//! reports the right exit code after `stop`, and afterwards nothing is left.
//! (The 50-VM run and the side-by-side numbers: `scripts/bench-idle`.)

use hyperxl_e2e::{value, Batch};

/// VMs started at once here (CI time); `scripts/bench-idle 50` runs the full count.
const COUNT: usize = 12;

/// Seconds over which the idle cost is sampled.
const SAMPLE_SECS: u32 = 20;

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn many_small_vms_start_evenly_idle_cheaply_and_end_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).unwrap();
    let start = format!(
        r#"[ -n "$BASH_VERSION" ] || exec bash "$0"
set -e
hyperxl load -q -i /images/demo.tar >/dev/null
for i in $(seq {COUNT}); do
    s=${{EPOCHREALTIME//[.,]/}}
    hyperxl run -d -m 32m --network none --name d$i demo sh -c "echo up $i; exec sleep 100000" >/dev/null
    e=${{EPOCHREALTIME//[.,]/}}
    echo "start$i=$(( (e - s) / 1000 ))"
done
echo "domains=$(xl list | tail -n +2 | wc -l)""#
    );
    // CPU ticks (utime + stime) of hyperxl's processes and of xenstored over the sample,
    // as % of one CPU; PSS of hyperxl's processes per VM.
    let idle = format!(
        r#"set -e
sleep 10
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
ticks() {{ t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(sed 's/^.*) //' /proc/$p/stat | awk '{{print $12 + $13}}'))); done; echo $t; }}
hx=$(for p in /proc/[0-9]*; do case "$(readlink $p/exe 2>/dev/null)" in */hyperxl) echo ${{p#/proc/}};; esac; done)
xs=$(pidof xenstored)
h0=$(ticks $hx); x0=$(ticks $xs)
sleep {SAMPLE_SECS}
h1=$(ticks $hx); x1=$(ticks $xs)
pct() {{ awk -v t="$1" -v s={SAMPLE_SECS} -v hz="$hz" 'BEGIN {{printf "%.2f", 100 * t / hz / s}}'; }}
echo "procs=$(echo $hx | wc -w)"
echo "hyperxl_pct=$(pct $((h1 - h0)))"
echo "xenstored_pct=$(pct $((x1 - x0)))"
pss=0; for p in $hx; do pss=$((pss + $(awk '/^Pss:/ {{print $2}}' /proc/$p/smaps_rollup))); done
echo "pss_kib_per_vm=$((pss / {COUNT}))"
for i in $(seq {COUNT}); do hyperxl logs d$i | grep -qx "up $i" && echo "logged$i=yes"; done"#
    );
    let stop = format!(
        r#"set -e
hyperxl stop -t 20 $(seq -f 'd%g' {COUNT}) >/dev/null
for i in $(seq {COUNT}); do echo "exit$i=$(hyperxl wait d$i)"; done
hyperxl rm $(seq -f 'd%g' {COUNT}) >/dev/null
echo "domains=$(xl list | tail -n +2 | wc -l)"
echo "loops=$(losetup -a | wc -l)"
echo "records=$(ls $HYPERXL_STATE_DIR/vms | wc -l)"
echo "watchers=$(ps -o args | grep -c '[h]yperxl .*monitor' || true)""#
    );
    let mut batch = Batch::new();
    batch
        .add(&image, "/images/demo.tar")
        .step("start", &start)
        .step("idle", &idle)
        .step("stop", &stop);
    let run = batch.run().expect("test host runs the batch");

    let s = &run["start"].assert_success("start").stdout;
    assert_eq!(value(s, "domains="), (COUNT + 1).to_string(), "{s}");
    let ms: Vec<u64> = (1..=COUNT)
        .map(|i| value(s, &format!("start{i}=")).parse().unwrap())
        .collect();
    // The last VMs start about as fast as the first ones did (means of three, so one
    // slow emulated moment does not decide): no cost that grows with the VMs running.
    let first = ms[..3].iter().sum::<u64>() / 3;
    let last = ms[COUNT - 3..].iter().sum::<u64>() / 3;
    assert!(last <= 2 * first, "run -d times grew: {ms:?}");

    let i = &run["idle"].assert_success("idle").stdout;
    // One watcher per VM, nothing else of ours.
    assert_eq!(value(i, "procs="), COUNT.to_string(), "{i}");
    let hyperxl: f64 = value(i, "hyperxl_pct=").parse().unwrap();
    let xenstored: f64 = value(i, "xenstored_pct=").parse().unwrap();
    assert!(
        hyperxl / (COUNT as f64) < 1.0,
        "idle watchers take {hyperxl}% of a CPU for {COUNT} VMs: {i}"
    );
    assert!(xenstored < 5.0, "xenstored busy with idle VMs: {i}");
    for n in 1..=COUNT {
        assert_eq!(value(i, &format!("logged{n}=")), "yes", "{i}");
    }

    let t = &run["stop"].assert_success("stop").stdout;
    for n in 1..=COUNT {
        // `stop` sends SIGTERM to the app (sleep): 128 + 15, as Docker reports it.
        assert_eq!(value(t, &format!("exit{n}=")), "143", "{t}");
    }
    assert_eq!(value(t, "domains="), "1", "only Domain-0: {t}");
    assert_eq!(value(t, "loops="), "0", "{t}");
    assert_eq!(value(t, "records="), "0", "{t}");
    assert_eq!(value(t, "watchers="), "0", "{t}");
}
