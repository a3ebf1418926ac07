#!/usr/bin/env python3
"""Write a gzip'd newc cpio archive of a directory, reproducibly.

    mkinitramfs.py DIR OUTPUT

Entries are sorted, owned by root, dated 0; symlinks are kept.
"""

import gzip
import os
import stat
import sys


def entry(name, st, data, ino):
    fields = [ino, st.st_mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
              len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def main():
    root, output = sys.argv[1], sys.argv[2]
    paths = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            paths.append(os.path.relpath(os.path.join(d, n), root))
    parts = []
    for ino, rel in enumerate(sorted(paths), 1):
        full = os.path.join(root, rel)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            data = os.readlink(full).encode()
        elif stat.S_ISREG(st.st_mode):
            data = open(full, "rb").read()
        else:
            data = b""
        parts.append(entry(rel, st, data, ino))
    parts.append(entry("TRAILER!!!", os.stat(root), b"", 0))
    with open(output, "wb") as f:
        f.write(gzip.compress(b"".join(parts), mtime=0))


if __name__ == "__main__":
    main()
