#!/usr/bin/env bash
# Run the TCG dirty tracking test (tests/tools/test-tcg-dirty-sync.py) N
# times (default 10), each a chain of precopy hops whose guest RAM must be
# equal on both sides, and count the runs that lost memory.  Runs them
# all, unlike loop-relay.sh: the count is the result, for ours or stock.
# Not part of make check, which runs the test once.
#   scripts/loop-tcg-dirty.sh [N] [-- test options, e.g. --smp 2
#                                  --src /usr/bin/qemu-system-x86_64]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

n=${1:-10}
shift || true
[ "${1:-}" = "--" ] && shift
export OURS=${OURS:-$OBJ/qemu-system-x86_64}
[ -x "$OURS" ] || die "no QEMU at $OURS; run make build"
bash "$TOP/scripts/make-guest.sh" >/dev/null

lost=0 untested=0
for i in $(seq 1 "$n"); do
    rc=0
    out=$(python3 "$TOP/tests/tools/test-tcg-dirty-sync.py" "$@" 2>&1) || rc=$?
    case "$rc" in
    0) ;;
    1) lost=$((lost + 1)) ;;
    2) untested=$((untested + 1)) ;;
    *) printf '%s\n' "$out"; die "run $i broke (exit $rc)" ;;
    esac
    say "run $i of $n: $(printf '%s\n' "$out" | tail -n 1)"
done
say "$lost of $n runs lost memory ($untested tested nothing)"
[ "$lost" = 0 ] && [ "$untested" = 0 ]
