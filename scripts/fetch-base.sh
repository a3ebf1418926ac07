#!/usr/bin/env bash
# Fetch Debian's qemu source package, check it against the pinned SHA-256
# sums and unpack it (dpkg-source applies Debian's patches, which carry the
# 7.2.x stable releases) into build/base-src.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase fetch-base

dl="$BUILD/dl"
out="$BUILD/base-src"
mkdir -p "$dl"

if [ -d "$out" ] && [ -f "$out.version" ]; then
    say "base already unpacked: $(cat "$out.version")"
    exit 0
fi

version=$BASE_VERSION
fallback=0
cd "$dl"
if ! ls ./*.dsc >/dev/null 2>&1; then
    if ! apt-get source -q --download-only "$BASE_SRC_PKG=$version" >apt-source.log 2>&1; then
        version=$(apt-cache showsrc "$BASE_SRC_PKG" | sed -n 's/^Version: //p' |
                  grep -F "$BASE_FALLBACK_PREFIX" | sort -V -r | sed -n 1p || true)
        [ -n "$version" ] || { cat apt-source.log; die "no qemu 7.2 source package in the archive"; }
        fallback=1
        apt-get source -q --download-only "$BASE_SRC_PKG=$version" >apt-source.log 2>&1 ||
            { cat apt-source.log; die "apt-get source $BASE_SRC_PKG=$version failed"; }
    fi
fi
dsc=$(ls ./*.dsc | sed -n 1p)
version=$(sed -n 's/^Version: //p' "$dsc")
[ "$version" = "$BASE_VERSION" ] || fallback=1

check() {
    local file=$1 want=$2 got
    got=$(sha256sum "$file" | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "$file: sha256 $got, expected $want"
    say "verified $file"
}
check "$BASE_ORIG" "$BASE_ORIG_SHA256"
if [ "$fallback" = 0 ]; then
    check "$BASE_DEBIAN" "$BASE_DEBIAN_SHA256"
else
    warn "Debian revision $BASE_VERSION has left the archive. Using $version
    instead: the upstream tarball is verified unchanged, but Debian's patch set
    is NOT the pinned one ($(sha256sum ./*.debian.tar.xz))."
fi

# Unpack inside dl/: dpkg-source leaves the orig tarball beside its target.
rm -rf unpacked
dpkg-source --no-check -x "$dsc" unpacked >dpkg-source.log 2>&1 ||
    { tail -n 20 dpkg-source.log; die "dpkg-source -x failed"; }
# The packaging and quilt's bookkeeping are not part of QEMU's tree.
rm -rf unpacked/debian unpacked/.pc
rm -rf "$out" "$out.version"
mv unpacked "$out"
echo "$version" >"$out.version"
say "base: Debian qemu $version (QEMU $(cat "$out/VERSION"))"
