# Shared helpers for the qemu-postcopy scripts.  Sourced, not run.
# shellcheck shell=bash

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$TOP/build"
TREE="$BUILD/qemu"
OBJ="$BUILD/obj"
# shellcheck source=base.conf
. "$TOP/scripts/base.conf"

# Debian's firmware packages install here; a build-tree binary otherwise
# only looks in its own (empty, for Debian's source) bundle directory.
FIRMWARE=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
# How build.sh (and stable-fixes.sh, for the base) configure QEMU
QEMU_CONFIGURE_ARGS=(
    --target-list=x86_64-softmmu
    --firmwarepath="$FIRMWARE"
    --disable-docs --disable-user --enable-tools --disable-guest-agent
    --enable-kvm --enable-tcg --enable-gnutls --enable-slirp
    --disable-sdl --disable-gtk --disable-vnc --disable-spice --disable-opengl
    --disable-xen --disable-capstone --enable-werror
)

# A build-tree binary relocates the firmware path into OBJ/qemu-bundle
# (see get_relocated_path()); point the relocated directories at Debian's.
link_firmware() {
    local obj=$1 d fwdirs
    IFS=: read -r -a fwdirs <<<"$FIRMWARE"
    for d in "${fwdirs[@]}"; do
        mkdir -p "$obj/qemu-bundle$(dirname "$d")"
        ln -sfn "$d" "$obj/qemu-bundle$d"
    done
}

say()  { printf '==> %s\n' "$*"; }
warn() { printf '\n!!! WARNING: %s\n\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Print "<step> took Ns" when the calling script ends.
time_phase() {
    PHASE_NAME=$1
    PHASE_START=$(date +%s)
    trap 'printf "==> %s took %ss\n" "$PHASE_NAME" "$(( $(date +%s) - PHASE_START ))"' EXIT
}
