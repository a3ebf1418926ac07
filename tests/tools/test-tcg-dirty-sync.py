#!/usr/bin/env python3
"""Does precopy under TCG deliver every byte of guest memory?

Boots the demo's guest (a Linux kernel and guest/workload.c rewriting
pages at random) under TCG and migrates it hop after hop, each to a fresh
destination started with -S, in precopy with max-bandwidth at libvirt's
maximum.  When a hop completes both sides are stopped: the source in
postmigrate, the destination not yet started.  Their guest RAM, dumped
with pmemsave, must then be equal byte for byte; a page that differs is a
write the source's dirty tracking missed.  The destination is then
started, runs a little, and becomes the next hop's source.  With
--postcopy each hop switches to postcopy after the first bitmap sync
with the guest running, and the workload's own check of every page it
reads judges it (both sides' RAM cannot be compared at one moment then).

QEMU 7.2's TCG loses such writes: a dirty bitmap sync cleared the bits of
pages whose TLB entries had already lost TLB_NOTDIRTY, so later stores
through those entries set no bit (fixed by the series' first patch).

  test-tcg-dirty-sync.py [--hops N] [--src BIN] [--dst BIN] [--smp N]

SRC and DST in the environment name the binaries too (default OURS, then
build/obj's).  Exit 0 when every hop delivered every page, 1 when one
did not, 2 when no hop synced the bitmap with the guest running (nothing
tested), 77 (skip) when the demo's guest is not made (make-guest.sh).
"""

import argparse
import os
import sys
import tempfile
import time
import types

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "scripts"))
import demo  # noqa: E402


def guest_args(a):
    return types.SimpleNamespace(
        ram=a.ram, smp=a.smp, accel="tcg", workload_mib=a.workload_mib,
        order="random", kernel_args="", flip=0, tcg_single=False,
        trace=None)


def wait_status(qmp, want, deadline_s, what, seen=None):
    deadline = time.monotonic() + deadline_s
    while True:
        info = qmp.execute("query-migrate")
        st = info.get("status")
        if seen is not None:
            seen.add(st)
        if st in want:
            return info
        if st in ("failed", "cancelled"):
            raise RuntimeError(f"{what}: migration {st}: "
                               f"{info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: still {st} after {deadline_s}s")
        time.sleep(0.1)


def differing_pages(path_a, path_b, page=4096, chunk=1 << 20):
    """Indices of the pages that differ between two dumps."""
    out = []
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        base = 0
        while True:
            a, b = fa.read(chunk), fb.read(chunk)
            if not a and not b:
                break
            if a != b:
                for off in range(0, max(len(a), len(b)), page):
                    if a[off:off + page] != b[off:off + page]:
                        out.append((base + off) // page)
            base += chunk
    return out


def ram_bytes(ram):
    units = {"M": 1 << 20, "G": 1 << 30}
    return int(ram[:-1]) * units[ram[-1]] if ram[-1] in units else \
        int(ram) << 20


def precopy_hop(a, m, src, dst, hop, port, workdir):
    """One precopy hop; returns (dirty bitmap syncs, pages that differ)."""
    size = ram_bytes(a.ram)
    # Precopy iterates, syncing the dirty bitmap with the guest running,
    # until the downtime allowed lets it converge.
    src.execute("migrate-set-parameters", **{"downtime-limit": 1})
    src.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
    time.sleep(a.iterate)
    src.execute("migrate-set-parameters", **{"downtime-limit": 5000})
    info = wait_status(src, ("completed",), a.timeout, f"hop {hop}")
    wait_status(dst, ("completed",), 30, f"hop {hop} destination")
    dumps = []
    for name, q in (("source", src), ("destination", dst)):
        path = os.path.join(workdir, f"hop{hop}-{name}.ram")
        q.execute("pmemsave", val=0, size=size, filename=path)
        dumps.append(path)
    diff = differing_pages(*dumps)
    for path in dumps:
        os.unlink(path)
    dst.execute("cont")
    return info, [hex(p) for p in diff]


def postcopy_hop(a, m, src, dst, hop, port, serial):
    """One postcopy hop; returns (dirty bitmap syncs, CORRUPTION lines).

    The destination runs the guest during postcopy, so both sides' RAM
    cannot be compared at one moment: the workload's own check of every
    page it reads tells instead, as in the demo."""
    for q in (src, dst):
        q.execute("migrate-set-capabilities", capabilities=[
            {"capability": "postcopy-ram", "state": True}])
    # Precopy syncs with the guest running until the switch
    src.execute("migrate-set-parameters", **{"downtime-limit": 1})
    src.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
    # Switch after the first sync with the guest running (the third: the
    # first is at the start, the second ends the first pass)
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        info = src.execute("query-migrate")
        if (info.get("status") not in ("setup", "active") or
                info.get("ram", {}).get("dirty-sync-count", 0) >= 3):
            break
        time.sleep(0.005)
    src.execute("migrate-start-postcopy")
    seen = set()
    info = wait_status(src, ("completed",), a.timeout, f"hop {hop}", seen)
    info["reached_postcopy"] = "postcopy-active" in seen
    wait_status(dst, ("completed",), 30, f"hop {hop} destination")
    # The workload reads every page within a few seconds
    time.sleep(a.run)
    serial.poll()
    return info, [line for _, line in serial.lines if "CORRUPTION" in line]


def run(a, workdir):
    m = demo.Migration(guest_args(a), workdir)
    lost = untested = 0
    try:
        src, serial = m.start("hop0", a.src, [])
        demo.wait_ready(m, serial, a.boot_timeout)
        time.sleep(a.run)
        for hop in range(1, a.hops + 1):
            port = demo.free_port()
            dst, dst_serial = m.start(
                f"hop{hop}", a.dst,
                (["-S"] if not a.postcopy else []) + ["-incoming", "defer"])
            dst.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
            src.execute("migrate-set-parameters", **{
                "max-bandwidth": (a.bandwidth << 20) if a.bandwidth else
                demo.LIBVIRT_MAX_BANDWIDTH})
            if a.postcopy:
                info, bad = postcopy_hop(a, m, src, dst, hop, port,
                                         dst_serial)
                what = "CORRUPTION line(s)"
            else:
                info, bad = precopy_hop(a, m, src, dst, hop, port, workdir)
                what = "page(s) differ"
            syncs = info.get("ram", {}).get("dirty-sync-count", 0)
            print(f"hop {hop}: {syncs} dirty bitmap syncs, "
                  f"{info.get('total-time')} ms, {len(bad)} {what}"
                  + (f" (first: {', '.join(bad[:4])})" if bad else ""),
                  flush=True)
            if bad:
                lost += 1
                break   # the guest runs on corrupted: no further hop
            if a.postcopy and not info["reached_postcopy"]:
                print(f"hop {hop} completed in precopy, before the switch")
                untested += 1
            elif syncs < (3 if a.postcopy else 4):
                # No sync while the guest ran, then more pages sent:
                # this hop could not lose a write (postcopy has no
                # final sync: the switch sends the dirty set)
                untested += 1
            m.procs[-2].terminate()
            src, serial = dst, dst_serial
            time.sleep(a.run)
    finally:
        m.stop()
    return lost, untested


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hops", type=int, default=4)
    ap.add_argument("--src", default=os.environ.get("SRC") or
                    os.environ.get("OURS") or demo.OURS)
    ap.add_argument("--dst", default=os.environ.get("DST") or
                    os.environ.get("OURS") or demo.OURS)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--postcopy", action="store_true",
                    help="switch each hop to postcopy after --iterate "
                    "seconds; the workload's page checks judge it")
    ap.add_argument("--ram", default="512M")
    ap.add_argument("--workload-mib", type=int, default=128)
    ap.add_argument("--bandwidth", type=int, default=0, metavar="MiB/s",
                    help="max-bandwidth (default 0: libvirt's maximum)")
    ap.add_argument("--iterate", type=float, default=None,
                    help="seconds precopy iterates before it may converge "
                    "(default 2; --postcopy switches after the third sync)")
    ap.add_argument("--run", type=float, default=2.0,
                    help="seconds the guest runs before each hop")
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds a hop may take")
    a = ap.parse_args()
    if a.iterate is None:
        a.iterate = 2.0
    for f in ("vmlinuz", "initrd.img"):
        if not os.path.exists(os.path.join(demo.GUEST, f)):
            print(f"no {demo.GUEST}/{f}: scripts/make-guest.sh makes it")
            return 77
    with tempfile.TemporaryDirectory(prefix="tcg-dirty-") as workdir:
        lost, untested = run(a, workdir)
    print(f"{'a hop' if lost else 'no hop'} of {a.hops} lost memory "
          f"({a.src} -> {a.dst}, {a.smp} vCPU(s)); {untested} hop(s) had "
          "no dirty bitmap sync with the guest running")
    if lost:
        return 1
    if untested == a.hops:
        print("no hop synced the bitmap with the guest running: nothing "
              "was tested")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
