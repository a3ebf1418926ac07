#!/usr/bin/env python3
"""A postcopy source against a destination that answers badly.

A fake destination takes the stream of a postcopy source ($OURS, a pc
machine whose RAM a generic loader fills with 16 MiB of random bytes,
max-postcopy-bandwidth held low so that postcopy lasts) and writes what
it likes on the return path.  Two parts:

scenarios, each a fixed sequence:
  bad-active   a malformed message in postcopy-active: the source pauses
               (postcopy-paused), its QMP answers; a recovery to a fake
               destination that answers the recovery's RECV_BITMAP with
               nonsense pauses again, never stays in postcopy-recover;
               migrate_cancel from postcopy-paused ends in cancelled, and
               a new migration can start
  cancel-active, cancel-recover
               migrate_cancel in postcopy-active, and in postcopy-recover
               while the destination says nothing: cancelled, never back
               to postcopy-paused, never stuck in cancelling

fuzz (--runs N --seed S): random and mutated sequences of REQ_PAGES,
  REQ_PAGES_ID, PONG, SHUT, RECV_BITMAP, RESUME_ACK and unknown types,
  some cut short, written during postcopy-active.  The source must end
  in completed or failed, or pause (postcopy-paused, from which
  migrate_cancel ends it), within the time limit, with QMP answering,
  and never die.

  test-rp-postcopy.py [--scenarios] [--fuzz] [--runs N] [--seed S]
                      [--only NAME]
"""

import argparse
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from qmplib import Qmp, QmpError

QEMU = os.environ.get("OURS") or sys.exit("OURS is not set")
RAM_MIB = 64
LOADED_MIB = 16
SHUT, PONG, REQ_PAGES_ID, REQ_PAGES, RECV_BITMAP, RESUME_ACK = 1, 2, 3, 4, 5, 6
STEP_TIMEOUT = 20


def rp(msg_type, payload, length=None):
    if length is None:
        length = len(payload)
    return struct.pack(">HH", msg_type, length) + payload


class FakeDestination:
    """Accepts one connection, reads everything, writes when told."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.conn = None
        self.connected = threading.Event()
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            self.conn, _ = self.listener.accept()
        except OSError:
            return
        self.connected.set()
        try:
            while True:
                data = self.conn.recv(1 << 16)
                if not data:
                    break
                self.received += len(data)
        except OSError:
            pass

    def send(self, data):
        if not self.connected.wait(STEP_TIMEOUT):
            raise RuntimeError("the source never connected")
        try:
            self.conn.sendall(data)
        except OSError:
            pass    # the source may have closed it already

    def close(self):
        for s in (self.conn, self.listener):
            if s:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


class Source:
    def __init__(self, tmp):
        self.tmp = tmp
        blob = os.path.join(tmp, "ram.bin")
        if not os.path.exists(blob):
            with open(blob, "wb") as f:
                f.write(random.Random(1).randbytes(LOADED_MIB << 20))
        self.qmp_path = os.path.join(tmp, "source.qmp")
        if os.path.exists(self.qmp_path):
            os.unlink(self.qmp_path)
        self.log = open(os.path.join(tmp, "source.log"), "w")
        self.proc = subprocess.Popen(
            [QEMU, "-machine", "pc", "-accel", "tcg", "-m", str(RAM_MIB),
             "-nodefaults", "-display", "none",
             "-device", f"loader,file={blob},addr=0x1000000",
             "-qmp", f"unix:{self.qmp_path},server=on,wait=off"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.qmp = Qmp(self.qmp_path, io_timeout=STEP_TIMEOUT)

    def migrate(self, port, resume=False):
        self.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}",
                         resume=resume)

    def status(self):
        return self.qmp.execute("query-migrate").get("status")

    def wait_for(self, want, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.status()
            if seen in want:
                return seen
            if self.proc.poll() is not None:
                raise RuntimeError(f"the source died ({self.proc.returncode})")
            time.sleep(0.05)
        raise RuntimeError(f"still {seen} after {timeout}s, wanted "
                           f"{' or '.join(want)}")

    def start_postcopy(self, dst):
        self.qmp.execute("migrate-set-capabilities", capabilities=[
            {"capability": "postcopy-ram", "state": True}])
        # Slow enough that neither precopy nor postcopy ends by itself
        self.qmp.execute("migrate-set-parameters", **{
            "max-bandwidth": 1 << 20, "max-postcopy-bandwidth": 256 << 10})
        self.migrate(dst.port)
        self.wait_for(("active",))
        self.qmp.execute("migrate-start-postcopy")
        # A source of ours waits in "device" until the destination says it
        # loaded the devices (the PONG to the package's PING(0x42))
        if self.wait_for(("device", "postcopy-active")) == "device":
            dst.send(rp(PONG, struct.pack(">I", 0x42)))
        self.wait_for(("postcopy-active",))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def scenario_bad_active(src):
    dst = FakeDestination()
    src.start_postcopy(dst)
    dst.send(rp(9, b""))    # no such message
    src.wait_for(("postcopy-paused",))
    dst.close()
    # A recovery whose destination answers RECV_BITMAP with nonsense
    dst2 = FakeDestination()
    src.migrate(dst2.port, resume=True)
    src.wait_for(("postcopy-recover", "postcopy-paused"))
    dst2.send(rp(RECV_BITMAP, b"\x06pc.ram") + b"\xff" * 64)
    src.wait_for(("postcopy-paused",))
    dst2.close()
    src.qmp.execute("migrate_cancel")
    src.wait_for(("cancelled", "failed"))


def scenario_cancel_active(src):
    dst = FakeDestination()
    src.start_postcopy(dst)
    src.qmp.execute("migrate_cancel")
    src.wait_for(("cancelled", "failed"))
    dst.close()


def scenario_cancel_recover(src):
    dst = FakeDestination()
    src.start_postcopy(dst)
    dst.close()             # the link fails
    src.wait_for(("postcopy-paused",))
    dst2 = FakeDestination()   # accepts, never answers
    src.migrate(dst2.port, resume=True)
    src.wait_for(("postcopy-recover",))
    time.sleep(0.5)
    src.qmp.execute("migrate_cancel")
    src.wait_for(("cancelled", "failed"))
    dst2.close()


SCENARIOS = {
    "bad-active": scenario_bad_active,
    "cancel-active": scenario_cancel_active,
    "cancel-recover": scenario_cancel_recover,
}

BLOCKS = [b"pc.ram", b"pc.bios", b"pc.rom", b"", b"nosuchblock", b"x" * 255]


def random_message(r):
    """One return path message, valid in shape or not."""
    kind = r.choice([REQ_PAGES, REQ_PAGES, REQ_PAGES_ID, REQ_PAGES_ID, PONG,
                     SHUT, RECV_BITMAP, RESUME_ACK, 0, 7, r.randrange(65536)])
    start = r.choice([0, 4096, 0x1000000, (RAM_MIB << 20) - 4096,
                      RAM_MIB << 20, 1 << 63, (1 << 64) - 4096,
                      r.randrange(RAM_MIB << 20) & ~4095, r.randrange(1 << 64)])
    length = r.choice([4096, 8192, 0, 1, 2 << 20, 1 << 31, r.randrange(1 << 32)])
    if kind == REQ_PAGES:
        payload = struct.pack(">QI", start, length)
    elif kind == REQ_PAGES_ID:
        name = r.choice(BLOCKS)
        nlen = len(name) if r.random() < 0.85 else r.randrange(256)
        payload = struct.pack(">QIB", start, length, nlen) + name
    elif kind in (PONG, SHUT, RESUME_ACK):
        payload = struct.pack(">I", r.choice([0, 1, 2, 0x42,
                                              r.randrange(1 << 32)]))
    elif kind == RECV_BITMAP:
        name = r.choice(BLOCKS)
        payload = bytes([len(name)]) + name
    else:
        payload = bytes(r.randrange(256) for _ in range(r.randrange(16)))
    msg = rp(kind, payload)
    if r.random() < 0.1:
        msg = rp(kind, payload, r.randrange(65536))
    if r.random() < 0.05:
        msg = msg[:r.randrange(len(msg))]
    if r.random() < 0.05 and msg:
        i = r.randrange(len(msg))
        msg = msg[:i] + bytes([msg[i] ^ (1 << r.randrange(8))]) + msg[i + 1:]
    return msg


def fuzz_one(tmp, seed):
    """Returns (what went wrong or None, how the migration ended)."""
    r = random.Random(seed)
    src = Source(tmp)
    dst = FakeDestination()
    try:
        src.start_postcopy(dst)
        for _ in range(r.randrange(1, 12)):
            dst.send(random_message(r))
            time.sleep(r.choice([0, 0, 0.01, 0.1]))
        # Let the source finish: read on and end as a destination does
        src.qmp.execute("migrate-set-parameters", **{
            "max-bandwidth": 0, "max-postcopy-bandwidth": 0})
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            st = src.status()
            if st in ("completed", "failed", "postcopy-paused"):
                break
            if dst.received and st == "postcopy-active":
                dst.send(rp(SHUT, struct.pack(">I", 0)))
            time.sleep(0.1)
        else:
            return f"still {st} after {STEP_TIMEOUT}s", st
        ended = st
        if st == "postcopy-paused":
            src.qmp.execute("migrate_cancel")
            ended += " then " + src.wait_for(("cancelled", "failed"))
        if src.proc.poll() is not None:
            return f"the source exited ({src.proc.returncode})", ended
        src.qmp.execute("query-status")
        return None, ended
    except (RuntimeError, QmpError, OSError) as e:
        return str(e), None
    finally:
        dst.close()
        src.stop()
        with open(os.path.join(tmp, "source.log"), errors="replace") as f:
            log = f.read()
        if "Assertion" in log or "assertion" in log:
            return "an assertion failed: " + log.strip()[-300:], None
        if src.proc.returncode not in (0, -9):
            return f"the source died: exit {src.proc.returncode}", None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", action="store_true")
    ap.add_argument("--fuzz", action="store_true")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--one", type=int, metavar="SEED",
                    help="run the fuzz stream of this one seed")
    a = ap.parse_args()
    if a.one is not None:
        a.fuzz = True
    if not a.scenarios and not a.fuzz:
        a.scenarios = a.fuzz = True
    failures = 0
    with tempfile.TemporaryDirectory(prefix="rp-postcopy-") as tmp:
        if a.scenarios:
            for name, fn in SCENARIOS.items():
                if a.only not in name:
                    continue
                src = Source(tmp)
                try:
                    fn(src)
                    print(f"ok   {name}", flush=True)
                except (RuntimeError, QmpError, OSError) as e:
                    print(f"FAIL {name}: {e}", flush=True)
                    failures += 1
                    src.stop()
                    with open(os.path.join(tmp, "source.log"),
                              errors="replace") as f:
                        print("     " + " | ".join(
                            f.read().strip().splitlines()[-4:]))
                finally:
                    src.stop()
        if a.fuzz:
            seeds = ([a.one] if a.one is not None else
                     [a.seed * 100003 + i for i in range(a.runs)])
            for seed in seeds:
                why, ended = fuzz_one(tmp, seed)
                print(f"{'FAIL' if why else 'ok  '} fuzz seed {seed}: "
                      + (why if why else ended), flush=True)
                failures += bool(why)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
