#!/bin/bash
# Build qemu-system-x86_64 with a mutant (tests/mutants/NAME.diff: a
# change that undoes a fix, or widens a race with a delay) applied to the
# generated tree, as build/obj/qemu-NAME; then take the change back out and
# rebuild, so the tree and build/obj are the series' again.
#
#   scripts/build-mutant.sh NAME
#
# The binary stays in build/obj, where it finds the build's firmware
# and modules.  Needs a built tree (make build) with nothing uncommitted.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die "usage: $0 NAME (tests/mutants/NAME.diff)"
name=$1
diff="$TOP/tests/mutants/$name.diff"
[ -f "$diff" ] || die "no $diff"
[ -x "$OBJ/qemu-system-x86_64" ] || die "build first (make build)"
git -C "$TREE" diff --quiet HEAD || die "$TREE has uncommitted changes"

restore() {
    git -C "$TREE" checkout -q -- .
    ninja -C "$OBJ" qemu-system-x86_64 >/dev/null
}
trap restore EXIT

git -C "$TREE" apply "$diff"
say "building the mutant $name"
ninja -C "$OBJ" qemu-system-x86_64 >/dev/null
cp "$OBJ/qemu-system-x86_64" "$OBJ/qemu-$name"
say "built $OBJ/qemu-$name; restoring the series' build"
