#!/usr/bin/env bash
# Build every patch of the series in turn (bisectability): check out each
# commit of build/qemu, build incrementally what exists at that commit,
# then return to the tip.  Slow on a cold cache; not part of make check.
# With an argument (a commit of build/qemu), only the patches after it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase check-series

cd "$TREE"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
    die "$TREE has uncommitted changes"
tip=$(git rev-parse --abbrev-ref HEAD)
trap 'git -C "$TREE" checkout -q "$tip"' EXIT
for c in $(git rev-list --reverse "${1:-base}"..HEAD); do
    git checkout -q "$c"
    targets=(qemu-system-x86_64 tests/qtest/migration-test)
    while read -r t; do
        [ -n "$t" ] && [ -f "$TREE/${t}.c" ] && targets+=("$t")
    done <"$TOP/tests/unit-targets"
    if ! ninja -C "$OBJ" "${targets[@]}" >"$BUILD/check-series.log" 2>&1; then
        grep -E 'error|FAILED' "$BUILD/check-series.log" | sed -n 1,20p >&2
        die "$(git log -1 --format='%h %s') does not build"
    fi
    say "builds: $(git log -1 --format='%h %s')"
done
