#!/usr/bin/env bash
# What make bench needs beyond make setup: Debian's python3-matplotlib, for
# the latency picture.  Idempotent (checks the package, not a stamp, so a
# host set up before the bench existed gets it too); needs root to install.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

pkg=python3-matplotlib
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
    exit 0
fi
[ "$(id -u)" = 0 ] || die "$pkg is missing and installing it needs root"
mkdir -p "$BUILD"
install_pkg() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "$pkg" >"$BUILD/setup-bench-apt.log" 2>&1
}
say "installing $pkg"
# Package lists from an earlier setup may be stale: update once and retry.
install_pkg || { say "apt-get update" && apt-get update -q >/dev/null && install_pkg; } ||
    { tail -n 30 "$BUILD/setup-bench-apt.log"; die "apt-get install $pkg failed"; }
