#!/usr/bin/env bash
# Runs inside the test host's dom0 (see scripts/bench-guest-ab), under bash. Times
# `hyperxl run --rm demo true` with the guest in /images/oldguest (HYPERXL_GUEST_DIR) and
# with the current one, each with a network and with --network none, ROUNDS interleaved
# rounds, 2 s apart so that one run's teardown does not overlap the next one's boot.
# Prints "ab GUEST KIND started MS boot MS build MS": the run to the app started (its
# phases up to boot-to-started), the boot-to-started phase, the domain-build phase.
set -u
rounds=${1:-12}
export HYPERXL_DEFAULT_NETWORK=hyperxl
hyperxl load -i /images/demo.tar >/dev/null || { echo "hyperxl load failed" >&2; exit 1; }
# Warm-up of each guest: the disk is built, the network set up.
hyperxl run --rm demo true >/dev/null 2>&1
HYPERXL_GUEST_DIR=/images/oldguest hyperxl run --rm demo true >/dev/null 2>&1
for _ in $(seq "$rounds"); do
    for g in old new; do
        for k in net none; do
            sleep 2
            args=(); [ $k = none ] && args=(--network none)
            dir=/hx/guest; [ $g = old ] && dir=/images/oldguest
            HYPERXL_GUEST_DIR=$dir HYPERXL_TIMINGS=1 hyperxl run --rm "${args[@]}" demo true 2>&1 >/dev/null |
                awk -v k=$k -v g=$g '
                    $1 == "hyperxl-timing:" {
                        if (!done) t += $3
                        if ($2 == "boot-to-started") { b = $3; done = 1 }
                        if ($2 == "domain-build") d = $3
                    }
                    END { if (done) printf "ab %s %s started %.1f boot %.1f build %.1f\n", g, k, t, b, d
                          else print "run failed: " g " " k > "/dev/stderr" }'
        done
    done
done
