#!/usr/bin/env python3
"""Postcopy's TCP connections must not hold small writes back (Nagle).

Source ($OURS, or SRC) and destination ($OURS, or DST) run migration-test's
boot sector guest and migrate over TCP on loopback, held to a slow
max-postcopy-bandwidth so that postcopy lasts.  In postcopy-active the test
takes a copy of each QEMU's TCP sockets (pidfd_getfd(2)) and reads
TCP_NODELAY on every connected one: the main channel on both sides (it
carries requested pages one way and page requests the other), and with
--preempt the preempt channel too.  Without TCP_NODELAY a requested page
or a request written right after another waits for the peer's
acknowledgement of the first, which the peer may delay by up to 40 ms.
Then postcopy completes and the guest must run on with its memory intact.

Stock 7.2 sets TCP_NODELAY on none of them: this test fails with it on
either side.
"""

import argparse
import ctypes
import os
import socket
import sys
import time

from bootguest import (run_guests_test, start_tcp_postcopy, status,
                       wait_status)

SYS_PIDFD_GETFD = 438       # x86_64; os.pidfd_open() opens the pidfd


def tcp_sockets(pid):
    """Copies of @pid's connected TCP sockets: [(socket, peer port)]."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(
                        "socket:"):
                    continue
            except OSError:
                continue
            mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if mine < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd {pid}/{fd}")
            s = socket.socket(fileno=mine)
            if (s.family not in (socket.AF_INET, socket.AF_INET6) or
                    s.type != socket.SOCK_STREAM or
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                s.close()
                continue
            try:
                found.append((s, s.getpeername()[1]))
            except OSError:
                s.close()       # not connected (any more)
    finally:
        os.close(pidfd)
    return found


def check_no_delay(name, pid, port, want, timeout=5):
    """@pid's connections to or from @port: @want of them (the preempt
    channel connects at the switch: wait for it), all NODELAY."""
    deadline = time.monotonic() + timeout
    while True:
        conns = [(s, p) for s, p in tcp_sockets(pid)
                 if p == port or s.getsockname()[1] == port]
        if len(conns) >= want or time.monotonic() > deadline:
            break
        for s, _ in conns:
            s.close()
        time.sleep(0.01)
    try:
        if len(conns) != want:
            raise AssertionError(f"{name}: {len(conns)} migration "
                                 f"connections, expected {want}")
        for s, _ in conns:
            if not s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                raise AssertionError(
                    f"{name}: connection {s.getsockname()} -> "
                    f"{s.getpeername()} in postcopy without TCP_NODELAY")
    finally:
        for s, _ in conns:
            s.close()
    print(f"{name}: {want} connection(s), TCP_NODELAY on each")


def migrate(guests, preempt):
    caps = [{"capability": "postcopy-ram", "state": True}]
    if preempt:
        caps.append({"capability": "postcopy-preempt", "state": True})
    src, dst, port = start_tcp_postcopy(
        guests, caps,
        {"max-bandwidth": 32 << 20, "max-postcopy-bandwidth": 4 << 20},
        delay=0.5)
    wait_status(dst, "target", ("postcopy-active",), 30)
    want = 2 if preempt else 1
    check_no_delay("source", guests.procs["source"].pid, port, want)
    check_no_delay("target", guests.procs["target"].pid, port, want)
    if status(src) != "postcopy-active":
        raise AssertionError("postcopy ended during the check; the "
                             "test needs it to last longer")

    src.execute("migrate-set-parameters",
                **{"max-postcopy-bandwidth": 0})
    wait_status(src, "source", ("completed",), 120)
    wait_status(dst, "target", ("completed",), 120)
    # Generous, as in switch-fail: in 4 of about 70 runs here the
    # guest (KVM on PVM) ran slowly after completing, still progressing
    value = guests.check_runs_intact(dst, "target", timeout=30)
    print(f"completed; guest memory consistent (first page holds "
          f"{value})")
    guests.check_alive()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preempt", action="store_true",
                    help="postcopy-preempt on both sides")
    args = ap.parse_args()

    return run_guests_test("postcopy-nodelay-",
                           lambda guests: migrate(guests, args.preempt))


if __name__ == "__main__":
    sys.exit(main())
