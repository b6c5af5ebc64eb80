#!/usr/bin/env bash
# Runs inside the test host's dom0 under bash ($EPOCHREALTIME): where one VM's nftables
# run goes (issue 11's boot cost: a networked VM's `nft -f` takes about 400 ms beside its
# domain build). ROUNDS of each, interleaved, on a table holding 10 VMs' rules:
#   version   `nft --version`: the binary's start alone (no netlink)
#   list      `nft list ruleset`: reading the kernel's ruleset (what nft caches)
#   chain     one VM's rules as hyperxl writes them (a chain of five rules and a map
#             element jumping to it), then removed (untimed)
#   elements  the same protection as set elements only (the rules in a base chain,
#             written once), then removed (untimed)
# Prints "NAME MS" per run; take the medians. Run with:
#   scripts/xen-testhost batch --no-build --add demo.tar --out OUT scripts/bench/nft-cost.sh
set -u
rounds=${1:-10}
export HYPERXL_DEFAULT_NETWORK=hyperxl
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b - a) / 1000}'; }
hyperxl load -q -i /images/demo.tar >/dev/null
# The base tables and the default network, as the first networked run leaves them.
hyperxl run --rm demo true >/dev/null 2>&1 || { echo "a networked run failed" >&2; exit 1; }

vm_rules() { # ID VIF MAC IP
    cat <<EOF
add chain bridge hyperxl vm-$1
flush chain bridge hyperxl vm-$1
add rule bridge hyperxl vm-$1 ether saddr != $3 drop
add rule bridge hyperxl vm-$1 ether type arp arp saddr ether != $3 drop
add rule bridge hyperxl vm-$1 ether type arp arp saddr ip != $4 drop
add rule bridge hyperxl vm-$1 ether type ip ip saddr != $4 drop
add rule bridge hyperxl vm-$1 ether type != { ip, arp } drop
add element bridge hyperxl vifs { "$2" : jump vm-$1 }
EOF
}
vm_removal() { printf 'delete element bridge hyperxl vifs { "%s" }\ndelete chain bridge hyperxl vm-%s\n' "$2" "$1"; }
for i in $(seq 10); do
    vm_rules "busy$i" "vif9$i.0" "00:16:3e:00:00:$((10 + i))" "10.88.9.$i" | nft -f - || exit 1
done

# The element-only variant: sets and one base chain, created once.
nft -f - <<'EOF' || exit 1
add set bridge hyperxl guest_vifs { type ifname; }
add set bridge hyperxl vif_macs { type ifname . ether_addr; }
add set bridge hyperxl vif_ips { type ifname . ipv4_addr; }
add chain bridge hyperxl guests { type filter hook prerouting priority -190; policy accept; }
add rule bridge hyperxl guests iifname != @guest_vifs accept
add rule bridge hyperxl guests iifname . ether saddr != @vif_macs drop
add rule bridge hyperxl guests ether type arp iifname . arp saddr ether != @vif_macs drop
add rule bridge hyperxl guests ether type arp iifname . arp saddr ip != @vif_ips drop
add rule bridge hyperxl guests ether type ip iifname . ip saddr != @vif_ips drop
add rule bridge hyperxl guests ether type != { ip, arp } drop
EOF
elements() { # VIF MAC IP
    printf 'add element bridge hyperxl guest_vifs { "%s" }\nadd element bridge hyperxl vif_macs { "%s" . %s }\nadd element bridge hyperxl vif_ips { "%s" . %s }\n' "$1" "$1" "$2" "$1" "$3"
}
elements_removal() { elements "$@" | sed 's/^add /delete /'; }

t() { # NAME CMD...: prints "NAME MS"
    local name=$1 s e; shift
    s=${EPOCHREALTIME//[.,]/}
    "$@" >/dev/null 2>/tmp/nft.err || { echo "$name failed:" >&2; cat /tmp/nft.err >&2; }
    e=${EPOCHREALTIME//[.,]/}
    echo "$name $(ms "$s" "$e")"
}
vm_rules t1 vif1.0 00:16:3e:00:00:01 10.88.0.2 > /tmp/chain.nft
vm_removal t1 vif1.0 > /tmp/chain-del.nft
elements vif1.0 00:16:3e:00:00:01 10.88.0.2 > /tmp/el.nft
elements_removal vif1.0 00:16:3e:00:00:01 10.88.0.2 > /tmp/el-del.nft
for r in $(seq "$rounds"); do
    t version nft --version
    t list nft list ruleset
    t chain nft -f /tmp/chain.nft
    nft -f /tmp/chain-del.nft
    t elements nft -f /tmp/el.nft
    nft -f /tmp/el-del.nft
done
