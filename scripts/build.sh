#!/usr/bin/env bash
# Configure (once) and build, out of tree in build/obj, what the tests and
# the demo need: qemu-system-x86_64, migration-test and the unit tests the
# series adds.  meson picks up ccache when it is installed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase build

[ -d "$TREE/.git" ] || die "no tree; run make tree"

configure_args=("${QEMU_CONFIGURE_ARGS[@]}")
# Reconfigure when the options change; otherwise ninja re-runs meson itself
# when a meson.build changes.
want="${configure_args[*]}"
if [ ! -f "$OBJ/build.ninja" ] || [ "$(cat "$OBJ/.configure-args" 2>/dev/null)" != "$want" ]; then
    rm -rf "$OBJ"
    mkdir -p "$OBJ"
    say "configure"
    (cd "$OBJ" && "$TREE/configure" "${configure_args[@]}") >"$BUILD/configure.log" 2>&1 ||
        { tail -n 40 "$BUILD/configure.log"; die "configure failed (log: $BUILD/configure.log)"; }
    echo "$want" >"$OBJ/.configure-args"
fi

# vhost-user-blk (contrib, with --enable-tools) is the vhost-user test's
# back end
targets=(qemu-system-x86_64 tests/qtest/migration-test
         contrib/vhost-user-blk/vhost-user-blk)
# Unit tests the series adds are listed, one ninja target a line.
if [ -f "$TOP/tests/unit-targets" ]; then
    while read -r t; do
        [ -n "$t" ] && [ "${t#\#}" = "$t" ] && targets+=("$t")
    done <"$TOP/tests/unit-targets"
fi

say "ninja ${targets[*]}"
if ! ninja -C "$OBJ" "${targets[@]}" >"$BUILD/build.log" 2>&1; then
    grep -E 'error:|Error|FAILED' "$BUILD/build.log" | sed -n 1,30p >&2
    # Name the patches that touched the files the compiler complained about.
    files=$(grep -oE '[^ :]+\.[ch]:[0-9]+:[0-9]+: error' "$BUILD/build.log" |
            cut -d: -f1 | sed -E "s|^(\.\./)+qemu/||; s|^$TREE/||" | sort -u)
    if [ -n "$files" ]; then
        echo "patches of the series that touch the failing files:" >&2
        # shellcheck disable=SC2086
        git -C "$TREE" log --format='  %h %s' base..HEAD -- $files >&2 || true
    fi
    die "build failed (log: $BUILD/build.log)"
fi
link_firmware "$OBJ"
say "built: $OBJ/qemu-system-x86_64"
