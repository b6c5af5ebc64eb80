#!/usr/bin/env bash
# Runs inside the test host's dom0 (see scripts/bench-volume), under bash ($EPOCHREALTIME).
# Prints, ROUNDS each, interleaved:
#   boot none|volume MS       `hyperxl run --rm demo true` without and with `-v bench:/v`
#   write guest|dom0 MB/S     64 MiB written sequentially with fsync (busybox dd
#                             conv=fsync): by a guest to a volume, and by dom0 to a file
#                             on the same backing filesystem (/hx)
set -u
rounds=${1:-5}
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b - a) / 1000}'; }
hyperxl load -i /images/demo.tar >/dev/null || { echo "hyperxl load failed" >&2; exit 1; }
hyperxl volume create --size 256m bench >/dev/null || exit 1
hyperxl run --rm -v bench:/v demo true >/dev/null 2>&1   # warm-up: disk built, caches warm
boot() {
    local kind=$1 s e; shift
    s=${EPOCHREALTIME//[.,]/}
    hyperxl run --rm "$@" demo true >/dev/null 2>/tmp/b.err || { cat /tmp/b.err >&2; return; }
    e=${EPOCHREALTIME//[.,]/}
    echo "boot $kind $(ms "$s" "$e")"
}
for i in $(seq "$rounds"); do
    boot none
    boot volume -v bench:/v
done
# The guest times itself with /proc/uptime (centiseconds; its date has no sub-second
# precision); dom0 with $EPOCHREALTIME.
guest='rm -f /v/f; sync; read s x < /proc/uptime; dd if=/dev/zero of=/v/f bs=1M count=64 conv=fsync 2>/dev/null; read e x < /proc/uptime; echo elapsed $s $e'
mkdir -p /hx/bench
for i in $(seq "$rounds"); do
    hyperxl run --rm -u root -v bench:/v demo sh -c "$guest" |
        awk '$1 == "elapsed" && $3 > $2 {printf "write guest %.1f\n", 64 / ($3 - $2)}'
    rm -f /hx/bench/f; sync
    s=${EPOCHREALTIME//[.,]/}
    dd if=/dev/zero of=/hx/bench/f bs=1M count=64 conv=fsync 2>/dev/null
    e=${EPOCHREALTIME//[.,]/}
    awk -v a="$s" -v b="$e" 'BEGIN {printf "write dom0 %.1f\n", 64 / ((b - a) / 1e6)}'
done
rm -rf /hx/bench
hyperxl volume rm bench >/dev/null
