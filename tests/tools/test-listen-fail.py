#!/usr/bin/env python3
"""A destination whose postcopy load fails after LISTEN must end.

A fake source connects to $OURS over TCP (with postcopy-preempt, a second
connection for the preempt channel), sends ADVISE and a package with
LISTEN and RUN, then something the destination cannot load.  Guest RAM
is then split between two hosts and the half here is of no use alone:
the destination must exit with status 1, by itself and soon, never hang
(the listen thread used to join the preempt thread, which sat reading
its live channel) and never die by a signal.

  before-run      the listen thread fails on the bytes after the package
                  while the main thread has yet to reach its RUN (its
                  PINGs' PONGs go unread, so it waits on the return path)
  both-fail       the package's device state fails to load in the main
                  thread while the listen thread fails on the stream after
                  it, both at once; repeated, since they race
A failure after RUN pauses instead, for a recovery (test-postcopy-relay.py).
Each with and without preempt.
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

from migstream import QEVM_HEADER, command
from qmplib import Qmp

QEMU = os.environ.get("OURS") or sys.exit("OURS is not set")
EXIT_WITHIN = 20

OPEN_RETURN_PATH = command(1, b"")
ADVISE_RAM = command(3, struct.pack(">QQ", 4096, 4096))
# Each answered with a PONG the fake source never reads: the main thread
# soon blocks on the return path, short of RUN
PINGS = command(2, struct.pack(">I", 7)) * 100000
LISTEN = command(4, b"")
RUN = command(5, b"")
# A full section for a device the destination does not have
NO_SUCH_DEVICE = (bytes([0x04]) + struct.pack(">I", 99) + bytes([9]) +
                  b"nosuchdev" + struct.pack(">II", 0, 1))
GARBAGE = bytes([0x42]) * 64


def packaged(stream):
    return command(7, struct.pack(">I", len(stream))) + stream


def run_case(tmp, preempt, package, after):
    """The destination's exit status, or a string saying what went wrong."""
    qmp_path = os.path.join(tmp, "dst.qmp")
    if os.path.exists(qmp_path):
        os.unlink(qmp_path)
    log = open(os.path.join(tmp, "dst.log"), "w")
    proc = subprocess.Popen(
        [QEMU, "-machine", "pc", "-m", "32M", "-accel", "tcg", "-nodefaults",
         "-display", "none", "-incoming", "defer",
         "-global", "migration.send-configuration=off",
         "-qmp", f"unix:{qmp_path},server=on,wait=off"],
        stdout=log, stderr=subprocess.STDOUT)
    socks = []
    try:
        qmp = Qmp(qmp_path)
        caps = [{"capability": "postcopy-ram", "state": True}]
        if preempt:
            caps.append({"capability": "postcopy-preempt", "state": True})
        qmp.execute("migrate-set-capabilities", capabilities=caps)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        qmp.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        main = socket.create_connection(("127.0.0.1", port))
        socks.append(main)
        if preempt:
            time.sleep(0.2)     # the main channel first
            socks.append(socket.create_connection(("127.0.0.1", port)))
        main.sendall(QEVM_HEADER + OPEN_RETURN_PATH + ADVISE_RAM +
                     packaged(package) + after)
        try:
            return proc.wait(EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            st = qmp.execute("query-migrate").get("status")
            return (f"still running {EXIT_WITHIN}s after the failure "
                    f"(migration {st})")
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


CASES = [
    ("before-run", LISTEN + PINGS + RUN, GARBAGE, 1),
    ("both-fail", LISTEN + NO_SUCH_DEVICE + PINGS + RUN, GARBAGE, 10),
]


def main():
    failures = 0
    with tempfile.TemporaryDirectory(prefix="listen-fail-") as tmp:
        for name, package, after, repeat in CASES:
            for preempt in (False, True):
                label = f"{name}{', preempt' if preempt else ''}"
                for i in range(repeat):
                    got = run_case(tmp, preempt, package, after)
                    if got != 1:
                        with open(os.path.join(tmp, "dst.log")) as f:
                            tail = " | ".join(f.read().strip()
                                              .splitlines()[-3:])
                        print(f"FAIL {label} (run {i + 1}): exit {got}; "
                              f"{tail}")
                        failures += 1
                        break
                else:
                    print(f"ok   {label}: exit 1, {repeat} run(s)")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
