#!/usr/bin/env bash
# Install what building and testing the series needs on a Debian 12 host:
# the deb-src entries (derived from the host's own apt sources), the build
# dependencies of the configuration we build, the firmware, and the stock
# QEMU 7.2 binary we interoperate with.  Idempotent; needs root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase setup

[ "$(id -u)" = 0 ] || die "setup needs root (apt-get); run as root"

mkdir -p "$BUILD"
stamp="$BUILD/.setup-done"
pkgs=(
    build-essential ninja-build meson pkg-config python3 python3-venv
    libglib2.0-dev libfdt-dev libpixman-1-dev zlib1g-dev libgnutls28-dev
    libslirp-dev ccache dpkg-dev git xz-utils valgrind util-linux
    seabios ipxe-qemu qemu-system-data qemu-utils
    libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients
    libvirt-daemon libvirt-daemon-driver-qemu acl iproute2
)
# The libvirt test (tests/tools/test-libvirt-postcopy.py) starts its own
# daemons; the packages' services must not start on install.
daemons=(libvirtd virtlogd virtlockd)

# deb-src: copy every deb entry of the host's deb822 sources with its type
# switched, so the archive (or mirror, or snapshot) is whatever the host uses.
enable_deb_src() {
    local src=/etc/apt/sources.list.d/debian.sources
    local dst=/etc/apt/sources.list.d/qemu-postcopy-src.sources
    if grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ ||
       grep -qs '^deb-src' /etc/apt/sources.list; then
        return 1
    fi
    if [ -f "$src" ]; then
        sed 's/^Types:.*/Types: deb-src/' "$src" >"$dst"
    elif [ -f /etc/apt/sources.list ]; then
        sed -n 's/^deb \(.*\)/deb-src \1/p' /etc/apt/sources.list \
            >/etc/apt/sources.list.d/qemu-postcopy-src.list
    else
        die "no apt sources found to derive deb-src entries from"
    fi
    say "enabled deb-src entries derived from the host's apt sources"
}

need_update=0
enable_deb_src && need_update=1
[ -f "$stamp" ] || need_update=1
if [ "$need_update" = 1 ]; then
    say "apt-get update"
    apt-get update -q >/dev/null
fi

# The stock peer: the binary build of the pinned source revision, or the
# newest 7.2 revision if it has gone (loudly).
stock_ver=$(apt-cache madison "$STOCK_PKG" | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
            grep -F -x -e "$BASE_VERSION" -e "$BASE_VERSION+b1" -e "$BASE_VERSION+b2" \
                 -e "$BASE_VERSION+b3" -e "$BASE_VERSION+b4" | sed -n 1p || true)
if [ -z "$stock_ver" ]; then
    stock_ver=$(apt-cache madison "$STOCK_PKG" | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
                grep -F "$BASE_FALLBACK_PREFIX" | sed -n 1p || true)
    [ -n "$stock_ver" ] || die "no 7.2 build of $STOCK_PKG in the archive"
    warn "$STOCK_PKG $BASE_VERSION is gone from the archive; using $stock_ver"
fi

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
have_stock=$(dpkg-query -W -f='${Version}' "$STOCK_PKG" 2>/dev/null || true)
[ "$have_stock" = "$stock_ver" ] || missing+=("$STOCK_PKG=$stock_ver")

# No service starts while we install: a policy-rc.d of our own (101:
# action forbidden) for the duration, unless the host has one already.
# Daemons that start anyway are stopped by the PID they got.
daemon_pids() {
    local d
    for d in "${daemons[@]}"; do pgrep -x "$d" || true; done | sort
}
install_quietly() {
    local policy=/usr/sbin/policy-rc.d own_policy=0 before after pid
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    before=$(daemon_pids)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "$@" >"$BUILD/setup-apt.log" 2>&1 ||
        { [ $own_policy = 0 ] || rm -f "$policy"
          tail -n 30 "$BUILD/setup-apt.log"; die "apt-get install failed"; }
    [ $own_policy = 0 ] || rm -f "$policy"
    after=$(daemon_pids)
    for pid in $(comm -13 <(echo "$before") <(echo "$after")); do
        warn "the install started $(cat /proc/"$pid"/comm 2>/dev/null) ($pid); stopping it"
        kill "$pid" 2>/dev/null || true
    done
}

if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    install_quietly "${missing[@]}"
fi

"$STOCK_QEMU" --version | sed -n 1p
touch "$stamp"
