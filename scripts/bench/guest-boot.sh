#!/bin/sh
# Runs inside the test host's dom0 (see scripts/bench-guest). For each round and each
# (kernel, mode), boots a paused guest, unpauses it and measures the time until the app's
# first line (APP-START) appears on its console: HyperKernel + hyperstart-pv against
# Debian's stock kernel + a busybox initramfs that loads the blkfront/squashfs modules.
# Prints "kernel mode ms" lines. Times come from /proc/uptime (10 ms resolution).
set -u
rounds=${1:-3}
now_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }

# Baseline initramfs: Debian's modules, busybox, an /init doing what hyperstart-pv does.
g=/tmp/debinit; mkdir -p $g/bin $g/lib $g/proc $g/sys $g/dev $g/mnt
cp /hx/debian/busybox $g/bin/busybox
for m in xen-blkfront squashfs; do cp /hx/debian/modules/$m.ko $g/lib/; done
cat > $g/init <<'EOI'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc; /bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox insmod /lib/squashfs.ko; /bin/busybox insmod /lib/xen-blkfront.ko
while [ ! -b /dev/xvda ]; do /bin/busybox usleep 10000; done
/bin/busybox mount -o ro -t squashfs /dev/xvda /mnt
exec /bin/busybox chroot /mnt /bin/sh -c 'echo APP-START'
EOI
chmod +x $g/init
(cd $g && find . | cpio -o -H newc 2>/dev/null) > /tmp/debinit.cpio

spec='{"version":1,"args":["/bin/sh","-c","echo APP-START"],"env":["PATH=/bin"]}'
boot() { # kernel mode
    k=$1 t=$2 n=bench-$1-$2
    if [ "$k" = hyper ]; then kern=/hx/guest/vmlinuz rd=/hx/guest/initramfs.cpio; mem=64
    else kern=/hx/debian/vmlinuz rd=/tmp/debinit.cpio; mem=256; fi
    printf 'name="%s"\ntype="%s"\nkernel="%s"\nramdisk="%s"\nextra="console=hvc0 quiet"\nmemory=%s\ndisk=["format=raw,vdev=xvda,access=ro,target=/images/rootfs.squashfs"]\non_poweroff="destroy"\non_crash="destroy"\n' \
        "$n" "$t" "$kern" "$rd" "$mem" > /tmp/$n.cfg
    rm -f /var/log/xen/console/guest-$n.log
    xl create -p /tmp/$n.cfg >/dev/null 2>&1 || { echo "$k $t FAILED-create"; return; }
    id=$(xl domid $n)
    xenstore-write /local/domain/$id/hyperxl/spec "$spec"
    xenstore-chmod -r /local/domain/$id/hyperxl n0 r$id
    s=$(now_ms); xl unpause $n
    i=0
    until grep -q APP-START /var/log/xen/console/guest-$n.log 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 3000 ] && break; usleep 10000
    done
    e=$(now_ms)
    echo "$k $t $((e - s))"
    xl destroy $n 2>/dev/null
}
# Warm up (the first xl creates in a fresh host are slower for every kernel).
boot hyper pv >/dev/null; boot debian pv >/dev/null
r=0
while [ $r -lt "$rounds" ]; do
    for t in pvh pv; do boot hyper $t; boot debian $t; done
    r=$((r + 1))
done
