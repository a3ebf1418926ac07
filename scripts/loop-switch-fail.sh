#!/usr/bin/env bash
# Run every form of the failed-switch test (tests/tools/test-postcopy-
# switch-fail.py) N times each (default 20) against
# the built QEMU and count the passes.  Not part of make check, which runs
# each form once.  Every form ours->ours; a device that fails to load and
# a cut after the PONG ours->stock too (a stock 7.2 destination, $STOCK).
#   scripts/loop-switch-fail.sh [N]
set -uo pipefail
. "$(dirname "$0")/lib.sh"

n=${1:-20}
export OURS=${OURS:-$OBJ/qemu-system-x86_64} TREE
[ -x "$OURS" ] || die "no QEMU at $OURS; run make build"
stock=${STOCK:-/usr/bin/qemu-system-x86_64}

forms=("--fail before --how device" "--fail before --how kill"
       "--fail before --how cut" "--fail after --how kill"
       "--fail after --how cut")
failed=0
run_form() {    # label, command...
    local label=$1 pass=0 i start out
    shift
    for i in $(seq 1 "$n"); do
        start=$(date +%s)
        if out=$("$@" 2>&1); then
            pass=$((pass + 1))
        else
            printf '%s\n' "$out" | tail -n 20
            warn "$label: run $i failed"
        fi
    done
    say "$label: $pass of $n passed"
    [ "$pass" = "$n" ] || failed=1
}

for f in "${forms[@]}"; do
    # shellcheck disable=SC2086
    run_form "ours->ours $f" python3 "$TOP/tests/tools/test-postcopy-switch-fail.py" $f
done
# With a stock destination: its own load failure, and a cut after the PONG
for f in "--fail before --how device" "--fail after --how cut"; do
    # shellcheck disable=SC2086
    DST=$stock run_form "ours->stock $f" \
        python3 "$TOP/tests/tools/test-postcopy-switch-fail.py" $f
done
exit $failed
