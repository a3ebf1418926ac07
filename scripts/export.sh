#!/usr/bin/env bash
# Write the commits base..HEAD of build/qemu back into patches/ as git
# format-patch files, with patches/series giving their order and a cover
# letter (patch 0) carrying the blurb in patches/cover-letter.in and the
# diffstat.  The output depends only on the commits, so exporting an
# unchanged tree leaves patches/ unchanged.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ -d "$TREE/.git" ] || die "no tree to export; run make tree"
cd "$TREE"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    git status --short --untracked-files=no | sed -n 1,20p
    die "$TREE has uncommitted changes; commit them first"
fi

out="$TOP/patches"
tmp=$(mktemp -d "$BUILD/export.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

n=$(git rev-list --count base..HEAD)
if [ "$n" -gt 0 ]; then
    # --zero-commit and --no-signature keep the files free of anything that
    # changes when the same commits are re-applied elsewhere; a fixed
    # abbreviation length keeps the index lines independent of repo size.
    git -c core.abbrev=12 format-patch -q --zero-commit --no-signature --cover-letter \
        --subject-prefix=PATCH -o "$tmp" base..HEAD
    cover="$tmp/0000-cover-letter.patch"
    blurb="$out/cover-letter.in"
    if [ -f "$blurb" ]; then
        subject=$(head -n1 "$blurb")
        python3 - "$cover" "$blurb" "$subject" <<'PY'
import sys
cover, blurb, subject = sys.argv[1:]
body = open(blurb, encoding="utf-8").read().split("\n", 1)[1].strip("\n")
text = open(cover, encoding="utf-8").read()
text = text.replace("*** SUBJECT HERE ***", subject)
text = text.replace("*** BLURB HERE ***", body)
open(cover, "w", encoding="utf-8").write(text)
PY
    fi
    # The cover letter's date is the export time; pin it to the last
    # commit's so an unchanged series exports byte for byte the same.
    sed -i "s/^Date: .*/Date: $(git log -1 --format=%aD HEAD)/" "$cover"
fi

rm -f "$out"/[0-9][0-9][0-9][0-9]-*.patch
mkdir -p "$out"
: >"$out/series"
for f in "$tmp"/*.patch; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    cp "$f" "$out/$b"
    [ "$b" = 0000-cover-letter.patch ] || echo "$b" >>"$out/series"
done
say "exported $n patches to patches/ (see patches/series)"
