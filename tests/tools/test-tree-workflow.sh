#!/usr/bin/env bash
# The series workflow, in a scratch copy of the project's scripts and
# patches that shares the unpacked base:
#  - make tree then make export on an unchanged series changes nothing;
#  - make tree refuses while the tree has a commit not in patches/;
#  - a patch that does not apply fails make tree, naming the patch.
set -euo pipefail
TOP=${TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
scratch=$(mktemp -d "$TOP/build/tree-workflow.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$scratch"' EXIT

fail() { echo "FAIL: $*"; exit 1; }

mkdir -p "$scratch/build"
cp -a "$TOP/scripts" "$TOP/patches" "$TOP/.gitignore" "$scratch/"
ln -s "$TOP/build/base-src" "$scratch/build/base-src"
cp "$TOP/build/base-src.version" "$scratch/build/"
cd "$scratch"
git init -q . && git add -A && git -c user.name=t -c user.email=t@t commit -q -m init

bash scripts/make-tree.sh >build/log 2>&1 || { cat build/log; fail "make-tree on the series failed"; }
bash scripts/export.sh >>build/log 2>&1 || { cat build/log; fail "export failed"; }
[ -z "$(git status --porcelain)" ] || { git status --short; fail "tree+export of an unchanged series changed patches/"; }
echo "ok: tree and export of an unchanged series leave patches/ unchanged"

n=$(grep -c . patches/series)
[ "$(git -C build/qemu rev-list --count base..HEAD)" = "$n" ] ||
    fail "the tree does not carry the $n patches of the series"

# A second make-tree reuses the tree and keeps untouched files' times.
stamp=$(stat -c %Y build/qemu/README.rst)
sleep 1
bash scripts/make-tree.sh >build/log 2>&1 || { cat build/log; fail "make-tree on an existing tree failed"; }
[ "$(stat -c %Y build/qemu/README.rst)" = "$stamp" ] ||
    fail "regenerating touched a file the series does not change"
echo "ok: regenerating keeps untouched files as they were"

# An unexported commit makes make-tree refuse, and survives.
echo "/* scratch */" >>build/qemu/README.rst
git -C build/qemu commit -q -a -m "scratch: not exported"
if bash scripts/make-tree.sh >build/log 2>&1; then
    fail "make-tree threw away an unexported commit"
fi
grep -q "differ from patches/series" build/log || { cat build/log; fail "refusal did not say why"; }
git -C build/qemu log -1 --format=%s | grep -q "scratch: not exported" ||
    fail "the unexported commit is gone"
echo "ok: make-tree refuses to drop an unexported commit"

# Uncommitted changes make it refuse as well.
git -C build/qemu reset -q --hard HEAD~1
echo "/* scratch */" >>build/qemu/README.rst
if bash scripts/make-tree.sh >build/log 2>&1; then
    fail "make-tree threw away uncommitted changes"
fi
grep -q "uncommitted changes" build/log || { cat build/log; fail "refusal did not say why"; }
git -C build/qemu checkout -q -- README.rst
echo "ok: make-tree refuses to drop uncommitted changes"

# A patch that does not apply is named.
cat >patches/9999-broken.patch <<'PATCH'
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: Test <test@localhost>
Date: Thu, 1 Jan 2026 00:00:00 +0000
Subject: [PATCH] broken: Does not apply

---
 README.rst | 1 +
 1 file changed, 1 insertion(+)

diff --git a/README.rst b/README.rst
--- a/README.rst
+++ b/README.rst
@@ -1,3 +1,4 @@
 this line is not in README.rst
+nor is this one
 and neither is this
 or this
PATCH
echo 9999-broken.patch >>patches/series
rm -rf build/qemu
if bash scripts/make-tree.sh >build/log 2>&1; then
    fail "a patch that does not apply went through"
fi
grep -q "patch 9999-broken.patch does not apply" build/log || { cat build/log; fail "the broken patch was not named"; }
echo "ok: a patch that does not apply is named"
