#!/usr/bin/env bash
# Runs inside the test host's dom0 (see scripts/bench-idle). For each build (BUILD=DIR
# holding hyperxl, hyperxl-block, hyperxl-vif), starts COUNT idle 32 MiB VMs (of type
# IDLE_TYPE, pvh by default) with
# `run -d`, lets them settle, then samples for SECS seconds the CPU time of every
# hyperxl process, of xenstored and of dom0 as a whole, and the PSS of the hyperxl
# processes. Prints:
#   start LABEL N MS              the N-th `run -d`
#   cpu LABEL WHAT PERCENT        over the sample, % of one CPU (WHAT: hyperxl, xenstored,
#                                 dom0, and guests: the idle guests themselves, xl's Time)
#   pss LABEL KIB_PER_VM
set -u
count=${1:-8}
secs=${2:-30}
shift 2
export HYPERXL_DEFAULT_NETWORK=none
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
ticks() { # the utime+stime of the given pids, summed
    local t=0 p
    for p in "$@"; do
        [ -r /proc/$p/stat ] || continue
        t=$((t + $(sed 's/^.*) //' /proc/$p/stat | awk '{print $12 + $13}')))
    done
    echo $t
}
guests() { xl list | awk 'NR > 2 {s += $6} END {printf "%.1f", s}'; }
dom0_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
pids_of() { for p in /proc/[0-9]*; do [ "$(readlink $p/exe 2>/dev/null)" = "$1" ] && echo ${p#/proc/}; done; }
for spec in "$@"; do
    label=${spec%%=*} dir=${spec#*=}
    "$dir/hyperxl" load -i /images/demo.tar >/dev/null || exit 1
    for i in $(seq "$count"); do
        s=${EPOCHREALTIME//[.,]/}
        "$dir/hyperxl" run -d -m 32m --type "${IDLE_TYPE:-pvh}" --name "idle$i" demo sh -c "echo up $i; exec sleep 100000" >/dev/null || echo "start $label $i failed"
        e=${EPOCHREALTIME//[.,]/}
        echo "start $label $i $(( (e - s) / 1000 ))"
    done
    sleep 10
    hx=$(pids_of "$(readlink -f "$dir/hyperxl")")
    xs=$(pidof xenstored)
    h0=$(ticks $hx) x0=$(ticks $xs) d0=$(dom0_busy) g0=$(guests)
    sleep "$secs"
    h1=$(ticks $hx) x1=$(ticks $xs) d1=$(dom0_busy) g1=$(guests)
    pct() { awk -v t="$1" -v s="$secs" -v hz="$hz" 'BEGIN {printf "%.2f", 100 * t / hz / s}'; }
    echo "cpu $label hyperxl $(pct $((h1 - h0)))"
    echo "cpu $label xenstored $(pct $((x1 - x0)))"
    echo "cpu $label dom0 $(pct $((d1 - d0)))"
    echo "cpu $label guests $(awk -v a="$g0" -v b="$g1" -v s="$secs" 'BEGIN {printf "%.2f", 100 * (b - a) / s}')"
    pss=0
    for p in $hx; do pss=$((pss + $(awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0))); done
    echo "pss $label $((pss / count))"
    echo "procs $label $(echo $hx | wc -w)"
    for i in $(seq "$count"); do "$dir/hyperxl" rm -f "idle$i" >/dev/null; done
done
