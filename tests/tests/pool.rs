//! Pre-booted VMs (`hyperxl pool`), in one boot of the Xen test host: `run` starts in
//! a ready VM of its shape (hot-added rootfs, volume and vif; the spec written to the
//! waiting init), each pooled VM serves one run in a domain of its own, nothing the
//! pooled VM printed before its spec reaches the app's output, the pool refills
//! itself (after a run, and at boot through `system reconcile`), a run killed with -9
//! right after it took a pooled VM leaves no app running, a refill killed with -9
//! leaves nothing `pool drain` cannot clean, and `pool drain` leaves only Domain-0.
//!
//! The VMs are PV with 64 MiB (an idle PVH guest is costly in the emulated test host
//! only: see density.rs); one PVH pool shows the default type's hot-add too.

use hyperxl_e2e::{value, Batch};

/// The pooled shape every `run` below asks for.
const SHAPE: &str = "-m 64m --type pv";

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn runs_start_in_pooled_vms_once_each_and_the_pool_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&image).unwrap();
    // Waits until the pool holds N ready VMs and no refill runs.
    let settle = r#"settle() { for t in $(seq 600); do
    [ "$(hyperxl pool ls | awk '$4 == "ready"' | wc -l)" = "$1" ] && ! ps -o args | grep -q '[p]ool fill' && return 0
    sleep 0.5; done; return 1; }
pooled() { hyperxl pool ls | awk '$4 == "ready" {print $2}' | sort -n | tr '\n' ' '; }"#;
    let fill = format!(
        r#"hyperxl load -q -i /images/demo.tar >/dev/null || exit 1
{settle}
hyperxl pool fill --size 2 {SHAPE} >/dev/null || exit 1
echo "ready=$(hyperxl pool ls -q | wc -l)"
echo "shape=$(hyperxl pool ls | awk 'NR == 2 {{print $1, $2, $3}}')"
echo "ps_default=$(hyperxl ps -aq | wc -l)"
echo "ps_pool=$(hyperxl ps -aq --filter pool | wc -l)"
echo "pool_domains=$(xl list | grep -c '^hyperxl-pool-')"
hyperxl pool ls"#
    );
    // Three `run --rm` in a row; each one's domid read while its app runs.
    let runs = format!(
        r#"{settle}
echo "pooled_before=$(pooled)"
for i in 1 2 3; do
    hyperxl run --rm --debug --name r$i {SHAPE} --network none demo sh -c "echo app-$i; sleep 3" > /tmp/out$i 2>&1 &
    pid=$!
    d=; for t in $(seq 200); do d=$(xl domid hyperxl-r$i 2>/dev/null) && break; sleep 0.1; done
    echo "domid$i=$d"
    wait $pid; echo "rc$i=$?"
    echo "app$i=$(grep -c "^app-$i$" /tmp/out$i)"
    echo "received$i=$(grep -c 'spec received' /tmp/out$i)"
    echo "boot_lines$i=$(grep -c 'waiting for a spec' /tmp/out$i)"
done
settle 2 && echo settled=yes
echo "pooled_after=$(pooled)"
echo "pool_domains=$(xl list | grep -c '^hyperxl-pool-')"
echo "records=$(ls $HYPERXL_STATE_DIR/vms | wc -l)""#
    );
    // A detached run on a pooled PVH VM with a volume and a published port: the
    // rootfs, the volume's disk and the vif are all hot-added.
    let devices = format!(
        r#"{settle}
hyperxl pool fill --size 0 {SHAPE} >/dev/null || exit 1
hyperxl pool fill --size 1 -m 64m >/dev/null || exit 1
pvh=$(pooled)
echo "pvh_pooled=$pvh"
hyperxl run -d --name web -m 64m -u root -p 8080:80 -v data:/data demo sh -c 'echo kept > /data/f; mkdir -p /www && echo hello-from-pool > /www/index.html && httpd -f -p 80 -h /www' >/dev/null || exit 1
echo "web_domid=$(xl domid hyperxl-web)"
echo "from=$(hyperxl inspect web | grep -c '"hyperxl.pool.from"')"
for t in $(seq 100); do page=$(timeout 5 wget -q -O - http://127.0.0.1:8080/ 2>/dev/null) && break; sleep 0.5; done
echo "page=$page"
echo "volume=$(hyperxl exec web cat /data/f)"
echo "eth0=$(hyperxl exec web cat /sys/class/net/eth0/operstate)"
hyperxl logs web > /tmp/weblog 2>&1
echo "web_boot_lines=$(grep -c 'waiting for a spec' /tmp/weblog)"
hyperxl stop web >/dev/null; echo "web_exit=$(hyperxl wait web)"
hyperxl rm web >/dev/null
echo "reused=$(hyperxl run --rm -m 64m -v data:/data demo cat /data/f)""#
    );
    // A `run -d` killed with -9 as soon as it took the pooled VM (the domain has the
    // run's name): the domain stays paused until a watcher would unpause it, so the
    // next command finds a VM that never started and destroys it (or, if the kill came
    // after the watcher was spawned, the VM runs watched): no app runs unwatched. Then, as after a dom0 reboot: the pooled domains are gone; the
    // boot-time reconcile refills the pool. Last, `stop` of a pooled VM destroys it.
    let reboot = format!(
        r#"{settle}
settle 1 || exit 1
hyperxl run -d --name early -m 64m --network none demo sh -c 'echo app-early; sleep 1000' >/dev/null 2>&1 &
run=$!
for t in $(seq 600); do xl domid hyperxl-early >/dev/null 2>&1 && break; sleep 0.05; done
kill -9 $run; wait $run 2>/dev/null
echo "early_taken=$(xl list | grep -c '^hyperxl-early ')"
hyperxl ps -a >/dev/null
echo "early_domain=$(xl list | grep -c '^hyperxl-early ')"
echo "early_exited=$(hyperxl ps -a --filter name=early | grep -c exited)"
echo "early_status=$(hyperxl ps -a --filter name=early | tail -n +2 | grep -oE '(created|running) \(unwatched\)|running|created|exited' | head -1)"
hyperxl rm -f early >/dev/null && echo "early_removed=yes"
# A reboot has no refill under way: the one the taken VM's watcher may have started
# ends first (quiet for 1.5 s), or it boots a pool VM after the domains were destroyed.
quiet=0; for t in $(seq 600); do
    if ps -o args | grep -q '[p]ool fill'; then quiet=0; else quiet=$((quiet + 1)); [ $quiet -ge 3 ] && break; fi
    sleep 0.5; done
for d in $(xl list | awk '/^hyperxl-pool-/ {{print $1}}'); do xl destroy $d; done
echo "left=$(xl list | grep -c '^hyperxl-pool-')"
echo "refill_msg=$(hyperxl system reconcile | grep -c 'pool: refilling')"
settle 1 && echo "refilled=yes"
echo "pool_domains=$(xl list | grep -c '^hyperxl-pool-')"
hyperxl stop "$(hyperxl pool ls -q)" >/dev/null && echo "pool_stopped=yes"
echo "after_stop=$(xl list | grep -c '^hyperxl-pool-')"
hyperxl pool fill >/dev/null && settle 1 && echo "refilled_again=yes""#
    );
    // A refill killed with -9 halfway through a boot; then `pool drain`.
    let kill = format!(
        r#"{settle}
settle 1 && echo "settled=yes"
hyperxl pool fill --size 3 -m 64m > /dev/null 2>&1 &
fill=$!
for t in $(seq 300); do hyperxl pool ls | awk '$4 == "booting"' | grep -q . && break; sleep 0.1; done
kill -9 $fill; wait $fill 2>/dev/null
echo "killed=yes"
hyperxl pool ls
hyperxl pool drain >/dev/null || exit 1
echo "domains=$(xl list | tail -n +2 | wc -l)"
echo "pool_left=$(hyperxl pool ls -q | wc -l)"
echo "loops=$(losetup -a | wc -l)"
echo "records=$(ls $HYPERXL_STATE_DIR/vms | wc -l)"
echo "shapes=$(hyperxl pool ls | tail -n +2 | wc -l)""#
    );
    let mut batch = Batch::new();
    batch
        .add(&image, "/images/demo.tar")
        .step("fill", &fill)
        .step("runs", &runs)
        .step("devices", &devices)
        .step("reboot", &reboot)
        .step("kill", &kill);
    let run = batch.run().expect("test host runs the batch");

    let f = &run["fill"].assert_success("fill").stdout;
    eprintln!("pool: fill\n{f}");
    assert_eq!(value(f, "ready="), "2", "{f}");
    assert_eq!(value(f, "shape="), "pv-64m-1cpu 2 2", "{f}");
    assert_eq!(value(f, "ps_default="), "0", "pooled VMs are nobody's: {f}");
    assert_eq!(value(f, "ps_pool="), "2", "{f}");
    assert_eq!(value(f, "pool_domains="), "2", "{f}");

    let r = &run["runs"].assert_success("runs").stdout;
    eprintln!("pool: runs\n{r}");
    let before: Vec<String> = value(r, "pooled_before=")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(before.len(), 2, "{r}");
    let domids: Vec<String> = (1..=3).map(|i| value(r, &format!("domid{i}="))).collect();
    for (i, d) in domids.iter().enumerate() {
        let n = i + 1;
        assert!(!d.is_empty(), "run {n} had no domain: {r}");
        assert_eq!(value(r, &format!("rc{n}=")), "0", "{r}");
        assert_eq!(value(r, &format!("app{n}=")), "1", "{r}");
        assert_eq!(
            value(r, &format!("boot_lines{n}=")),
            "0",
            "run {n} showed the pooled VM's boot: {r}"
        );
    }
    // Each run in a domain of its own; the first two in the pooled ones.
    let mut unique = domids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{r}");
    for n in [1, 2] {
        assert!(before.contains(&domids[n - 1]), "run {n} booted cold: {r}");
        assert_eq!(value(r, &format!("received{n}=")), "1", "{r}");
    }
    // The third took a refilled VM or booted cold (no waiting): either way a fresh one.
    assert_eq!(value(r, "settled="), "yes", "the pool did not refill: {r}");
    let after = value(r, "pooled_after=");
    assert_eq!(after.split_whitespace().count(), 2, "{r}");
    for d in &domids {
        assert!(!after.split_whitespace().any(|a| a == d), "{r}");
    }
    assert_eq!(value(r, "pool_domains="), "2", "{r}");
    assert_eq!(value(r, "records="), "2", "only the pooled VMs: {r}");

    let d = &run["devices"].assert_success("devices").stdout;
    eprintln!("pool: devices\n{d}");
    assert_eq!(value(d, "web_domid="), value(d, "pvh_pooled="), "{d}");
    assert_eq!(value(d, "from="), "1", "{d}");
    assert_eq!(value(d, "page="), "hello-from-pool", "{d}");
    assert_eq!(value(d, "volume="), "kept", "{d}");
    assert_eq!(value(d, "eth0="), "up", "{d}");
    assert_eq!(value(d, "web_boot_lines="), "0", "{d}");
    assert_eq!(value(d, "web_exit="), "143", "{d}");
    assert_eq!(value(d, "reused="), "kept", "{d}");

    let b = &run["reboot"].assert_success("reboot").stdout;
    eprintln!("pool: reboot\n{b}");
    assert_eq!(value(b, "early_taken="), "1", "{b}");
    // No app runs unwatched. Killed before its watcher existed, the taken VM never
    // starts and the next command destroys it; killed a moment later (the watcher was
    // spawned: a slower poll of `xl domid` under load), it runs watched. Either is
    // right; a domain left with no watcher, or a VM reported unwatched, is not.
    let status = value(b, "early_status=");
    if value(b, "early_domain=") == "0" {
        assert_eq!(value(b, "early_exited="), "1", "{b}");
        assert_eq!(status, "exited", "{b}");
    } else {
        assert_eq!(status, "running", "the taken VM outlived its run: {b}");
    }
    assert_eq!(value(b, "early_removed="), "yes", "{b}");
    assert_eq!(value(b, "left="), "0", "{b}");
    assert_eq!(value(b, "refill_msg="), "1", "{b}");
    assert_eq!(value(b, "refilled="), "yes", "{b}");
    assert_eq!(value(b, "pool_domains="), "1", "{b}");
    assert_eq!(value(b, "pool_stopped="), "yes", "{b}");
    assert_eq!(value(b, "after_stop="), "0", "{b}");
    assert_eq!(value(b, "refilled_again="), "yes", "{b}");

    let k = &run["kill"].assert_success("kill").stdout;
    eprintln!("pool: kill\n{k}");
    assert_eq!(value(k, "settled="), "yes", "{k}");
    assert_eq!(value(k, "killed="), "yes", "{k}");
    assert_eq!(value(k, "domains="), "1", "only Domain-0: {k}");
    assert_eq!(value(k, "pool_left="), "0", "{k}");
    assert_eq!(value(k, "loops="), "0", "{k}");
    assert_eq!(value(k, "records="), "0", "{k}");
    assert_eq!(value(k, "shapes="), "0", "{k}");
}
