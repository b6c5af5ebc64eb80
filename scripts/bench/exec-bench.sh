#!/usr/bin/env bash
# Runs inside the test host's dom0 (see scripts/bench-exec), under bash ($EPOCHREALTIME).
# Prints, ROUNDS each, interleaved:
#   rt exec|run MS            `hyperxl exec ex true` into a running VM, beside
#                             `hyperxl run --rm demo true` (a whole VM) for scale
#   stream exec-pvh|exec-pv|console-pv MB/S
#                             bytes out of a guest: 100 MB through `exec -i VM cat` (in and
#                             back out, md5 checked), against an app writing 4 MB to its
#                             console (`run --rm`, the log and our stdout); the console
#                             flood runs PV (a PVH one freezes QEMU's TCG, see
#                             tests/tests/hardening.rs)
set -u
rounds=${1:-3}
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b - a) / 1000}'; }
mbs() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {printf "%.2f", n / ((b - a) / 1e6) / 1e6}'; }
now() { echo "${EPOCHREALTIME//[.,]/}"; }
hyperxl load -i /images/demo.tar >/dev/null || { echo "hyperxl load failed" >&2; exit 1; }
hyperxl run -d --name ex -m 64m demo sleep 1000000 >/dev/null || exit 1
hyperxl run -d --name expv --type pv -m 64m demo sleep 1000000 >/dev/null || exit 1
hyperxl exec ex true && hyperxl exec expv true || { echo "exec failed" >&2; exit 1; }
hyperxl run --rm demo true >/dev/null 2>&1   # warm-up
head -c 100000000 /dev/urandom > /tmp/big; want=$(md5sum < /tmp/big | cut -d' ' -f1)
for i in $(seq "$rounds"); do
    s=$(now); hyperxl exec ex true; e=$(now); echo "rt exec $(ms "$s" "$e")"
    s=$(now); hyperxl run --rm demo true >/dev/null 2>&1; e=$(now); echo "rt run $(ms "$s" "$e")"
done
for i in $(seq "$rounds"); do
    for vm in ex expv; do
        s=$(now); got=$(hyperxl exec -i $vm cat < /tmp/big | md5sum | cut -d' ' -f1); e=$(now)
        kind=exec-pvh; [ $vm = expv ] && kind=exec-pv
        if [ "$got" = "$want" ]; then echo "stream $kind $(mbs 100000000 "$s" "$e")"
        else echo "checksum mismatch through $vm: $got != $want" >&2; fi
    done
    s=$(now)
    n=$(hyperxl run --rm --type pv demo sh -c 'head -c 4000000 /dev/zero | tr "\0" A' | wc -c)
    e=$(now)
    echo "stream console-pv $(mbs "$n" "$s" "$e")"
done
hyperxl rm -f ex expv >/dev/null
