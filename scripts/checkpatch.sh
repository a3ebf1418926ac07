#!/usr/bin/env bash
# Run the base's scripts/checkpatch.pl on every patch of the series.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase checkpatch

checkpatch="$TREE/scripts/checkpatch.pl"
[ -x "$checkpatch" ] || die "no $checkpatch; run make tree"
bad=0
n=0
while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    n=$((n + 1))
    if out=$("$checkpatch" "$TOP/patches/$p" 2>&1) &&
       ! grep -q '^WARNING' <<<"$out"; then
        continue
    fi
    echo "$out" | grep -E '^(ERROR|WARNING|#|\+|total)' | sed -n 1,40p
    echo "checkpatch: $p is not clean" >&2
    bad=$((bad + 1))
done <"$TOP/patches/series"
[ "$bad" = 0 ] || die "$bad of $n patches fail checkpatch"
say "checkpatch: all $n patches clean"
