#!/usr/bin/env bash
# Runs inside the test host's dom0 (see scripts/bench-run), under bash (for its
# microsecond clock, $EPOCHREALTIME). Loads the demo image from /images/demo.tar, then,
# after one warm-up of each, times ROUNDS interleaved pairs of
#   hx  `hyperxl run --rm demo true` (HYPERXL_TIMINGS=1: its phases too)
#   xl  `xl create -p` of the same kernel, initramfs, cmdline, memory and rootfs disk, the
#       spec written to xenstore, `xl unpause`, until the domain is gone (xl's own monitor
#       destroys it on poweroff; the disk goes through Xen's bash `block` hotplug script)
# then the disk's hotplug step (hyperxl-block against Xen's bash block script) and the
# smallest --memory at which the demo image still runs.
# Each round also times the same runs with a ready VM in the pool (`hp`; `hxf`/`hpf`: to
# the first output line of `echo`, cold and pooled; `xlf`: the xl route to the guest's
# `started` key; `xlo`: the xl route to the same `echo`'s line on the console `xl console`
# attaches to), the pool being refilled, untimed, before each pooled run.
# Prints "hx MS RC", "hp MS RC", "xl MS EXITCODE", "xlf MS", "xlo MS", "hxf MS", "hpf MS",
# "phase NAME MS" (one set per timed hx run, which begins with "phase-run"; "wphase"
# after "phase-warm" for hp), "gstep NAME MS" (the guest init's steps of a timed hx
# run), "mem MIB ok|fail" lines; diagnostics go to stderr.
set -u
rounds=${1:-5}
# Times are $EPOCHREALTIME without its point, in microseconds (a $(...) would cost a fork).
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b - a) / 1000}'; }

hyperxl load -i /images/demo.tar >/dev/null || { echo "hyperxl load failed" >&2; exit 1; }

# One hyperxl run: prints "hx MS RC" and, with $1 = timed, its phases and the guest
# init's steps ("gstep NAME MS": the first, `kernel`, from the kernel's start to the
# init; each other from the step before).
hx() {
    local s e rc
    s=${EPOCHREALTIME//[.,]/}
    HYPERXL_TIMINGS=guest hyperxl run --rm demo true >/tmp/hx.out 2>/tmp/hx.err
    rc=$?
    e=${EPOCHREALTIME//[.,]/}
    echo "hx $(ms "$s" "$e") $rc"
    [ "$rc" = 0 ] || { echo "hyperxl run failed ($rc):" >&2; cat /tmp/hx.out /tmp/hx.err >&2; }
    if [ "${1:-}" = timed ]; then
        echo phase-run
        awk '$1 == "hyperxl-timing:" {print "phase", $2, $3}' /tmp/hx.err
        awk '$1 == "hyperxl-guest-timing:" {printf "gstep %s %.1f\n", $2, $3 - prev; prev = $3}' /tmp/hx.err
    fi
}

# The spec hyperxl gives the demo image running CMD...: a run kept (a warm-up of
# hyperxl too) until its recorded spec is read, which is what xl hands the guest.
spec_of() {
    local f
    hyperxl run --name specsrc demo "$@" >/dev/null 2>/tmp/hx.err || cat /tmp/hx.err >&2
    f=$(find "$HYPERXL_STATE_DIR/vms" -name spec.json | head -n1)
    [ -n "$f" ] || { echo "no spec.json under $HYPERXL_STATE_DIR/vms" >&2; exit 1; }
    cat "$f"
    hyperxl rm -f specsrc >/dev/null 2>&1
}
spec=$(spec_of true) || exit 1
spec_echo=$(spec_of echo first) || exit 1   # for the xl route's first output line
disk=$(hyperxl image disk demo) || { echo "hyperxl image disk demo failed" >&2; exit 1; }
echo "spec: $spec" >&2
echo "disk: $disk" >&2

# The kernel command line exactly as hyperxl boots its guests.
cmdline=$(hyperxl config demo true | sed -n 's/^cmdline = "\(.*\)"$/\1/p')
[ -n "$cmdline" ] || { echo "no cmdline in hyperxl config's output" >&2; exit 1; }
echo "cmdline: $cmdline" >&2

cat > /tmp/bench-xl.cfg <<EOF
name="bench-xl"
type="pvh"
kernel="$HYPERXL_GUEST_DIR/vmlinuz"
ramdisk="$HYPERXL_GUEST_DIR/initramfs.cpio"
cmdline="$cmdline"
memory=128
vcpus=1
disk=['format=raw, vdev=xvda, access=ro, target=$disk']
on_poweroff="destroy"
on_crash="destroy"
EOF

# The xl route's build: `xl create -p` of bench-xl, SPEC written where the init reads it
# (readable, not writable, by the guest). Sets $domid (no $(...): a fork in the timed
# path); fails with xl's error.
xl_create() {
    if ! xl create -p /tmp/bench-xl.cfg >/dev/null 2>/tmp/xl.err; then
        echo "xl create failed:" >&2; cat /tmp/xl.err >&2; return 1
    fi
    domid=$(xl domid bench-xl)
    xenstore-write "/local/domain/$domid/hyperxl/spec" "$1"
    xenstore-chmod -r "/local/domain/$domid/hyperxl" n0 "r$domid"
}

# One xl run: prints "xl MS EXITCODE" (EXITCODE as the guest reported it, or "none").
# The wait is a xenstore watch, not a poll: each xenstore tool costs ~60 ms of dom0's one
# emulated CPU, which a polling loop would take from the guest.
xl_run() {
    local s e f="" domid code="" path wfd wpid
    s=${EPOCHREALTIME//[.,]/}
    xl_create "$spec" || { echo "xl 0 create-failed"; return; }
    coproc W { exec xenstore-watch "/local/domain/$domid"; }
    wpid=$W_PID; exec {wfd}<&"${W[0]}"
    xl unpause bench-xl
    # The watch fires once when set, on every write below the domain's path, and on its
    # removal (the last step of the destroy xl's own monitor does on poweroff).
    while read -r -t 300 path <&"$wfd"; do
        case $path in
            "/local/domain/$domid/data/hyperxl/started")
                [ -n "${f:-}" ] || { f=${EPOCHREALTIME//[.,]/}; echo "xlf $(ms "$s" "$f")" >&3; } ;;
            "/local/domain/$domid/data/hyperxl/exit-code") code=$(xenstore-read "$path" 2>/dev/null) ;;
            "/local/domain/$domid") xenstore-exists "$path" || break ;;
        esac
    done
    e=${EPOCHREALTIME//[.,]/}
    exec {wfd}<&-; kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null
    xl list bench-xl >/dev/null 2>&1 && { echo "xl: bench-xl still there, destroying" >&2; xl destroy bench-xl; }
    echo "xl $(ms "$s" "$e") ${code:-none}"
    [ "$code" = 0 ] || tail -n 20 /var/log/xen/console/guest-bench-xl.log >&2 2>/dev/null
}

# The xl route's first output: the same VM with the spec of `echo first`, until the line
# is read from its console: the tty xenconsoled made for it (the one `xl console` and
# `xl create -c` attach to), opened raw before `xl unpause`, as hyperxl opens it. Then
# waits, untimed, until xl's monitor has destroyed the domain. Prints "xlo MS".
xl_first_line() {
    local s e domid tty="" fd line
    s=${EPOCHREALTIME//[.,]/}
    xl_create "$spec_echo" || return
    for _ in $(seq 100); do
        tty=$(xenstore-read "/local/domain/$domid/console/tty" 2>/dev/null) && [ -n "$tty" ] && break
        sleep 0.05
    done
    if [ -z "$tty" ] || ! stty raw -echo <"$tty"; then
        echo "no console tty for bench-xl" >&2; xl destroy bench-xl; return
    fi
    exec {fd}<"$tty"
    xl unpause bench-xl
    while IFS= read -r -t 300 line <&"$fd"; do
        [ "${line%$'\r'}" = first ] && { e=${EPOCHREALTIME//[.,]/}; echo "xlo $(ms "$s" "$e")"; break; }
    done
    exec {fd}<&-
    for _ in $(seq 600); do xl list bench-xl >/dev/null 2>&1 || break; sleep 0.2; done
}

# First output: `hyperxl run --rm demo echo first` until its line is on our stdout.
# Prints "$1 MS" (hxf: cold, hpf: from the pool).
first_line() {
    local s e line
    s=${EPOCHREALTIME//[.,]/}
    while IFS= read -r line; do
        [ "$line" = first ] && { e=${EPOCHREALTIME//[.,]/}; echo "$1 $(ms "$s" "$e")"; }
    done < <(hyperxl run --rm demo echo first 2>/dev/null)
}

# The pool of the default shape (PVH, 128 MiB): size 1 and ready, no refill running;
# or none (the cold runs must not find one).
pool_ready() {
    hyperxl pool fill --size 1 >/dev/null || { echo "pool fill failed" >&2; return 1; }
    for _ in $(seq 600); do
        [ "$(hyperxl pool ls | awk '$4 == "ready"' | wc -l)" = 1 ] && ! ps -o args | grep -q '[p]ool fill' && return 0
        sleep 0.5
    done
    echo "the pool did not refill" >&2
}
pool_off() { hyperxl pool fill --size 0 >/dev/null; }

# One run from the pool: prints "hp MS RC" and its phases (as hx, "phase-warm").
hp() {
    local s e rc
    s=${EPOCHREALTIME//[.,]/}
    HYPERXL_TIMINGS=1 hyperxl run --rm demo true >/tmp/hp.out 2>/tmp/hp.err
    rc=$?
    e=${EPOCHREALTIME//[.,]/}
    echo "hp $(ms "$s" "$e") $rc"
    [ "$rc" = 0 ] || { echo "pooled run failed ($rc):" >&2; cat /tmp/hp.out /tmp/hp.err >&2; }
    echo phase-warm
    awk '$1 == "hyperxl-timing:" {print "wphase", $2, $3}' /tmp/hp.err
}

# Each timed run starts on a quiet dom0: 2 s after the work before it returned. A run's
# end leaves work behind in dom0 (blkback's and netback's removal of its devices on their
# xenwatch thread, the pool's refill or drain), which would otherwise land in the next
# run's time, whichever route that is. The same for every route.
settle() { sleep 2; }

exec 3>&1
xl_run >/dev/null 3>/dev/null   # warm-ups
xl_first_line >/dev/null
r=0
while [ $r -lt "$rounds" ]; do
    pool_off
    settle; hx timed
    settle; first_line hxf
    settle; xl_run
    settle; xl_first_line
    pool_ready && settle && hp
    pool_ready && settle && first_line hpf
    r=$((r + 1))
done
pool_off

# The disk's hotplug step: hyperxl-block against Xen's bash `block` script on the same
# loop device (hyperxl falls back to it when hyperxl-block is not beside it), interleaved.
# Prints "hotplug hyperxl-block|stock-block MS": the domain-build phase of each run.
block=$(dirname "$(readlink -f "$(command -v hyperxl)")")/hyperxl-block
for i in $(seq "$rounds"); do
    for how in hyperxl-block stock-block; do
        [ $how = stock-block ] && mv "$block" "$block.off"
        settle
        HYPERXL_TIMINGS=1 hyperxl run --rm demo true 2>&1 >/dev/null |
            awk -v h=$how '$2 == "domain-build" {print "hotplug", h, $3}'
        [ $how = stock-block ] && mv "$block.off" "$block"
    done
done

# The smallest memory the demo image still runs in (descending; stop at the first failure).
# hyperxl refuses less than 24m (vm::spec::MIN_MEMORY_MIB): at 20 MiB a PV domain cannot
# be built and a PVH guest runs out of memory while booting.
for m in 64 48 40 32 24; do
    if timeout 300 hyperxl run --rm -m "${m}m" demo echo ok 2>/tmp/mem.err | grep -qx ok; then
        echo "mem $m ok"
    else
        echo "mem $m fail"
        { echo "at -m ${m}m:"; tail -n 5 /tmp/mem.err; } >&2
        break
    fi
done
exit 0
