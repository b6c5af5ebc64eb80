//! Volumes in the Xen test host, through the real binary (issue 13): named volumes that
//! outlive VMs, one read-write user at a time, read-only sharing, data up to the last
//! sync after a VM is destroyed mid-write, anonymous volumes for an image's VOLUME,
//! read-only snapshots of dom0 directories (symlinks never followed on dom0),
//! `--read-only` and `--tmpfs`, a scratch disk for the writable layer, deployment
//! volumes kept by `down` and removed by `down --volumes`, bad input refused before
//! anything exists, and no loop device, mount or private file left behind.

use std::fs;

use hyperxl_e2e::{value, Batch};

/// `domains`: hyperxl domains in `xl list`; `vols`: volumes by name, one line.
const HELPERS: &str = r#"domains() { xl list | grep -c hyperxl-; }
vols() { hyperxl volume ls -q | tr '\n' ' ' | sed 's/ $//'; }
"#;

/// A database-like VM with a named volume (a counter of its starts) and the image's
/// anonymous volume, which must survive the restart its first run asks for.
const SHOP: &str = r#"name = "volshop"
[vm.db]
image = "demovol"
restart = "on-failure"
volumes = ["data:/var/lib/db"]
tmpfs = ["/run:size=1m"]
command = ["sh", "-c", """
n=$(cat /var/lib/db/starts 2>/dev/null || echo 0); n=$((n+1)); echo $n > /var/lib/db/starts; sync
if [ -e /var/lib/x/first ]; then echo anon-kept; else touch /var/lib/x/first; sync; echo first-run; exit 1; fi
echo starts=$n; echo ready; sleep 1000"""]
"#;

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn volumes_keep_data_and_stay_safe() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo.tar");
    hyperxl_e2e::demo::write_docker_save(&demo).expect("demo image");
    let demovol = dir.path().join("demovol.tar");
    hyperxl_e2e::demo::write_volume_image(&demovol).expect("demovol image");
    let cfg = dir.path().join("cfg");
    fs::create_dir(&cfg).unwrap();
    fs::write(cfg.join("shop.toml"), SHOP).unwrap();
    let step = |body: &str| format!("{HELPERS}{body}");

    let mut batch = Batch::new();
    batch
        .timeout(2400)
        .add(&demo, "/images/demo.tar")
        .add(&demovol, "/images/demovol.tar")
        .add(&cfg, "/hx/cfg")
        .step(
            "setup",
            r#"hyperxl load -i /images/demo.tar >/dev/null && hyperxl load -i /images/demovol.tar >/dev/null && echo ready"#,
        )
        .step(
            "named",
            &step(
                r#"hyperxl run --rm -u root -v data:/data demo sh -c 'echo persisted > /data/f; sync'
                echo "read=$(hyperxl run --rm -v data:/data demo cat /data/f)"
                echo "ls=$(hyperxl volume ls | grep '^data ' | tr -s ' ')"
                hyperxl run -d --name holder -v data:/data demo sleep 1000 >/dev/null || exit 1
                before=$(domains)
                hyperxl volume rm data 2>/tmp/e; echo "rm_in_use=$? $(cat /tmp/e)"
                hyperxl run --rm -v data:/data demo true 2>/tmp/e; echo "second_rw=$? $(cat /tmp/e)"
                hyperxl run --rm -v data:/data:ro demo true 2>/tmp/e; echo "ro_beside_rw=$? $(cat /tmp/e)"
                echo "domains_added=$(( $(domains) - before ))"
                hyperxl rm -f holder >/dev/null
                hyperxl volume rm data >/dev/null; echo "rm_after=$? [$(vols)]""#,
            ),
        )
        .step(
            "shared_ro",
            &step(
                r#"hyperxl volume create --size 32m shared >/dev/null || exit 1
                hyperxl run --rm -u root -v shared:/s demo sh -c 'echo shared-data > /s/x; sync'
                hyperxl run -d --name r1 -v shared:/s:ro demo sleep 1000 >/dev/null
                hyperxl run -d --name r2 --mount type=volume,source=shared,target=/s,readonly demo sleep 1000 >/dev/null
                echo "running=$(xl list | grep -c -e hyperxl-r1 -e hyperxl-r2)"
                hyperxl run --rm -u root -v shared:/s:ro demo sh -c 'echo "read=$(cat /s/x)"; echo w > /s/y 2>&1; echo "write_rc=$?"'
                hyperxl rm -f r1 r2 >/dev/null
                hyperxl volume rm shared >/dev/null"#,
            ),
        )
        .step(
            "crash",
            &step(
                r#"hyperxl run -d --name writer -u root -v crash:/d demo sh -c 'i=0; while :; do i=$((i+1)); echo $i >> /d/log; sync; echo synced $i; done' >/dev/null || exit 1
                for i in $(seq 120); do hyperxl logs writer | grep -q 'synced 20' && break; sleep 1; done
                hyperxl kill writer >/dev/null
                last=$(hyperxl logs writer | grep '^synced' | tail -1 | cut -d' ' -f2)
                hyperxl rm writer >/dev/null
                found=$(hyperxl run --rm -v crash:/d demo tail -1 /d/log)
                echo "last_synced=$last found=$found"
                [ -n "$last" ] && [ "$found" -ge "$last" ] && echo "durable=yes"
                hyperxl volume rm crash >/dev/null"#,
            ),
        )
        .step(
            "anonymous",
            &step(
                r#"hyperxl run --name av demovol sh -c 'echo x > /var/lib/x/f && mount | grep -c " /var/lib/x type ext4"'
                echo "anon=$(hyperxl volume ls -q | grep -c '^[0-9a-f]\{32\}$')"
                hyperxl rm -v av >/dev/null
                echo "after_rm_v=$(hyperxl volume ls -q | grep -c '^[0-9a-f]\{32\}$')"
                hyperxl run --rm demovol true
                echo "after_run_rm=$(hyperxl volume ls -q | grep -c '^[0-9a-f]\{32\}$')""#,
            ),
        )
        .step(
            "hostdir",
            &step(
                r#"mkdir -p /tmp/conf/sub && echo conf-a > /tmp/conf/a && chmod 640 /tmp/conf/a
                echo dom0-only > /tmp/dom0-secret && ln -s /tmp/dom0-secret /tmp/conf/link
                hyperxl run --rm -u root -v /tmp/conf:/conf:ro demo sh -c 'cat /conf/a; stat -c %a /conf/a; readlink /conf/link; cat /conf/link 2>/dev/null || echo no-such-file-in-guest; echo x 2>/dev/null > /conf/new; echo "write_rc=$?"'
                hyperxl run --rm -v /tmp/conf:/conf demo true 2>/tmp/e; echo "rw=$? $(cat /tmp/e)""#,
            ),
        )
        .step(
            "readonly_tmpfs",
            &step(
                r#"hyperxl run --rm -u root --read-only --tmpfs /tmp demo sh -c 'echo x 2>/dev/null > /f; echo "root_rc=$?"; touch /tmp/ok && echo tmp_ok'
                hyperxl run --rm -u root --read-only --mount type=tmpfs,target=/tmp demo sh -c 'echo x > /f' 2>&1 | grep -o 'Read-only file system'
                hyperxl run --rm -u root --tmpfs /x:size=1m demo sh -c 'dd if=/dev/zero of=/x/big bs=1k count=2048 2>&1 | grep -o "No space left on device"; echo "dd_rc=$?"'"#,
            ),
        )
        .step(
            "scratch",
            &step(
                r#"hyperxl run --rm -m 32m -u root --storage-opt size=512m demo sh -c 'dd if=/dev/zero of=/big bs=1M count=200 2>/dev/null && echo "scratch_wrote=$(( $(stat -c %s /big) >> 20 ))"'
                echo "scratch_rc=$?"
                hyperxl run --rm -m 32m -u root demo sh -c 'dd if=/dev/zero of=/big bs=1M count=200 2>&1 | grep -o "No space left on device"'
                echo "memory_rc=$?"
                echo "scratch_files=$(ls /hx/state/vms/*/scratch.ext4 2>/dev/null | wc -l)""#,
            ),
        )
        .step(
            "deploy",
            &step(
                r#"hyperxl up -d -f /hx/cfg/shop.toml >/dev/null || exit 1
                ready() { for i in $(seq 150); do hyperxl logs volshop-db 2>/dev/null | grep -q "^ready" && return 0; sleep 1; done; return 1; }
                ready || echo never-ready
                hyperxl logs volshop-db | grep -e first-run -e anon-kept -e starts=
                echo "vols=$(vols)" | sed 's/[0-9a-f]\{32\}/ANON/'
                hyperxl down -f /hx/cfg/shop.toml >/dev/null
                echo "kept=$(vols)" | sed 's/[0-9a-f]\{32\}/ANON/'
                hyperxl up -d -f /hx/cfg/shop.toml >/dev/null
                ready || echo never-ready-again
                hyperxl logs volshop-db | grep starts= | tail -1 | sed 's/^/again_/'
                hyperxl down --volumes -f /hx/cfg/shop.toml >/dev/null
                echo "after_down_v=[$(vols)]""#,
            ),
        )
        .step(
            "bad_input",
            &step(
                r#"before=$(domains); vms=$(ls /hx/state/vms | wc -l)
                try() { hyperxl run --rm "$@" demo true 2>/tmp/e; echo "rc=$? lines=$(wc -l < /tmp/e) $(cat /tmp/e)"; }
                try -v data:/d:bogus
                try -v ./conf:/d:ro
                try -v /no/such/dir:/d:ro
                try -v a/b:/d
                try -v /proc/self:/p:ro
                try -v data:/a -v data:/b
                try -v data:/d:ro --tmpfs /d/tmp
                try -v data:relative
                try --tmpfs /x:size=lots
                try --storage-opt size=1m
                try --mount type=nfs,target=/d
                hyperxl volume create --size 1m tiny 2>/tmp/e; echo "rc=$? lines=$(wc -l < /tmp/e) $(cat /tmp/e)"
                hyperxl volume create 'a/b' 2>/tmp/e; echo "rc=$? lines=$(wc -l < /tmp/e) $(cat /tmp/e)"
                echo "domains_added=$(( $(domains) - before )) vms_added=$(( $(ls /hx/state/vms | wc -l) - vms )) vols=[$(vols)]""#,
            ),
        )
        .step(
            "transfer",
            &step(
                r#"hyperxl volume create --size 64m src >/dev/null || exit 1
                hyperxl run --rm -u root -v src:/v demo sh -c 'mkdir -p /v/dir/sub && echo hello > /v/dir/f && chmod 640 /v/dir/f && ln -s dir/f /v/link && echo deep > /v/dir/sub/g && chown 1000:1000 /v/dir/sub/g && dd if=/dev/urandom of=/v/big bs=1k count=300 2>/dev/null; sync'
                (while :; do grep -c -e '^/dev/loop' -e /hx/state /proc/mounts; sleep 0.2; done > /tmp/mounts.log) & watcher=$!
                hyperxl volume export -o /tmp/src.tar src; echo "export_rc=$?"
                kill $watcher
                echo "dom0_mounts_max=$(sort -n /tmp/mounts.log | tail -1) samples=$(wc -l < /tmp/mounts.log)"
                echo "entries=$(tar tf /tmp/src.tar | sed 's,^\./,,; s,/$,,' | grep . | sort | tr '
' ' ')"
                hyperxl volume import --size 64m dst /tmp/src.tar; echo "import_rc=$?"
                cat /tmp/src.tar | hyperxl volume import --size 64m dst2; echo "stdin_rc=$?"
                list='cd /v && for f in dir dir/f dir/sub dir/sub/g big; do stat -c "%n %a %u %s %F" $f; done; stat -c "%n %u %F" link; readlink link; cat link; md5sum big; ls'
                a=$(hyperxl run --rm -u root -v src:/v:ro demo sh -c "$list")
                b=$(hyperxl run --rm -u root -v dst:/v:ro demo sh -c "$list")
                c=$(hyperxl run --rm -u root -v dst2:/v:ro demo sh -c "$list")
                echo "same=$([ "$a" = "$b" ] && [ "$a" = "$c" ] && echo yes || echo no)"
                echo "$b"; [ "$a" = "$b" ] || echo "src: $a"
                echo "streams=$(ls -a /hx/state/volumes | grep -c '^\.stream')"
                hyperxl volume export nosuch > /tmp/x.tar 2>/tmp/e; echo "missing=$? $(cat /tmp/e)"
                hyperxl volume rm src dst dst2 >/dev/null"#,
            ),
        )
        .step(
            "leftovers",
            r#"echo "loops=$(losetup -a | wc -l)"
            echo "domains=$(xl list | grep -c hyperxl-)"
            echo "dom0_mounts=$(grep -c -e /hx/state -e '^/dev/loop' /proc/mounts)"
            echo "private_files=$(ls /hx/state/vms/*/snapshot-* /hx/state/vms/*/scratch.ext4 2>/dev/null | wc -l)"
            echo "vms=$(ls /hx/state/vms | wc -l)""#,
        );
    let run = batch.run().expect("test host runs the batch");
    assert!(
        run["setup"]
            .assert_success("setup")
            .stdout
            .contains("ready"),
        "{}",
        run["setup"]
    );

    let named = &run["named"];
    let o = &named.stdout;
    assert_eq!(value(o, "read="), "persisted", "{named}");
    assert!(value(o, "ls=").starts_with("data 1.0GB"), "{named}");
    assert_eq!(
        value(o, "rm_in_use="),
        "125 hyperxl: volume \"data\" is in use by VM holder",
        "{named}"
    );
    assert_eq!(
        value(o, "second_rw="),
        "125 hyperxl: volume \"data\" is in use by VM holder",
        "{named}"
    );
    assert!(value(o, "ro_beside_rw=").starts_with("125 "), "{named}");
    assert_eq!(value(o, "domains_added="), "0", "{named}");
    assert_eq!(value(o, "rm_after="), "0 []", "{named}");

    let ro = &run["shared_ro"];
    assert_eq!(value(&ro.stdout, "running="), "2", "{ro}");
    assert_eq!(value(&ro.stdout, "read="), "shared-data", "{ro}");
    assert_eq!(value(&ro.stdout, "write_rc="), "1", "{ro}");

    let crash = &run["crash"];
    assert_eq!(value(&crash.stdout, "durable="), "yes", "{crash}");

    let anon = &run["anonymous"];
    let o = &anon.stdout;
    assert!(
        o.starts_with("1\n"),
        "the image's VOLUME is an ext4 mount: {anon}"
    );
    assert_eq!(value(o, "anon="), "1", "{anon}");
    assert_eq!(value(o, "after_rm_v="), "0", "{anon}");
    assert_eq!(value(o, "after_run_rm="), "0", "{anon}");

    let host = &run["hostdir"];
    let lines: Vec<&str> = host.stdout.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "conf-a",
            "640",
            "/tmp/dom0-secret",
            "no-such-file-in-guest",
            "write_rc=1"
        ],
        "{host}"
    );
    let rw = value(&host.stdout, "rw=");
    assert!(
        rw.starts_with("125 hyperxl: host directory /tmp/conf can only be mounted read-only"),
        "{host}"
    );

    let rt = &run["readonly_tmpfs"];
    assert_eq!(
        rt.stdout, "root_rc=1\ntmp_ok\nRead-only file system\nNo space left on device\ndd_rc=0\n",
        "{rt}"
    );

    let scratch = &run["scratch"];
    let o = &scratch.stdout;
    assert_eq!(value(o, "scratch_wrote="), "200", "{scratch}");
    assert_eq!(value(o, "scratch_rc="), "0", "{scratch}");
    assert!(
        o.contains("No space left on device\nmemory_rc=0"),
        "in memory: ENOSPC, and the VM is not killed: {scratch}"
    );
    assert_eq!(value(o, "scratch_files="), "0", "{scratch}");

    let dep = &run["deploy"];
    let o = &dep.stdout;
    assert!(o.contains("first-run\nanon-kept\nstarts=2\n"), "{dep}");
    assert_eq!(value(o, "vols="), "ANON volshop_data", "{dep}");
    assert_eq!(value(o, "kept="), "ANON volshop_data", "{dep}");
    assert_eq!(value(o, "again_starts="), "4", "{dep}");
    assert_eq!(value(o, "after_down_v="), "[]", "{dep}");

    let bad = &run["bad_input"];
    let expect = [
        "unknown option \"bogus\"",
        "a host directory must be an absolute path",
        "host directory /no/such/dir does not exist",
        "a host directory must be an absolute path",
        "cannot be snapshotted",
        "volume data is mounted twice",
        "inside the read-only mount /d",
        "invalid mount target \"relative\"",
        "invalid --tmpfs",
        "invalid --storage-opt",
        "invalid --mount",
        "invalid volume size \"1m\"",
        "invalid volume name \"a/b\"",
    ];
    let lines: Vec<&str> = bad.stdout.lines().collect();
    assert_eq!(lines.len(), expect.len() + 1, "{bad}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(
            line.starts_with("rc=125 lines=1 hyperxl: ") && line.contains(want),
            "{want:?} in {line:?}: {bad}"
        );
    }
    assert_eq!(
        value(&bad.stdout, "domains_added="),
        "0 vms_added=0 vols=[]",
        "{bad}"
    );

    let tr = &run["transfer"];
    let o = &tr.stdout;
    assert_eq!(value(o, "export_rc="), "0", "{tr}");
    let mounts = value(o, "dom0_mounts_max=");
    assert!(
        mounts.starts_with("0 samples=") && !mounts.ends_with("=0"),
        "no volume mounted on dom0 during the export: {tr}"
    );
    assert_eq!(
        value(o, "entries="),
        ". big dir dir/f dir/sub dir/sub/g link",
        "{tr}"
    );
    assert_eq!(value(o, "import_rc="), "0", "{tr}");
    assert_eq!(value(o, "stdin_rc="), "0", "{tr}");
    assert_eq!(value(o, "same="), "yes", "{tr}");
    for want in [
        "dir/f 640 0 6 regular file",
        "dir/sub/g 644 1000 5 regular file",
        "link 0 symbolic link",
        "big 644 0 307200 regular file",
        "\ndir/f\nhello\n",
    ] {
        assert!(o.contains(want), "{want:?}: {tr}");
    }
    assert_eq!(value(o, "streams="), "0", "{tr}");
    assert!(
        value(o, "missing=").starts_with("125 hyperxl: volume \"nosuch\" not found"),
        "{tr}"
    );

    let left = &run["leftovers"];
    assert_eq!(
        left.stdout, "loops=0\ndomains=0\ndom0_mounts=0\nprivate_files=0\nvms=0\n",
        "{left}"
    );
}
