#!/usr/bin/env bash
# The TCG memory-loss matrix: tests/tools/test-tcg-dirty-sync.py as a
# chain of HOPS migrations (default 5) in each of 8 forms, 1 and 2 vCPUs,
# precopy and postcopy, max-bandwidth unlimited and 128 MiB/s: 40
# migrations by default, BIN (default ours) on both sides.  Counts the
# migrations made and those that lost memory; a chain stops at its first
# loss, since the guest runs on corrupted.  Not part of make check (about
# 6 minutes); make check runs one 3-hop chain.
#   scripts/matrix-tcg-dirty.sh [BIN] [HOPS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bin=${1:-$OBJ/qemu-system-x86_64}
hops=${2:-5}
[ -x "$bin" ] || die "no QEMU at $bin; run make build"
bash "$TOP/scripts/make-guest.sh" >/dev/null

made=0 lost=0 untested=0
for smp in 1 2; do
    for mode in precopy postcopy; do
        for bw in 0 128; do
            link="$bw MiB/s"
            [ "$bw" = 0 ] && link=unlimited
            form="$smp vCPU(s), $mode, max-bandwidth $link"
            opts=(--hops "$hops" --smp "$smp" --bandwidth "$bw"
                  --src "$bin" --dst "$bin")
            [ "$mode" = postcopy ] && opts+=(--postcopy)
            rc=0
            out=$(python3 "$TOP/tests/tools/test-tcg-dirty-sync.py" \
                  "${opts[@]}" 2>&1) || rc=$?
            case "$rc" in
            0|1|2) ;;
            *) printf '%s\n' "$out"; die "$form: the chain broke (exit $rc)" ;;
            esac
            n=$(printf '%s\n' "$out" | grep -c '^hop [0-9]*: ' || true)
            bad=$(printf '%s\n' "$out" | grep -Ec '^hop [0-9]*: .* [1-9][0-9]* (page|CORRUPTION)' || true)
            none=$(printf '%s\n' "$out" | grep -Ec 'completed in precopy, before the switch' || true)
            made=$((made + n)) lost=$((lost + bad))
            untested=$((untested + none))
            say "$form: $n migration(s), $bad lost memory" \
                "$([ "$mode" = postcopy ] && echo "($none completed before the switch)")"
        done
    done
done
say "$bin: $lost of $made migrations lost memory ($untested postcopy hop(s) completed before the switch)"
[ "$lost" = 0 ]
