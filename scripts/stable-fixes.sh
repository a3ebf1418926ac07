#!/usr/bin/env bash
# The series' standalone fixes as a quilt series for debian/patches.
#
# The series opens with the fixes that stock 7.2 needs too; each carries
# "Cc: qemu-stable@nongnu.org".  Write those leading patches to
# build/stable-fixes/ (a series file and one patch each, with a DEP-3
# header), then check that:
#   - each applies to the pristine base alone, without fuzz;
#   - the series applies in order, and gives the tree of the series'
#     first N commits (nothing else came with them);
#   - unless --no-build, the base builds with each one applied in turn
#     (a worktree of the base and its own build directory, build/stable/).
#     Each step's binaries are kept as build/stable/obj/qemu-stable-N and
#     vhost-user-blk-stable-N (0: the base, N: the base with fixes 1-N),
#     for scripts/stable-fix-tests.sh.
# A patch marked for stable after one that is not is an error: the fixes
# must come first.
#   scripts/stable-fixes.sh [--no-build]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase stable-fixes

build=yes
[ "${1:-}" = "--no-build" ] && build=no

[ -d "$TREE/.git" ] || die "no tree; run make tree"
out="$BUILD/stable-fixes"
rm -rf "$out"
mkdir -p "$out"

# The leading patches marked for stable
fixes=()
seen=0
while read -r p; do
    [ -n "$p" ] || continue
    if grep -q '^Cc: qemu-stable@nongnu.org$' "$TOP/patches/$p"; then
        [ "${#fixes[@]}" -eq "$seen" ] ||
            die "$p is marked for stable but follows a patch that is not"
        fixes+=("$p")
    fi
    seen=$((seen + 1))
done <"$TOP/patches/series"
[ "${#fixes[@]}" -gt 0 ] || die "no patch of the series is marked for stable"

# One quilt patch: DEP-3 header from the commit message, then the diff
dep3() {
    local src=$1 subject author date
    subject=$(sed -n 's/^Subject: \[PATCH[^]]*\] //p' "$src")
    # A subject folded over two lines
    subject+=$(sed -n '/^Subject: /{n;/^ /p}' "$src")
    author=$(sed -n 's/^From: //p' "$src" | head -n 1)
    date=$(date -u -d "$(sed -n 's/^Date: //p' "$src" | head -n 1)" +%F)
    printf 'Description: %s\n' "$subject"
    # The body, up to the diffstat's "---", in DEP-3's folded form
    awk 'body && /^---$/ { exit }
         body { print ($0 == "" ? " ." : " " $0) }
         !body && /^$/ { body = 1 }' "$src" | sed '${/^ \.$/d}'
    printf 'Author: %s\n' "$author"
    printf 'Origin: vendor, qemu-postcopy %s\n' "$(basename "$src")"
    printf 'Forwarded: no\n'
    printf 'Last-Update: %s\n' "$date"
    printf -- '---\n'
    sed -n '/^diff --git /,$p' "$src" | sed '/^-- $/,$d'
}

for p in "${fixes[@]}"; do
    name=${p#[0-9][0-9][0-9][0-9]-}
    dep3 "$TOP/patches/$p" >"$out/$name"
    echo "$name" >>"$out/series"
done
say "wrote ${#fixes[@]} fix(es) to $out: $(tr '\n' ' ' <"$out/series")"

# A fresh copy of the base in @1
base_copy() {
    rm -rf "$1"
    git -C "$TREE" worktree prune
    git -C "$TREE" worktree add -q --detach "$1" base
}

# One copy of the base: a dry run leaves it as it was
check="$BUILD/stable/check"
base_copy "$check"
while read -r name; do
    (cd "$check" && patch -p1 -F0 -s --dry-run <"$out/$name" >/dev/null) ||
        die "$name does not apply to the base alone"
    say "applies to the base alone: $name"
done <"$out/series"

while read -r name; do
    (cd "$check" && patch -p1 -F0 -s --no-backup-if-mismatch <"$out/$name") ||
        die "$name does not apply after the fixes before it"
done <"$out/series"
first_n=$(git -C "$TREE" rev-list --reverse base..HEAD | sed -n "${#fixes[@]}p")
(cd "$check" && git add -A && git diff --cached --quiet "$first_n") ||
    die "the quilt series does not give the tree of the series' first ${#fixes[@]} commits"
say "the series applies in order and equals the first ${#fixes[@]} commits"
git -C "$TREE" worktree remove --force "$check"

[ "$build" = yes ] || exit 0

# Build the base, then with each fix in turn, in a worktree of our own
src="$BUILD/stable/qemu"
obj="$BUILD/stable/obj"
base_copy "$src"
want="${QEMU_CONFIGURE_ARGS[*]}"
if [ ! -f "$obj/build.ninja" ] ||
   [ "$(cat "$obj/.configure-args" 2>/dev/null)" != "$want" ]; then
    rm -rf "$obj"
    mkdir -p "$obj"
    say "configure the base in $obj"
    (cd "$obj" && "$src/configure" "${QEMU_CONFIGURE_ARGS[@]}") \
        >"$BUILD/stable/configure.log" 2>&1 ||
        die "configure failed (log: $BUILD/stable/configure.log)"
    echo "$want" >"$obj/.configure-args"
fi
link_firmware "$obj"
# The vhost-user test's back end is libvhost-user's, which two fixes change
targets=(qemu-system-x86_64 contrib/vhost-user-blk/vhost-user-blk)
step() {
    ninja -C "$obj" "${targets[@]}" >"$BUILD/stable/build.log" 2>&1 || {
        grep -E 'error|FAILED' "$BUILD/stable/build.log" | sed -n 1,20p >&2
        die "$2 does not build"
    }
    cp "$obj/qemu-system-x86_64" "$obj/qemu-stable-$1"
    cp "$obj/contrib/vhost-user-blk/vhost-user-blk" \
       "$obj/vhost-user-blk-stable-$1"
    say "builds: $2 (qemu-stable-$1)"
}
step 0 "the base"
n=0
while read -r name; do
    n=$((n + 1))
    (cd "$src" && patch -p1 -F0 -s --no-backup-if-mismatch <"$out/$name")
    step "$n" "$name"
done <"$out/series"
