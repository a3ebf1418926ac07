#!/usr/bin/env python3
"""Answer a migrating $OURS with malformed return path messages.

A fake destination listens on loopback, takes the source's stream and
writes one return path message back.  A malformed one, or a SHUT that
says the destination failed, must fail the migration with an error in
query-migrate's error-desc that names what was wrong, and the source QEMU
must keep running.  SHUT(0), the normal end, is the control: the
migration completes.
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from qmplib import Qmp

QEMU = os.environ.get("OURS") or sys.exit("OURS is not set")


def rp(msg_type, payload, length=None):
    if length is None:
        length = len(payload)
    return struct.pack(">HH", msg_type, length) + payload


# name, what the fake destination answers, status, text error-desc holds
CASES = [
    ("unknown message", rp(9, b""), "failed",
     "unknown return path message 9"),
    ("PONG of 3 bytes", rp(2, b"\0\0\0"), "failed",
     "PONG: payload of 3 bytes, expected 4"),
    ("REQ_PAGES_ID name longer than the message",
     rp(3, struct.pack(">QI", 0, 4096) + b"\x09pc.ram"), "failed",
     "RAM block name of 9 bytes"),
    ("message longer than a source accepts", rp(4, b"\0" * 600), "failed",
     "message of 600 bytes"),
    ("SHUT with an error", rp(1, struct.pack(">I", 1)), "failed",
     "the destination failed to load the migration"),
    ("SHUT(0), the control", rp(1, struct.pack(">I", 0)), "completed", ""),
]


def fake_destination(listener, answer):
    """Read the stream; answer once the source has sent all of it."""
    conn, _ = listener.accept()
    conn.settimeout(1.0)
    try:
        while True:
            try:
                if not conn.recv(65536):
                    break
            except socket.timeout:
                # The stream is idle: the source waits for the return path.
                conn.sendall(answer)
                conn.settimeout(5.0)
    except OSError:
        pass
    finally:
        conn.close()


def run_case(tmp, answer):
    qmp_path = os.path.join(tmp, "qmp.sock")
    if os.path.exists(qmp_path):
        os.unlink(qmp_path)
    proc = subprocess.Popen(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{qmp_path},server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    thread = threading.Thread(target=fake_destination,
                              args=(listener, answer), daemon=True)
    thread.start()
    try:
        qmp = Qmp(qmp_path)
        qmp.execute("migrate-set-capabilities", capabilities=[
            {"capability": "return-path", "state": True}])
        qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        info = {}
        for _ in range(300):
            info = qmp.execute("query-migrate")
            if info.get("status") in ("completed", "failed"):
                break
            time.sleep(0.1)
        alive = proc.poll() is None and qmp.execute("query-status")
        return info, bool(alive)
    finally:
        proc.kill()
        proc.communicate()
        listener.close()


def main():
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bad-rp-") as tmp:
        for name, answer, want, text in CASES:
            info, alive = run_case(tmp, answer)
            status, desc = info.get("status"), info.get("error-desc", "")
            if status != want or text not in desc or not alive:
                print(f"FAIL {name}: status {status}, error-desc '{desc}', "
                      f"source {'running' if alive else 'gone'}")
                failures += 1
            else:
                print(f"ok   {name}: {status} {desc}")
    print(f"{len(CASES) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
