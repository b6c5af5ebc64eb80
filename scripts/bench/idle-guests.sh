# What idle guests cost the machine, kernel against kernel, in one test-host boot: for
# each round and each of /images/old-vmlinuz and /images/new-vmlinuz, six idle 32 MiB
# VMs are started (each `run -d` timed), then over 30 s the CPU they take (the Time
# column of `xl list`, % of one CPU), dom0's idle share and the timer interrupts one
# guest takes a second (its /proc/interrupts through exec); then they are removed.
# Emulated times: compare the columns of one boot only. Run with:
#   cargo run -q -p hyperxl-e2e --example demo-image -- demo.tar
#   scripts/xen-testhost batch --no-build --add demo.tar --add OLD:/images/old-vmlinuz \
#       --add NEW:/images/new-vmlinuz --out OUT scripts/bench/idle-guests.sh
hyperxl load -q -i /images/demo.tar >/dev/null
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
guests() { xl list | awk 'NR > 2 {s += $6} END {printf "%.1f", s}'; }
idle() { awk '/^cpu / {print $5}' /proc/stat; }
ticks() { hyperxl exec "${1}1" cat /proc/interrupts | awk '/timer0/ {print $2}'; }
for round in 1 2; do
    for k in new old; do
        for i in 1 2 3 4 5 6; do
            s=$(ms)
            hyperxl run -d -m 32m --network none --kernel /images/$k-vmlinuz --name $k$i \
                demo sh -c 'exec sleep 100000' >/dev/null
            echo "r$round $k start$i $(($(ms) - s))"
        done
        sleep 10
        t0=$(ticks $k) g0=$(guests) i0=$(idle)
        sleep 30
        g1=$(guests) i1=$(idle) t1=$(ticks $k)
        echo "r$round $k guests_pct $(awk -v a="$g0" -v b="$g1" 'BEGIN {printf "%.2f", 100 * (b - a) / 30}')"
        echo "r$round $k dom0_idle_pct $(((i1 - i0) * 100 / 3000))"
        echo "r$round $k guest_timer_irqs_per_s $(((t1 - t0) / 30))"
        hyperxl rm -f "${k}1" "${k}2" "${k}3" "${k}4" "${k}5" "${k}6" >/dev/null
    done
done
