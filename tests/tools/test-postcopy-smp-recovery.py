#!/usr/bin/env python3
"""Recover a postcopy whose guest faults on two vCPUs in two RAM blocks.

Boots the demo's guest (build/guest) under TCG with 2 vCPUs and its RAM
in two RAM blocks of unequal size (two NUMA nodes' memory backends: the
kernel lives mostly in the small one, the workload mostly in the large
one), guest/workload.c's two threads writing its memory at random;
migrates with postcopy through a relay this test controls
(bootguest.Relay), cuts the link and recovers, --cuts times.

At each recovery the destination asks again for every page it had asked
for before the cut, then its fault thread goes on with the faults of
both vCPUs; requests name their block only when it differs from the
last one sent, and here they alternate between the two.  A request read
against the wrong block points at a wrong page or past the small
block's end, which the source refuses (it then pauses).  It passes when
every recovery completes, the source never pauses but at a cut, the
destination asked for pages of both blocks after the first recovery
(its trace), every request the source queued is one the destination
asked of that block (both traces, pagereqs.py), each wait of the fault
thread for a recovery spanned a resume, and the workload, which checks
every page it reads, saw no corruption.

--stall-first S: before the first cut the link stops carrying anything
to the destination for S seconds, as a link does that goes silent before
TCP gives up: both vCPUs block on pages asked for and not delivered, and
the fault thread, whose requests still got through, is not waiting for a
recovery when the resume asks again for those pages.

--monitor-reads N: as soon as the first resume has set the destination
postcopy-active again, a second monitor of the destination's reads N
guest pages at random in both blocks (xp): a page not yet there faults
in QEMU's main thread, whose request the fault thread sends while the
listen thread may still be asking again, each naming blocks.  A read
that gets no answer within 30 s fails the test, as does a monitor that
stops answering (60 s).

  test-postcopy-smp-recovery.py [--cuts N] [--stall-first S]
                                [--monitor-reads N] [--src BIN] [--dst BIN]

SRC and DST in the environment name the binaries too (default OURS, then
build/obj's).  Exit 0 on a pass, 1 on a failure, 77 (skip) when the
guest is not made.
"""

import argparse
import os
import random
import re
import sys
import threading
import time
import types

from bootguest import Relay, status, wait_status
from qmplib import Qmp
from pagereqs import (DST_EVENTS, SRC_EVENTS, check_blocks_named,
                      check_fault_thread_waits, trace_opts)

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "scripts"))
import demo  # noqa: E402

# Unequal, so that a request read against the wrong block can point past
# the smaller one's end; the workload's memory spills from one into both
BLOCKS = {"m0": "64M", "m1": "448M"}
RATE = 24 << 20


def guest_args(a):
    return types.SimpleNamespace(
        ram="512M", smp=2, accel="tcg", workload_mib=a.workload_mib,
        order="random", kernel_args="", flip=0, threads=2,
        tcg_single=False, trace=None)


def numa_opts():
    opts = []
    for block, size in BLOCKS.items():
        opts += ["-object", f"memory-backend-ram,id={block},size={size}",
                 "-numa", f"node,memdev={block}"]
    return opts


class PageReader(threading.Thread):
    """Once the destination is postcopy-active again (a resume sets it
    before asking again), read @n guest pages at random, from the 1 MiB
    mark to the end of RAM (both blocks, which are mapped in order), on
    the monitor at @path; what went wrong, if anything, is left in
    .error."""

    def __init__(self, path, n):
        super().__init__(daemon=True)
        self.qmp = Qmp(path, io_timeout=30)
        self.n = n
        self.error = None

    def run(self):
        top = sum(int(size[:-1]) for size in BLOCKS.values()) << 20
        try:
            deadline = time.monotonic() + 30
            while self.qmp.execute("query-migrate")["status"] != \
                    "postcopy-active":
                if time.monotonic() > deadline:
                    self.error = "the destination did not resume"
                    return
                time.sleep(0.002)
            for _ in range(self.n):
                addr = random.randrange(1 << 20, top, 4096)
                self.qmp.execute("human-monitor-command",
                                 **{"command-line": f"xp /1gx {addr:#x}"})
        except OSError as e:
            self.error = f"a read of guest RAM on the monitor failed: {e!r}"


def corruption(serial):
    serial.poll()
    return [line for _, line in serial.lines
            if "CORRUPTION" in line or "WL ERROR" in line]


def run(a, m):
    workdir = m.workdir
    src_trace = os.path.join(workdir, "source.trace")
    src, src_serial = m.start("source", a.src, numa_opts() +
                              trace_opts(src_trace, SRC_EVENTS))
    demo.wait_ready(m, src_serial, a.boot_timeout)
    time.sleep(1)
    trace = os.path.join(workdir, "destination.trace")
    reads = os.path.join(workdir, "reads.qmp")
    dst, dst_serial = m.start("destination", a.dst, numa_opts() + [
        "-incoming", "defer", "-qmp", f"unix:{reads},server=on,wait=off"] +
        trace_opts(trace, DST_EVENTS))
    for q in (src, dst):
        # A main loop stuck on a page fails the test, not hang it
        q.sock.settimeout(60)
    reader = PageReader(reads, a.monitor_reads) if a.monitor_reads else None
    for q in (src, dst):
        q.execute("migrate-set-capabilities", capabilities=[
            {"capability": "postcopy-ram", "state": True}])
    src.execute("migrate-set-parameters", **{
        "max-bandwidth": 64 << 20, "max-postcopy-bandwidth": 8 << 20,
        "downtime-limit": 1})
    dst_path = os.path.join(workdir, "dst-0.sock")
    dst.execute("migrate-incoming", uri="unix:" + dst_path)
    relay = Relay(os.path.join(workdir, "relay-0.sock"), dst_path,
                  rate=RATE)
    src.execute("migrate",
                uri="unix:" + os.path.join(workdir, "relay-0.sock"))
    time.sleep(1.0)
    src.execute("migrate-start-postcopy")
    wait_status(src, "source", ("postcopy-active",), 30)
    wait_status(dst, "destination", ("postcopy-active",), 30)
    for cut in range(1, a.cuts + 1):
        time.sleep(a.between)
        st = status(src)
        if st != "postcopy-active":
            raise AssertionError(f"cut {cut}: the source is {st} "
                                 "before the cut")
        if cut == 1 and a.stall_first:
            relay.stall()
            time.sleep(a.stall_first)
        relay.cut()
        wait_status(src, "source", ("postcopy-paused",), 30)
        wait_status(dst, "destination", ("postcopy-paused",), 30)
        dst_path = os.path.join(workdir, f"dst-{cut}.sock")
        relay_path = os.path.join(workdir, f"relay-{cut}.sock")
        dst.execute("migrate-recover", uri="unix:" + dst_path)
        if cut == 1:
            first_resume = os.path.getsize(trace)
        last = cut == a.cuts
        relay = Relay(relay_path, dst_path, rate=None if last else RATE)
        if last:
            src.execute("migrate-set-parameters",
                        **{"max-postcopy-bandwidth": 0})
        src.execute("migrate", uri="unix:" + relay_path, resume=True)
        if cut == 1 and reader:
            reader.start()
        wait_status(src, "source", ("postcopy-recover", "postcopy-active",
                                    "completed"), 30)
        # Paused again without a cut: the source refused something
        wait_status(src, "source",
                    ("postcopy-active", "completed"), 30,
                    fail=("failed", "cancelled", "postcopy-paused"))
        print(f"cut {cut}: recovered", flush=True)
    wait_status(src, "source", ("completed",), a.timeout,
                fail=("failed", "cancelled", "postcopy-paused"))
    wait_status(dst, "destination", ("completed",), 30)
    if reader:
        reader.join(30)
        if reader.error or reader.is_alive():
            raise AssertionError(reader.error or "the monitor's reads of "
                                 "guest RAM did not end")
    with open(trace) as f:
        asked = set(re.findall(r"postcopy_page_req_add ask for (\S+) ",
                               f.read()[first_resume:]))
    if not all(b in asked for b in BLOCKS):
        raise AssertionError("after the first recovery the destination "
                             "did not ask for pages of both blocks "
                             f"(asked: {', '.join(sorted(asked))})")
    queued = check_blocks_named(src_trace, trace)
    waits = check_fault_thread_waits(trace)
    print(f"{queued} requests queued by the source, each as asked; the "
          f"fault thread waited for {waits} recoveries", flush=True)
    time.sleep(a.run)
    bad = corruption(dst_serial)
    if bad:
        raise AssertionError("the guest saw corruption: " + bad[0])
    reports = [line for _, line in dst_serial.lines
               if demo.WL_RE.search(line)]
    if not reports:
        raise AssertionError("the workload reported nothing on the "
                             "destination")
    print(f"completed after {a.cuts} cut(s); the workload reported "
          f"{len(reports)} times on the destination, no corruption",
          flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuts", type=int, default=3,
                    help="at least 1")
    ap.add_argument("--src", default=os.environ.get("SRC") or
                    os.environ.get("OURS") or demo.OURS)
    ap.add_argument("--dst", default=os.environ.get("DST") or
                    os.environ.get("OURS") or demo.OURS)
    ap.add_argument("--workload-mib", type=int, default=256)
    ap.add_argument("--between", type=float, default=1.0,
                    help="seconds of postcopy before each cut")
    ap.add_argument("--stall-first", type=float, default=0,
                    help="seconds the link is silent before the first cut")
    ap.add_argument("--monitor-reads", type=int, default=0,
                    help="guest pages read on the destination's monitor "
                    "as the first resume starts")
    ap.add_argument("--run", type=float, default=3.0)
    ap.add_argument("--boot-timeout", type=float, default=120)
    ap.add_argument("--timeout", type=float, default=180)
    a = ap.parse_args()
    if a.cuts < 1:
        ap.error("--cuts must be at least 1")
    if not os.path.exists(os.path.join(demo.GUEST, "initrd.img")):
        print("SKIP: the demo's guest is not made (scripts/make-guest.sh)")
        return 77
    def body(m):
        try:
            return run(a, m)
        except OSError as e:
            raise AssertionError(f"a QMP command failed: {e!r}") from None
        except AssertionError as e:
            # A request read against the wrong block pauses the source
            # or stalls a vCPU: say so if the traces show it
            try:
                check_blocks_named(os.path.join(m.workdir, "source.trace"),
                                   os.path.join(m.workdir,
                                                "destination.trace"))
            except AssertionError as named:
                raise AssertionError(f"{e}; {named}") from None
            except OSError:
                pass
            raise
    return demo.run_guest_test("smp-recovery-", guest_args(a), body)


if __name__ == "__main__":
    sys.exit(main())
