#!/usr/bin/env python3
"""Feed malformed QEMU_VM_COMMAND sections to an incoming QEMU.

Each case writes a migration stream (header, then command sections) to a
file and starts $OURS with `-incoming exec:cat FILE`.  A malformed command
must fail the incoming migration with an error that names what was wrong,
and QEMU must exit by itself with status 1, never by a signal (a crash or
an abort).  Well-formed streams must load and leave QEMU running with the
migration completed: the control, and a RAM block that grows after
ADVISE (its new pages discarded) without an error.

--case TEXT runs only the malformed cases whose name contains TEXT (and
the well-formed streams): the form a stable fix names to show that stock
7.2 fails a case and the fix passes it.
"""

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time

from migstream import QEVM_HEADER, SECTION_EOF, command
from qmplib import Qmp

QEMU = os.environ.get("OURS") or sys.exit("OURS is not set")


def discard(name, ranges, version=0, name_len=None, terminator=0):
    body = bytes([version, len(name) if name_len is None else name_len])
    body += name + bytes([terminator])
    for start, length in ranges:
        body += struct.pack(">QQ", start, length)
    return command(6, body)


ADVISE_NO_RAM = command(3, b"")
# ADVISE for the pc machine's RAM: 4 KiB pages only, 4 KiB target pages
ADVISE_RAM = command(3, struct.pack(">QQ", 4096, 4096))
LISTEN = command(4, b"")
RUN = command(5, b"")


def packaged(stream):
    return command(7, struct.pack(">I", len(stream))) + stream


# name, stream after the header, text the error must contain, and for
# the cases on guest RAM the options that give QEMU some, postcopy-ram on
WITH_RAM = ["-machine", "pc", "-m", "32M", "-accel", "tcg",
            "-global", "migration.x-postcopy-ram=on"]
HOLD_OPEN = 3
BAD = [
    ("unknown command", command(0x20, b""),
     "unknown migration command 32"),
    ("command 0", command(0, b""), "unknown migration command 0"),
    ("PING too short", command(2, b"\0\0\0"),
     "PING: payload of 3 bytes, expected 4"),
    ("LISTEN with a payload", command(4, b"\0"),
     "POSTCOPY_LISTEN: payload of 1 bytes, expected 0"),
    ("ADVISE of 8 bytes", command(3, b"\0" * 8), "expected 0 or 16"),
    ("payload cut short by the end of the stream",
     command(2, b"\0\0", length=4), "stream ended in its payload"),
    ("DISCARD name longer than the payload",
     ADVISE_NO_RAM + discard(b"pc.ram", [(0, 4096)], name_len=200),
     "RAM block name of 200 bytes"),
    ("DISCARD version 1",
     ADVISE_NO_RAM + discard(b"pc.ram", [(0, 4096)], version=1),
     "version 1, expected 0"),
    ("DISCARD without terminator",
     ADVISE_NO_RAM + discard(b"pc.ram", [(0, 4096)], terminator=7),
     "no terminator"),
    ("DISCARD half a range",
     ADVISE_NO_RAM + command(6, b"\0\x06pc.ram\0" + b"\0" * 8),
     "not a whole number of ranges"),
    ("DISCARD range wrapping around",
     ADVISE_NO_RAM + discard(b"pc.ram", [(2**64 - 4096, 8192)]),
     "bad range"),
    ("DISCARD before ADVISE",
     discard(b"pc.ram", [(0, 4096)]), "in wrong postcopy state"),
    ("RECV_BITMAP with trailing bytes", command(10, b"\x02pc.ram"),
     "bytes after the RAM block name"),
    ("RECV_BITMAP of an unknown block", command(10, b"\x06nosuch"),
     "no RAM block 'nosuch'"),
    ("PING without a return path", command(2, b"\0\0\0\1"),
     "received with no return path"),
    ("LISTEN before ADVISE", packaged(LISTEN),
     "POSTCOPY_LISTEN: postcopy cannot go from state none to listening"),
    ("RUN before LISTEN", ADVISE_NO_RAM + command(5, b""),
     "POSTCOPY_RUN: postcopy cannot go from state advise to running"),
    ("ADVISE twice", ADVISE_NO_RAM + ADVISE_NO_RAM,
     "POSTCOPY_ADVISE: postcopy cannot go from state advise to advise"),
    ("DISCARD range past the end of its block",
     ADVISE_RAM + discard(b"pc.ram", [(32 * 2**20 - 4096, 8192)]),
     "range 0x1fff000+0x2000 is outside RAM block 'pc.ram'", WITH_RAM),
    ("DISCARD range far past its block",
     ADVISE_RAM + discard(b"pc.bios", [(4096, 2**63)]),
     "is outside RAM block 'pc.bios'", WITH_RAM),
    ("DISCARD range off the block's pages",
     ADVISE_RAM + discard(b"pc.ram", [(512, 4096)]),
     "is not on its 0x1000-byte pages", WITH_RAM),
    ("DISCARD of an unknown block",
     ADVISE_RAM + discard(b"nosuch", [(0, 4096)]),
     "POSTCOPY_RAM_DISCARD: no RAM block 'nosuch'", WITH_RAM),
    ("DISCARD then the end of the stream",
     ADVISE_RAM + discard(b"pc.ram", [(0, 4096)]) + bytes([SECTION_EOF]),
     "ended after POSTCOPY_RAM_DISCARD without POSTCOPY_LISTEN", WITH_RAM),
    ("LISTEN outside PACKAGED", ADVISE_RAM + LISTEN,
     "POSTCOPY_LISTEN: not in a PACKAGED command", WITH_RAM),
    # The listen thread reads the main stream by then: it stays open, as a
    # socket would, so that the failure is the main thread's
    ("PACKAGED with LISTEN and no RUN",
     ADVISE_RAM + packaged(LISTEN + bytes([SECTION_EOF])),
     "package has POSTCOPY_LISTEN but ends without POSTCOPY_RUN",
     WITH_RAM, HOLD_OPEN),
]


SECTION_START = 0x01
SECTION_FOOTER = 0x7e
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_EOS = 0x10


def ram_sizes(blocks, section_id=1):
    """A "ram" section that only gives RAM block sizes (the start of
    every RAM stream): [(name, bytes)]."""
    body = struct.pack(">Q", sum(n for _, n in blocks) |
                       RAM_SAVE_FLAG_MEM_SIZE)
    for name, size in blocks:
        body += bytes([len(name)]) + name + struct.pack(">Q", size)
    body += struct.pack(">Q", RAM_SAVE_FLAG_EOS)
    return (bytes([SECTION_START]) + struct.pack(">I", section_id) +
            bytes([3]) + b"ram" + struct.pack(">II", 0, 4) + body +
            bytes([SECTION_FOOTER]) + struct.pack(">I", section_id))


# Well-formed streams: each must load, QEMU staying up, with none of the
# text given on its stderr.  Name, stream, options, text.
GOOD = [
    ("control: a well-formed stream loads",
     ADVISE_NO_RAM + bytes([SECTION_EOF]), (), None),
    # The ACPI tables' block is resizable (0x20000 bytes used of 0x200000
    # here): growing it after ADVISE discards its new pages, a range past
    # the used length that the resize notifiers see before it changes
    ("a RAM block grown after ADVISE",
     ADVISE_RAM + ram_sizes([(b"/rom@etc/acpi/tables", 0x40000)]) +
     bytes([SECTION_EOF]), WITH_RAM, "discard of resized RAM failed"),
]


def start(tmp, stream, extra=(), hold=0):
    path = os.path.join(tmp, "stream")
    with open(path, "wb") as f:
        f.write(QEVM_HEADER + stream)
    qmp_path = os.path.join(tmp, "qmp.sock")
    if os.path.exists(qmp_path):
        os.unlink(qmp_path)
    source = f"cat {path}; exec sleep {hold}" if hold else f"cat {path}"
    args = [QEMU, "-machine", "none", "-nodefaults", "-display", "none",
            "-global", "migration.send-configuration=off",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-incoming", f"exec:{source}"] + list(extra)
    return subprocess.Popen(args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True), qmp_path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", action="append", default=[],
                        help="run only cases whose name contains this")
    args = parser.parse_args()
    cases = [c for c in BAD
             if not args.case or any(t in c[0] for t in args.case)]
    if not cases:
        sys.exit(f"no case matches {args.case}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bad-commands-") as tmp:
        for name, stream, expect, *extra in cases:
            proc, _ = start(tmp, stream, *extra)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                print(f"FAIL {name}: QEMU did not fail the migration")
                failures += 1
                continue
            if proc.returncode != 1:
                print(f"FAIL {name}: QEMU exited with {proc.returncode}, "
                      f"expected 1\n{err}")
                failures += 1
            elif expect not in err:
                print(f"FAIL {name}: error lacks '{expect}':\n{err}")
                failures += 1
            else:
                print(f"ok   {name}: {err.strip().splitlines()[0]}")

        # Well-formed streams load and QEMU stays up.
        for name, stream, extra, bad_text in GOOD:
            proc, qmp_path = start(tmp, stream, extra)
            try:
                qmp = Qmp(qmp_path)
                status = None
                for _ in range(100):
                    status = qmp.execute("query-migrate").get("status")
                    if status in ("completed", "failed"):
                        break
                    time.sleep(0.1)
                alive = proc.poll() is None
            finally:
                proc.kill()
                _, err = proc.communicate()
            if status != "completed" or not alive:
                print(f"FAIL {name}: status {status}, "
                      f"exit {proc.returncode}\n{err}")
                failures += 1
            elif bad_text and bad_text in err:
                print(f"FAIL {name}: '{bad_text}' in\n{err}")
                failures += 1
            else:
                print(f"ok   {name}")
    print(f"{len(cases) + len(GOOD) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
