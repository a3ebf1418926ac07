# Shared helpers for the qemu-postcopy scripts.  Sourced, not run.
# shellcheck shell=bash

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$TOP/build"
TREE="$BUILD/qemu"
OBJ="$BUILD/obj"
# shellcheck source=base.conf
. "$TOP/scripts/base.conf"

say()  { printf '==> %s\n' "$*"; }
warn() { printf '\n!!! WARNING: %s\n\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Print "<step> took Ns" when the calling script ends.
time_phase() {
    PHASE_NAME=$1
    PHASE_START=$(date +%s)
    trap 'printf "==> %s took %ss\n" "$PHASE_NAME" "$(( $(date +%s) - PHASE_START ))"' EXIT
}
