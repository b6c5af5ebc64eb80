//! The Xen test host itself: real Xen 4.17 boots, `xl` works, PV and PVH guests boot
//! with a read-only disk, and `xen-testhost run` reports a command's own status.

use std::fs;
use std::process::Command;

use hyperxl_e2e::{repo_root, Batch};

/// Builds, inside dom0, an initramfs for Debian's kernel (busybox plus the blkfront
/// and ext4 modules) whose /init mounts /dev/xvda read-only and prints a file of it.
const GUEST_INITRAMFS: &str = r#"
set -eu
g=/tmp/ginit
mkdir -p $g/bin $g/lib $g/proc $g/sys $g/dev $g/mnt
cp /hx/debian/busybox $g/bin/busybox
mods="crc32c_generic crc16 mbcache jbd2 ext4 xen-blkfront"
for m in $mods; do cp /hx/debian/modules/$m.ko $g/lib/; done
cat > $g/init <<EOI
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $mods; do insmod /lib/\$m.ko; done
i=0; while [ ! -b /dev/xvda ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
mount -o ro -t ext4 /dev/xvda /mnt && echo "GUEST-READ: \$(cat /mnt/hello.txt)"
echo "GUEST-TYPE: \$(cat /sys/hypervisor/guest_type)"
touch /mnt/written 2>/dev/null || echo "GUEST-RO: yes"
poweroff -f
EOI
chmod +x $g/init
cd $g && find . | cpio -o -H newc > /tmp/ginit.cpio 2>/dev/null
"#;

/// Boots one guest of `kind` (pv or pvh) with `xl create` and waits until it is gone.
fn boot_guest(kind: &str) -> String {
    format!(
        r#"
set -eu
cat > /tmp/{kind}.cfg <<EOC
name="e2e-{kind}"
type="{kind}"
kernel="/hx/debian/vmlinuz"
ramdisk="/tmp/ginit.cpio"
extra="console=hvc0 quiet"
memory=256
vcpus=1
disk=['format=raw,vdev=xvda,access=ro,target=/images/ro.img']
on_poweroff="destroy"
on_crash="destroy"
EOC
xl create /tmp/{kind}.cfg
i=0
while xl domid e2e-{kind} >/dev/null 2>&1; do
    i=$((i+1)); [ $i -lt 600 ] || {{ echo "e2e-{kind} still running" >&2; exit 1; }}
    sleep 0.5
done
cat /var/log/xen/console/guest-e2e-{kind}.log
"#
    )
}

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn xen_417_boots_with_hvm_caps_and_guests_boot_pv_and_pvh() {
    let disk_dir = tempfile::tempdir().unwrap();
    let tree = disk_dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("hello.txt"), "hello from the read-only disk\n").unwrap();
    let img = disk_dir.path().join("ro.img");
    let mkfs = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("8M")
        .output()
        .expect("mke2fs runs");
    assert!(mkfs.status.success(), "mke2fs: {mkfs:?}");

    let mut batch = Batch::new();
    batch
        .add(&img, "/images/ro.img")
        .step("info", "xl info")
        .step("initramfs", GUEST_INITRAMFS)
        .step("pv", &boot_guest("pv"))
        .step("pvh", &boot_guest("pvh"))
        .step("list", "xl list")
        .step("loops", "losetup -a");
    let run = batch.run().expect("test host runs the batch");

    let info = &run["info"].assert_success("info").stdout;
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| panic!("xl info has no {name}:\n{info}"))
    };
    assert_eq!(field("xen_major"), "4");
    assert_eq!(field("xen_minor"), "17");
    let caps = field("virt_caps");
    assert!(
        caps.split_whitespace().any(|c| c == "hvm"),
        "virt_caps: {caps}"
    );

    run["initramfs"].assert_success("initramfs");
    for (step, kind) in [("pv", "PV"), ("pvh", "PVH")] {
        let console = &run[step].assert_success(step).stdout;
        // Console lines end in \r\n.
        let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
        let has = |line: &str| lines.contains(&line);
        assert!(
            has("GUEST-READ: hello from the read-only disk"),
            "{step} console:\n{console}"
        );
        assert!(
            has(&format!("GUEST-TYPE: {kind}")),
            "{step} console:\n{console}"
        );
        assert!(
            has("GUEST-RO: yes"),
            "{step} wrote to its read-only disk:\n{console}"
        );
    }
    // Only dom0 is left, and the hotplug script released its loop devices.
    let list = &run["list"].assert_success("list").stdout;
    let domains: Vec<&str> = list
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(domains.len(), 1, "domains left:\n{list}");
    assert!(domains[0].starts_with("Domain-0"), "{list}");
    assert_eq!(run["loops"].stdout.trim(), "", "loop devices left");
}

#[test]
#[ignore = "boots the Xen test host (scripts/test runs it)"]
fn run_exits_with_the_commands_status_and_keeps_streams_apart() {
    let out = Command::new(repo_root().join("scripts/xen-testhost"))
        .args(["run", "--no-build", "--", "sh", "-c"])
        .arg("echo to-stdout; echo to-stderr >&2; exit 42")
        .output()
        .expect("xen-testhost runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(42), "stderr:\n{stderr}");
    assert_eq!(stdout, "to-stdout\n");
    assert!(stderr.starts_with("to-stderr\n"), "stderr:\n{stderr}");
}

#[test]
fn usage_errors_exit_125_without_booting() {
    let out = Command::new(repo_root().join("scripts/xen-testhost"))
        .args([
            "run",
            "--no-build",
            "--add",
            "/nonexistent/file",
            "--",
            "true",
        ])
        .output()
        .expect("xen-testhost runs");
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no such file or directory: /nonexistent/file"),
        "{stderr}"
    );
}
