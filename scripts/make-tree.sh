#!/usr/bin/env bash
# Generate build/qemu: a git repository whose first commit is the pristine
# base (tag "base") with patches/series applied on top by git am.
#
# An existing tree is reused: reset to base and the series re-applied, so
# files the series does not touch keep their timestamps and a rebuild stays
# incremental.  Commits (or changes) in it that are not in patches/ are never
# thrown away: the script refuses and says what to do.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase tree

SERIES="$TOP/patches/series"
base_version=$(cat "$BUILD/base-src.version" 2>/dev/null) ||
    die "no unpacked base; run scripts/fetch-base.sh"

series_patches() {
    [ -f "$SERIES" ] || return 0
    grep -v -e '^#' -e '^[[:space:]]*$' "$SERIES"
}

# Stable patch ids of the series files and of the tree's commits.
series_ids() {
    local p
    series_patches | while read -r p; do
        git patch-id --stable <"$TOP/patches/$p" | cut -d' ' -f1
    done
}
tree_ids() {
    local c
    git -C "$TREE" rev-list --reverse base..HEAD | while read -r c; do
        git -C "$TREE" show "$c" | git patch-id --stable | cut -d' ' -f1
    done
}

create_base() {
    say "creating $TREE from the base ($base_version)"
    rm -rf "$TREE"
    mkdir -p "$TREE"
    cp -a "$BUILD/base-src/." "$TREE/"
    cd "$TREE"
    git init -q -b master .
    git config user.name "${GIT_AUTHOR_NAME:-qemu-postcopy developers}"
    git config user.email "${GIT_AUTHOR_EMAIL:-qemu-postcopy@localhost}"
    git config am.keepcr false
    git add -A -f .
    # A fixed identity and date make the base commit the same on every host.
    GIT_AUTHOR_NAME="Debian QEMU" GIT_AUTHOR_EMAIL="pkg-qemu-devel@lists.alioth.debian.org" \
    GIT_COMMITTER_NAME="Debian QEMU" GIT_COMMITTER_EMAIL="pkg-qemu-devel@lists.alioth.debian.org" \
    GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
        git commit -q -m "Base: Debian qemu $base_version (QEMU $(cat VERSION))"
    git tag base
    git config qemu-postcopy.base "$base_version"
}

if [ -d "$TREE/.git" ]; then
    cd "$TREE"
    if ! git rev-parse -q --verify base >/dev/null; then
        die "$TREE has no 'base' tag; move it away and run make tree again"
    fi
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
        git status --short --untracked-files=no | sed -n 1,20p
        die "$TREE has uncommitted changes; commit them and run 'make export', or discard them (git -C $TREE checkout -- .)"
    fi
    if [ -f "$TREE/.git/rebase-apply/applying" ]; then
        die "$TREE is in the middle of git am; finish or abort it first"
    fi
    if [ "$(tree_ids)" != "$(series_ids)" ]; then
        if [ "${FORCE:-0}" != 1 ]; then
            git log --oneline base..HEAD | sed -n 1,20p
            die "the commits in $TREE (above) differ from patches/series; export them first (make export), or regenerate anyway with FORCE=1 (HEAD is then kept on a backup branch)"
        fi
        backup="backup/$(date +%Y%m%d-%H%M%S)"
        git branch -f "$backup" HEAD
        warn "FORCE=1: the tree's commits are kept on branch $backup"
    fi
fi

if [ -d "$TREE/.git" ] && [ "$(git -C "$TREE" config qemu-postcopy.base || true)" = "$base_version" ]; then
    git -C "$TREE" checkout -q -B master base
else
    create_base
fi

cd "$TREE"
n=0
while read -r p; do
    [ -f "$TOP/patches/$p" ] || die "patches/series names $p, which does not exist"
    if ! git am -q --keep-cr "$TOP/patches/$p" >"$BUILD/am.log" 2>&1; then
        cat "$BUILD/am.log" >&2
        git am --abort >/dev/null 2>&1 || true
        die "patch $p does not apply to the base"
    fi
    n=$((n + 1))
done < <(series_patches)
say "tree: base + $n patches at $(git rev-parse --short HEAD)"
