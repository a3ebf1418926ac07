#!/usr/bin/env bash
# Show each stable fix's bug: run the fix's own test against the base with
# the fixes before it (build/stable/obj/qemu-stable-(N-1)) and with it
# (qemu-stable-N).  The test must fail before and pass after.  Needs
# `make stable-fixes` (which keeps those binaries) and, for the tests
# that boot a Linux guest, `make guest`.  Slow (about 12 minutes here);
# not part of make check.
#
#   scripts/stable-fix-tests.sh [N ...]    (default: every fix)
#
# The two libvhost-user fixes (8, 9) share one test, which needs both: it
# fails with 7, still fails with 8 alone (a later step of the same
# handshake) and passes with 9.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
time_phase stable-fix-tests

obj="$BUILD/stable/obj"
logs="$BUILD/stable/tests"
mkdir -p "$logs"
tools="$TOP/tests/tools"

# The test of fix N, as a command line (binaries come from the environment)
fix_test() {
    case $1 in
    1) echo "python3 $tools/test-tcg-dirty-sync.py --hops 3" ;;
    2) echo "python3 $tools/test-tls-rekey.py --runs 3" ;;
    3) echo "python3 $tools/test-unprivileged-uffd.py" ;;
    4) echo "python3 $tools/test-bad-commands.py --case 'DISCARD then the end'" ;;
    5) echo "python3 $tools/test-bad-commands.py --case 'DISCARD range far past'" ;;
    6) echo "python3 $tools/test-postcopy-rate-limit.py" ;;
    7) echo "python3 $tools/test-postcopy-switch-fail.py --fail after --how kill" ;;
    8|9) echo "python3 $tools/test-postcopy-vhost-user.py" ;;
    10) echo "python3 $tools/test-bad-commands.py --case 'LISTEN outside PACKAGED'" \
             "&& python3 $tools/test-bad-commands.py" \
             "--case 'PACKAGED with LISTEN and no RUN'" ;;
    *) return 1 ;;
    esac
}

# Run fix N's test against qemu-stable-K; print its exit status
run_with() {
    local n=$1 k=$2 bin="$obj/qemu-stable-$2"
    [ -x "$bin" ] || die "no $bin: run make stable-fixes first"
    # The boot sector guest's image comes from $TREE's migration-test
    TREE=$TREE OBJ=$OBJ OURS=$bin SRC=$bin DST=$bin \
        VHOST_USER_BLK="$obj/vhost-user-blk-stable-$k" \
        timeout 900 bash -c "$(fix_test "$n")" >"$logs/fix$n-with-$k.log" 2>&1
    echo $?
}

nfix=$(ls "$obj"/qemu-stable-* 2>/dev/null | wc -l)
[ "$nfix" -gt 1 ] || die "no binaries in $obj: run make stable-fixes first"
nfix=$((nfix - 1))
if [ $# -gt 0 ]; then
    wanted=("$@")
else
    mapfile -t wanted < <(seq 1 "$nfix")
fi

failed=0
for n in "${wanted[@]}"; do
    fix_test "$n" >/dev/null || die "no test known for fix $n"
    before=$((n - 1))
    after=$n
    # 8 needs 9 to pass; 9's bug shows with 8 applied
    [ "$n" = 8 ] && after=9
    b=$(run_with "$n" "$before")
    a=$(run_with "$n" "$after")
    if [ "$b" = 77 ] || [ "$a" = 77 ]; then
        verdict="SKIPPED (the test cannot run here)"
        failed=1
    elif [ "$b" != 0 ] && [ "$a" = 0 ]; then
        verdict="shown"
    else
        verdict="NOT SHOWN"
        failed=1
    fi
    say "fix $n: with 1-$before exit $b, with 1-$after exit $a: $verdict" \
        "(logs: $logs/fix$n-with-{$before,$after}.log)"
    # The line that says why the run before the fix failed
    grep -m1 -E 'FAIL|ERROR|error|failed|lost memory' \
        "$logs/fix$n-with-$before.log" |
        cut -c1-200 | sed 's/^/    before: /'
done
exit $failed
