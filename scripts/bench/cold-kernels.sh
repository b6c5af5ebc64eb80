# The cold path, one guest kernel against another, interleaved in one test-host boot:
# `hyperxl run --rm` to the exit of `true` and of `echo first`, PVH and PV, with
# /images/old-vmlinuz and /images/new-vmlinuz; the first round is a warm-up. Prints one
# line per run; take the medians. Emulated times: compare within one boot. Run with:
#   cargo run -q -p hyperxl-e2e --example demo-image -- demo.tar
#   scripts/xen-testhost batch --no-build --add demo.tar --add OLD:/images/old-vmlinuz \
#       --add NEW:/images/new-vmlinuz --out OUT scripts/bench/cold-kernels.sh
hyperxl load -q -i /images/demo.tar >/dev/null
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
for r in 0 1 2 3 4 5; do
    for t in pvh pv; do
        for k in old new; do
            s=$(ms)
            hyperxl run --rm --network none --type $t --kernel /images/$k-vmlinuz demo true
            rc=$? e=$(ms)
            hyperxl run --rm --network none --type $t --kernel /images/$k-vmlinuz demo echo first >/dev/null
            f=$(ms)
            [ $r -gt 0 ] && echo "$t $k exit_true=$((e - s)) rc=$rc echo_done=$((f - e))"
        done
    done
done
