#!/usr/bin/env bash
# Run the postcopy fault-injection test (tests/tools/test-postcopy-relay.py)
# N times in a row (default 10) against the built QEMU; stop at the first
# failure.  Not part of make check, which runs the test once.
#   scripts/loop-relay.sh [N] [-- test options, e.g. --cuts 3]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

n=${1:-10}
shift || true
[ "${1:-}" = "--" ] && shift
export OURS=${OURS:-$OBJ/qemu-system-x86_64} TREE
[ -x "$OURS" ] || die "no QEMU at $OURS; run make build"

for i in $(seq 1 "$n"); do
    start=$(date +%s)
    if ! out=$(python3 "$TOP/tests/tools/test-postcopy-relay.py" "$@" 2>&1); then
        printf '%s\n' "$out"
        die "run $i of $n failed"
    fi
    say "run $i of $n passed in $(( $(date +%s) - start ))s: $(printf '%s\n' "$out" | tail -n 1)"
done
say "all $n runs passed"
