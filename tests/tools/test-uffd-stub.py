#!/usr/bin/env python3
"""Postcopy must build where userfaultfd does not exist.

migration/meson.build builds postcopy-fault.c, postcopy-fault-around.c
and postcopy-uffd.c on Linux only (util/userfaultfd.c likewise), and
postcopy-uffd-stub.c everywhere else; every other postcopy file is built
on every host QEMU 7.2 builds on.  This host is Linux, so the stub is
never compiled here and a build elsewhere would be the first to find it
stale.  The test checks, against the tree's build ($OBJ):

- the stub compiles with the flags of its neighbours, warnings as errors;
- every symbol that the rest of qemu-system-x86_64 takes from the
  Linux-only objects is defined by the stub, and the stub needs nothing
  from them: where they are not built, the stub is what links;
- the postcopy objects built on every host call neither util/
  userfaultfd.c nor any of the Linux or POSIX-only functions (mmap,
  ioctl, syscall, ...) that 7.2 kept under Linux guards.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile

OBJ = os.environ.get("OBJ") or sys.exit("OBJ is not set")
TREE = os.environ.get("TREE") or sys.exit("TREE is not set")

# What the stub stands in for
LINUX_ONLY = ("migration_postcopy-fault.c.o",
              "migration_postcopy-fault-around.c.o",
              "migration_postcopy-uffd.c.o")
# Linux-only too, but without a stub: 7.2's own callers (ram.c's
# background snapshot) keep it under Linux guards, and postcopy's files
# built everywhere must not call it at all
UTIL_UFFD = "util_userfaultfd.c.o"
# Postcopy's objects built on every host
EVERYWHERE_PREFIXES = ("migration_postcopy-", "migration_command.c.o",
                       "migration_return-path-msg.c.o")
# (munlockall() is POSIX's and Windows lacks it, but postcopy-dest.c
# calls it under CONFIG_POSIX, which a Linux build cannot tell apart)
NOT_PORTABLE = {"mmap", "mmap64", "munmap", "ioctl", "syscall", "eventfd",
                "madvise", "userfaultfd"}


def nm(paths):
    """Defined global and undefined symbols of each object or archive
    member in @paths: {member: (defined, undefined)}"""
    out = subprocess.run(["nm", "-A"] + list(paths), capture_output=True,
                         text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        # path[:member]:value type symbol (no colon in a C symbol)
        loc, sep, rest = line.rpartition(":")
        if not sep:
            continue
        parts = rest.split()
        if len(parts) == 2:
            kind, sym = parts
        elif len(parts) == 3:
            _, kind, sym = parts
        else:
            continue
        defined, undefined = syms.setdefault(loc, (set(), set()))
        if kind == "U":
            undefined.add(sym)
        elif kind.isupper():
            defined.add(sym)
    return syms


def compile_stub(tmp):
    with open(os.path.join(OBJ, "compile_commands.json")) as f:
        commands = json.load(f)
    near = [c for c in commands
            if c["file"].endswith("migration/postcopy-dest.c")]
    if not near:
        sys.exit("no compile command for migration/postcopy-dest.c in "
                 f"{OBJ}/compile_commands.json")
    args = shlex.split(near[0]["command"])
    out = os.path.join(tmp, "postcopy-uffd-stub.o")
    stub = os.path.join(TREE, "migration/postcopy-uffd-stub.c")
    new = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MQ"):
            skip = True
            continue
        if a in ("-MD",) or a.endswith("postcopy-dest.c"):
            continue
        new.append(a)
    new += ["-Werror", "-c", stub, "-o", out]
    r = subprocess.run(new, cwd=near[0]["directory"], capture_output=True,
                       text=True)
    if r.returncode:
        print(f"FAIL: {stub} does not compile:\n{r.stderr}")
        return None
    return out


def main():
    failures = 0
    link = subprocess.run(["ninja", "-C", OBJ, "-t", "commands",
                           "qemu-system-x86_64"], capture_output=True,
                          text=True, check=True).stdout.splitlines()[-1]
    inputs = [w for w in shlex.split(link) if w.endswith((".o", ".a"))]
    linux_defined = set()
    util_defined = set()
    needed = {}         # symbol -> objects built everywhere that need it
    everywhere = {}     # postcopy's objects built everywhere -> undefined
    for member, (defined, undefined) in nm(
            os.path.join(OBJ, p) for p in inputs).items():
        name = os.path.basename(member)
        if name in LINUX_ONLY:
            linux_defined |= defined
            continue
        if name == UTIL_UFFD:
            util_defined |= defined
            continue
        for sym in undefined:
            needed.setdefault(sym, set()).add(name)
        if name.startswith(EVERYWHERE_PREFIXES):
            everywhere[name] = undefined
    if not linux_defined or not util_defined:
        sys.exit(f"{LINUX_ONLY} and {UTIL_UFFD} are not all in the link of "
                 "qemu-system-x86_64: has the build changed?")
    needed = {s: sorted(w) for s, w in needed.items() if s in linux_defined}
    not_portable = {}
    for name, undefined in everywhere.items():
        bad = undefined & (NOT_PORTABLE | util_defined)
        if bad:
            not_portable[name] = sorted(bad)

    with tempfile.TemporaryDirectory(prefix="uffd-stub-") as tmp:
        stub = compile_stub(tmp)
        if stub is None:
            return 1
        (stub_defined, stub_undefined), = nm([stub]).values()
    print(f"the stub compiles; {len(needed)} symbols of the Linux-only "
          "objects are used elsewhere")
    for sym, users in sorted(needed.items()):
        if sym not in stub_defined:
            print(f"FAIL: {sym} (used by {', '.join(users)}) has no stub")
            failures += 1
    for sym in sorted(stub_undefined & (linux_defined | util_defined)):
        print(f"FAIL: the stub needs {sym}, which only the Linux-only "
              "objects define")
        failures += 1
    for name, calls in sorted(not_portable.items()):
        print(f"FAIL: {name}, built on every host, calls "
              f"{', '.join(calls)}")
        failures += 1
    if failures:
        return 1
    print("ok: where userfaultfd is missing the stub links, and the "
          "postcopy files built everywhere call no Linux-only function")
    return 0


if __name__ == "__main__":
    sys.exit(main())
