#!/usr/bin/env bash
# Runs inside the test host's dom0 (see scripts/bench-net), under bash ($EPOCHREALTIME).
# Prints, ROUNDS each, interleaved:
#   boot net|none MS        `hyperxl run --rm demo true` with a network / --network none
#   started net|none MS     the same runs from start to the app started (their phases
#                           before `app`: what networking adds to a boot)
#   phase net|none NAME MS  its phases (HYPERXL_TIMINGS=1)
#   span net NAME MS        work beside the phases (the VM's nft run, during the build)
#   vif hyperxl-vif|vif-bridge MS   the domain-build phase (the vif's hotplug step runs in
#                           it) with hyperxl-vif, and with Xen's bash vif-bridge
#   tput veth|guest-out|guest-guest MB/S   100 MiB over TCP (busybox dd | nc): two dom0
#                           namespaces over veth; a guest to "the outside" namespace
#                           through the bridge, forwarding and NAT; a guest to a guest
set -u
rounds=${1:-5}
# The test host turns networking off by default; here it is what is measured.
export HYPERXL_DEFAULT_NETWORK=hyperxl
IP=/usr/sbin/ip
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b - a) / 1000}'; }
hyperxl load -i /images/demo.tar >/dev/null || { echo "hyperxl load failed" >&2; exit 1; }
hyperxl run --rm demo true >/dev/null 2>&1   # warm-up: disk built, network set up

# Prints "boot KIND MS" and "phase KIND NAME MS" (HYPERXL_TIMINGS) for one run.
boot() {
    local kind=$1 s e; shift
    s=${EPOCHREALTIME//[.,]/}
    HYPERXL_TIMINGS=1 hyperxl run --rm "$@" demo true >/dev/null 2>/tmp/b.err || { cat /tmp/b.err >&2; return; }
    e=${EPOCHREALTIME//[.,]/}
    echo "boot $kind $(ms "$s" "$e")"
    awk -v k="$kind" '$1 == "hyperxl-timing:" {print "phase", k, $2, $3}' /tmp/b.err
    awk -v k="$kind" '$1 == "hyperxl-timing-span:" {print "span", k, $2, $3}' /tmp/b.err
    # The issue's measure: from `run` to the app started (every phase before the app's).
    # Sums phases up to and including boot-to-started (the end's destroy, release and
    # teardown come after the app).
    awk -v k="$kind" '$1 == "hyperxl-timing:" && !done {t += $3; if ($2 == "boot-to-started") done = 1}
        END {printf "started %s %.1f\n", k, t}' /tmp/b.err
}
# Each boot 2 s after the last run ended: netback's removal of that run's vif goes on in
# dom0 (its xenwatch thread) after `run --rm` returned, and would land in the next boot.
for i in $(seq "$rounds"); do
    sleep 2
    boot net
    sleep 2
    boot none --network none
done

vif=$(dirname "$(readlink -f "$(command -v hyperxl)")")/hyperxl-vif
for i in $(seq "$rounds"); do
    for how in hyperxl-vif vif-bridge; do
        [ $how = vif-bridge ] && mv "$vif" "$vif.off"
        HYPERXL_TIMINGS=1 hyperxl run --rm demo true 2>/tmp/v.err >/dev/null || { echo "$how failed:" >&2; tail -3 /tmp/v.err >&2; }
        awk -v h=$how '$2 == "domain-build" {print "vif", h, $3}' /tmp/v.err
        [ $how = vif-bridge ] && mv "$vif.off" "$vif"
    done
done

# Throughput: 100 MiB from dd through nc, timed with /proc/uptime around it (centiseconds,
# read by the shell itself: the demo image has no date with sub-second precision).
send() { echo "read s x < /proc/uptime; dd if=/dev/zero bs=64k count=1600 2>/dev/null | nc $1 5001; read e x < /proc/uptime; echo elapsed \$s \$e"; }
rate() { awk '$1 == "elapsed" && $3 > $2 {printf "%.1f\n", 100 / ($3 - $2)}'; }
$IP netns add ta; $IP netns add tb
$IP link add tva type veth peer name tvb
$IP link set tva netns ta; $IP link set tvb netns tb
$IP -n ta addr add 198.19.9.1/24 dev tva; $IP -n tb addr add 198.19.9.2/24 dev tvb
$IP -n ta link set tva up; $IP -n tb link set tvb up
$IP netns add outside
$IP link add hxo0 type veth peer name eth0 netns outside
$IP addr add 198.18.0.1/24 dev hxo0; $IP link set hxo0 up
$IP -n outside addr add 198.18.0.2/24 dev eth0; $IP -n outside link set eth0 up
hyperxl run -d --name sink demo sh -c 'while :; do nc -l -p 5001 > /dev/null; done' >/dev/null
sleep 5
sink=$(hyperxl inspect sink | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -1)
for i in $(seq "$rounds"); do
    $IP netns exec tb nc -l -p 5001 > /dev/null & sleep 0.5
    echo "tput veth $($IP netns exec ta sh -c "$(send 198.19.9.2)" | rate)"
    wait
    $IP netns exec outside nc -l -p 5001 > /dev/null & sleep 0.5
    echo "tput guest-out $(hyperxl run --rm demo sh -c "$(send 198.18.0.2)" | rate)"
    wait
    echo "tput guest-guest $(hyperxl run --rm demo sh -c "$(send "$sink")" | rate)"
done
hyperxl rm -f sink >/dev/null
