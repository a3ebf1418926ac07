#!/usr/bin/env python3
"""Feed random sequences of migration commands to an incoming QEMU.

test-bad-commands.py checks one malformed command at a time; this test
strings commands together the way a broken or hostile source might: a
valid POSTCOPY_ADVISE for the pc machine's RAM most of the time, then
commands in any order (state changes, discards of real and made-up
blocks, packages holding commands, unknown ones), payloads of the right
shape with odd values, now and then a flipped bit, a wrong length or a
stream cut short.  Each stream is loaded by `-incoming exec:cat`.

A run fails when QEMU dies by a signal (a crash or an abort), prints an
assertion, or neither fails the load nor completes it within the time
limit.  A failing stream is kept in build/ for replay.  Streams come
from a seeded generator, so `--seed S --runs N` always gives the same N.

  test-command-fuzz.py [--runs N] [--seed S] [--jobs J]
"""

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from migstream import QEVM_HEADER, SECTION_EOF, command
from qmplib import Qmp, QmpError

QEMU = os.environ.get("OURS") or sys.exit("OURS is not set")
TOP = os.environ.get("TOP", os.path.join(os.path.dirname(__file__), "..", ".."))


OPEN_RETURN_PATH, PING, ADVISE, LISTEN, RUN, DISCARD, PACKAGED = 1, 2, 3, 4, 5, 6, 7
ENABLE_COLO, RESUME, RECV_BITMAP = 8, 9, 10

GUEST_RAM = 32 << 20
BLOCK_NAMES = [b"pc.ram", b"pc.bios", b"pc.rom", b"pc.ra", b"", b"x" * 255]
LOAD_TIMEOUT = 10
# How a load that did not fail ends: completed, or, after ENABLE_COLO, in
# COLO's secondary mode (upstream's COLO, as stock 7.2 does it)
LOAD_ENDED = ("completed", "colo")


class StreamMaker:
    """Random command sequences, all drawn from one seeded generator."""

    def __init__(self, seed):
        self.r = random.Random(seed)

    def block_name(self):
        r = self.r
        if r.random() < 0.9:
            return r.choice(BLOCK_NAMES)
        return bytes(r.randrange(256) for _ in range(r.randrange(8)))

    def offset(self):
        r = self.r
        return r.choice([0, 1, 4095, 4096, 8192, 2 << 20, GUEST_RAM,
                         GUEST_RAM - 4096, 2 * GUEST_RAM, 1 << 63,
                         (1 << 64) - 1, (1 << 64) - 4096, r.randrange(1 << 64),
                         r.randrange(GUEST_RAM) & ~4095])

    def payload(self, cmd, depth):
        r = self.r
        if cmd == PING:
            return struct.pack(">I", r.randrange(1 << 32))
        if cmd == ADVISE:
            if r.random() < 0.3:
                return b""
            return struct.pack(">QQ", r.choice([4096, 2 << 20, 0, 1,
                                                r.randrange(1 << 64)]),
                               r.choice([4096, 0, 8192, 512]))
        if cmd == DISCARD:
            name = self.block_name()
            name_len = len(name) if r.random() < 0.9 else r.randrange(256)
            version = 0 if r.random() < 0.9 else r.randrange(256)
            body = bytes([version, name_len]) + name + b"\0"
            for _ in range(r.randrange(5)):
                body += struct.pack(">QQ", self.offset(), self.offset())
            return body
        if cmd == PACKAGED:
            inner = self.sections(depth + 1)
            length = len(inner) if r.random() < 0.8 else r.randrange(1 << 32)
            return struct.pack(">I", length) + inner
        if cmd == RECV_BITMAP:
            name = self.block_name()
            return bytes([len(name) & 0xff]) + name
        if cmd in (OPEN_RETURN_PATH, LISTEN, RUN, ENABLE_COLO, RESUME):
            if r.random() < 0.9:
                return b""
            return bytes(r.randrange(256) for _ in range(r.randrange(4)))
        return bytes(r.randrange(256) for _ in range(r.randrange(20)))

    def section(self, depth):
        r = self.r
        choices = [OPEN_RETURN_PATH, PING, ADVISE, ADVISE, LISTEN, RUN,
                   DISCARD, DISCARD, ENABLE_COLO, RESUME, RECV_BITMAP,
                   r.randrange(1 << 16)]
        if depth == 0:
            # Packages hold the commands that matter most: LISTEN and RUN
            choices += [PACKAGED, PACKAGED]
        cmd = r.choice(choices)
        payload = self.payload(cmd, depth)
        if payload and r.random() < 0.05:
            flipped = bytearray(payload)
            flipped[r.randrange(len(flipped))] ^= 1 << r.randrange(8)
            payload = bytes(flipped)
        length = None if r.random() < 0.95 else r.randrange(1 << 16)
        return command(cmd, payload, length)

    def sections(self, depth):
        r = self.r
        out = b""
        if depth > 0 and r.random() < 0.5:
            out += command(LISTEN, b"")
        out += b"".join(self.section(depth)
                        for _ in range(r.randrange(1, 7)))
        if depth > 0 and r.random() < 0.5:
            out += command(RUN, b"")
        return out

    def stream(self):
        r = self.r
        out = b""
        if r.random() < 0.6:
            out += command(ADVISE, struct.pack(">QQ", 4096, 4096))
        out += self.sections(0)
        if r.random() < 0.7:
            out += bytes([SECTION_EOF])
        if r.random() < 0.1:
            out = out[:r.randrange(len(out) + 1)]
        return QEVM_HEADER + out


def run_one(seed, workdir):
    """None when QEMU failed the load cleanly or completed it, else why."""
    stream = StreamMaker(seed).stream()
    path = os.path.join(workdir, f"stream-{seed}")
    qmp_path = os.path.join(workdir, f"qmp-{seed}")
    with open(path, "wb") as f:
        f.write(stream)
    # postcopy-ram off on one run in four, so ADVISE meets both answers
    caps = ["-global", "migration.x-postcopy-ram=on"] if seed % 4 else []
    args = [QEMU, "-machine", "pc", "-m", str(GUEST_RAM >> 20), "-accel", "tcg",
            "-nodefaults", "-display", "none", "-S",
            "-global", "migration.send-configuration=off",
            "-qmp", f"unix:{qmp_path},server=on,wait=off"] + caps + [
            "-incoming", f"exec:cat {path}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            errors="replace")
    why = None
    qmp = None
    try:
        deadline = time.monotonic() + LOAD_TIMEOUT
        status = None
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if qmp is None:
                    qmp = Qmp(qmp_path, timeout=1, io_timeout=2)
                status = qmp.execute("query-migrate").get("status")
            except (OSError, QmpError, ValueError):
                # Not listening yet, or QEMU is on its way out
                if qmp is not None:
                    qmp.close()
                    qmp = None
            if status in LOAD_ENDED:
                break
            time.sleep(0.05)
        if proc.poll() is None and status not in LOAD_ENDED:
            why = f"neither failed nor completed in {LOAD_TIMEOUT} s " \
                  f"(status {status})"
    finally:
        if qmp is not None:
            qmp.close()
        killed = proc.poll() is None
        if killed:
            proc.kill()
        _, err = proc.communicate()
    if why is None and not killed and proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}"
    elif why is None and not killed and proc.returncode != 1:
        why = f"exit status {proc.returncode}, expected 1"
    elif "ssertion" in err:
        why = "an assertion failed"
    if why:
        keep = os.path.join(TOP, "build", f"command-fuzz-{seed}.stream")
        with open(keep, "wb") as f:
            f.write(stream)
        why += f"; stream kept in {keep}\n{err.strip()[-600:]}"
    os.unlink(path)
    return why


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=2)
    opts = ap.parse_args()
    if opts.runs < 1 or opts.jobs < 1:
        ap.error("--runs and --jobs must be at least 1")

    seeds = range(opts.seed, opts.seed + opts.runs)
    failures = 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="command-fuzz-") as workdir, \
            ThreadPoolExecutor(opts.jobs) as pool:
        for seed, why in zip(seeds, pool.map(lambda s: run_one(s, workdir),
                                              seeds)):
            if why:
                failures += 1
                print(f"FAIL seed {seed}: {why}")
    print(f"{opts.runs} streams from seed {opts.seed} in "
          f"{time.monotonic() - start:.0f} s: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
