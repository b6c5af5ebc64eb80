# Shared helpers for hyperxl's scripts. Source it; it defines functions and variables only.
#
# Everything downloaded or built is cached under $HYPERXL_CACHE (default
# ~/.cache/hyperxl), keyed so that a changed input rebuilds only what depends on it.

HYPERXL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HYPERXL_CACHE=${HYPERXL_CACHE:-$HOME/.cache/hyperxl}
export HYPERXL_ROOT HYPERXL_CACHE

# Debian bookworm packages that make up the Xen test host (unpacked, never installed).
# The kernel's ABI name is resolved from linux-image-amd64 at fetch time.
TESTHOST_DEBS=(
    qemu-system-x86 qemu-system-common qemu-system-data seabios
    libaio1 libbpf1 libcapstone4 libfdt1 libfuse3-3 libibverbs1 libnuma1 libpixman-1-0
    libpmem1 librdmacm1 libslirp0 liburing2 libvdeplug2 libndctl6 libdaxctl1
    libnl-3-200 libnl-route-3-200
    xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils
    libxenmisc4.17 libxenstore4 libxencall1 libxenevtchn1 libxenforeignmemory1
    libxengnttab1 libxentoollog1 libxenhypfs1 libxendevicemodel1 libxentoolcore1 libyajl2
    busybox-static
)

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# sha256 of its arguments (strings), short.
hash_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
# The median of the numbers on stdin, one a line, with DECIMALS decimals ("-" for none):
# the benchmarks' summary statistic.
median() {
    sort -n | awk -v d="${1:-0}" '{a[NR]=$1} END {if (NR == 0) print "-"; else printf "%.*f\n", d, (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}

# Builds libxl's hotplug steps (hyperxl-block, hyperxl-vif) as static musl binaries and
# prints the directory that holds them: libxl execs one per device and action, and a
# static binary starts in about a third of the time of a dynamically linked one (no
# loader, no shared objects to map; measured in the test host). Needs CARGO_TARGET_DIR
# and the musl target (scripts/install-deps).
build_hotplug() {
    (cd "$HYPERXL_ROOT" && cargo build -q --release -p hyperxl-hotplug --target x86_64-unknown-linux-musl) \
        || return 1
    printf '%s\n' "${CARGO_TARGET_DIR:-$HYPERXL_ROOT/target}/x86_64-unknown-linux-musl/release"
}

# Runs apt-get update once per machine boot (cheap to call again).
apt_update_once() {
    local stamp=/run/hyperxl-apt-updated
    [ -e "$stamp" ] && return 0
    apt-get update -q >/dev/null || die "apt-get update failed"
    touch "$stamp" 2>/dev/null || true
}

# Installs Debian packages that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update_once
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# The kernel package behind linux-image-amd64, e.g. linux-image-6.1.0-56-amd64.
debian_kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

# Downloads and unpacks the test host's Debian packages into $TESTHOST_ROOT (cached).
# Sets TESTHOST_ROOT and TESTHOST_KVER.
testhost_root() {
    local kpkg key dir
    kpkg=${HYPERXL_KERNEL_PKG:-$(debian_kernel_pkg)}
    if [ -z "$kpkg" ]; then
        apt_update_once
        kpkg=$(debian_kernel_pkg)
    fi
    [ -n "$kpkg" ] || die "cannot resolve Debian's kernel package (apt-cache depends linux-image-amd64)"
    key=$(hash_of "${TESTHOST_DEBS[@]}" "$kpkg")
    dir=$HYPERXL_CACHE/testhost-root-$key
    if [ ! -e "$dir/.complete" ]; then
        log "fetching the Xen test host's Debian packages (once; cached in $dir)"
        apt_update_once
        mkdir -p "$HYPERXL_CACHE/debs"
        (cd "$HYPERXL_CACHE/debs" && apt-get download -q "${TESTHOST_DEBS[@]}" "$kpkg" >/dev/null 2>&1) \
            || die "apt-get download of the test host packages failed"
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        local p deb
        for p in "${TESTHOST_DEBS[@]}" "$kpkg"; do
            deb=$(ls -t "$HYPERXL_CACHE/debs/${p}"_*.deb 2>/dev/null | head -n1)
            [ -n "$deb" ] || die "package $p was not downloaded"
            dpkg-deb -x "$deb" "$dir.tmp" || die "cannot unpack $deb"
        done
        touch "$dir.tmp/.complete"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    TESTHOST_ROOT=$dir
    TESTHOST_KVER=$(ls "$dir/lib/modules" | head -n1)
    export TESTHOST_ROOT TESTHOST_KVER
}

# Library path for binaries unpacked into the test host root.
testhost_ld_path() {
    printf '%s' "$TESTHOST_ROOT/usr/lib/x86_64-linux-gnu:$TESTHOST_ROOT/lib/x86_64-linux-gnu"
}
