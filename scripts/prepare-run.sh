#!/usr/bin/env bash
# What make demo and make bench need once the host is set up: a tree, a
# build of it, and the guest.  The tree is made only when there is none
# (on a developer's machine build/qemu is theirs: the demo runs what it
# holds, as make test does); the build runs only when the binary is
# missing or older than a file of the tree, and is incremental then.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ ! -d "$TREE/.git" ]; then
    bash "$TOP/scripts/fetch-base.sh"
    bash "$TOP/scripts/make-tree.sh"
fi
bin="$OBJ/qemu-system-x86_64"
if [ ! -x "$bin" ]; then
    say "no $bin yet: building"
    bash "$TOP/scripts/build.sh"
else
    newer=$(find "$TREE" -path "$TREE/.git" -prune -o -type f -newer "$bin" -print -quit)
    if [ -n "$newer" ]; then
        say "${newer#"$TOP"/} is newer than ${bin#"$TOP"/}: building"
        bash "$TOP/scripts/build.sh"
    else
        say "build is up to date: $bin"
    fi
fi
bash "$TOP/scripts/make-guest.sh"
