#!/usr/bin/env python3
"""Cut a postcopy migration's connection, recover it, check guest memory.

Source and destination ($OURS unless SRC/DST say otherwise) talk through a
relay this test controls.  Once both are in postcopy-active the relay
drops the connection; both sides must reach postcopy-paused with the
guest intact.  The destination then listens again (migrate-recover), the
source resumes over a second relay (migrate with resume), and the
migration must complete with the guest running on the destination and
its memory consistent.

The guest is migration-test's boot sector (bootguest.py), which writes
its memory in order, over and over: its memory is checked at the end.

Options: --cuts N cuts and recoveries in one migration (default 1; 0 for
a postcopy without a cut).  --release-ram: that capability on the source
(with --cuts 0).
--preempt: postcopy-preempt on both sides (the relay carries both
channels).  --hugetlb: guest RAM on 2 MiB hugetlbfs pages, so pages are
requested, staged and placed a huge page at a time (the test reserves the
pages and gives them back).
--fail-recovery cut|pause: the first recovery's relay holds back what the
destination sends, so both sides stay in postcopy-recover waiting for each
other; the test then cuts that relay (a link lost while recovering) or runs
migrate-pause on the destination.  Both must go back to postcopy-paused and a
second recovery must complete the migration.
--fail-recovery preempt (with --preempt): the first recovery's main
connection gets through but the preempt channel's is refused; both sides
must go back to postcopy-paused as above.

--two-blocks: guest RAM in two RAM blocks of 40 and 110 MiB (two NUMA
nodes' memory backends), which the guest's writes cross: the destination
must ask for pages of both after the first recovery, whose resume asks
again for every page still requested while the fault thread goes on
asking for new ones (both name blocks on one return path).

--expect-runs: the destination must have asked for runs of pages
(fault-around).  A migration that showed nothing (it asked for no run
where runs are expected, for one block only with --two-blocks, or it
completed before a cut) is tried again, up to 3 in all.

Each form ends by checking that the source holds no socket of the
migration's once it has completed (none is left behind by a recovery).
"""

import argparse
import os
import re
import sys
import time

from bootguest import (DST, SRC, Relay, run_guests_test, socket_fds, status,
                       wait_serial, wait_status)


def check_ram_advice(pid):
    """Postcopy turns THP off on guest RAM while pages arrive; after it the
    destination's RAM must be advised as on any QEMU: huge pages allowed
    (VmFlags hg, not nh) and mergeable by KSM (mg, QEMU's mem-merge)."""
    size_kb = 150 << 10
    flags = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                # RAM is mapped whole, maybe with an alignment page
                in_ram = size_kb <= (hi - lo) >> 10 < size_kb + (4 << 10)
            elif line.startswith("VmFlags:") and in_ram:
                flags = line.split()[1:]
                break
    if flags is None:
        raise AssertionError("no mapping of guest RAM in the destination")
    if "nh" in flags or "hg" not in flags or "mg" not in flags:
        raise AssertionError("guest RAM on the destination is advised "
                             f"{' '.join(flags)}; expected hg and mg, no nh")
    print("guest RAM advised for THP and KSM again: " + " ".join(flags))


class Hugepages:
    """Reserve 2 MiB pages for both guests; give them back at the end."""

    PATH = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"

    def __init__(self, wanted):
        try:
            with open(self.PATH) as f:
                self.before = int(f.read())
            with open(self.PATH, "w") as f:
                f.write(str(self.before + wanted))
            with open(self.PATH) as f:
                got = int(f.read()) - self.before
        except OSError as e:
            print(f"environment: cannot reserve 2 MiB huge pages ({e})")
            sys.exit(77)
        if got < wanted:
            self.restore()
            print(f"environment: only {got} of {wanted} 2 MiB huge pages "
                  "could be reserved")
            sys.exit(77)

    def restore(self):
        with open(self.PATH, "w") as f:
            f.write(str(self.before))


def fail_recovery(src, dst, tmp, how):
    """A recovery that cannot finish must leave both sides paused."""
    dst_path = os.path.join(tmp, "dst-stalled.sock")
    relay_path = os.path.join(tmp, "relay-stalled.sock")
    dst.execute("migrate-recover", uri="unix:" + dst_path)
    if how == "preempt":
        relay = Relay(relay_path, dst_path, refuse_second=True)
        src.execute("migrate", uri="unix:" + relay_path, resume=True)
        wait_status(src, "source", ("postcopy-paused",), 30)
        wait_status(dst, "target", ("postcopy-paused",), 30)
        # The source may pause before the relay has forwarded the main
        # connection it opened first (the destination is paused all along)
        deadline = time.monotonic() + 10
        while True:
            with relay.lock:
                forwarded = len(relay.socks)
            if forwarded == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if forwarded != 2:
            raise AssertionError("the recovery's main connection did not "
                                 "reach the destination")
        relay.cut()
        print("recovery failed by a refused preempt channel: both sides "
              "paused again")
        return
    relay = Relay(relay_path, dst_path, hold_back=True)
    src.execute("migrate", uri="unix:" + relay_path, resume=True)
    wait_status(src, "source", ("postcopy-recover",), 30)
    wait_status(dst, "target", ("postcopy-recover",), 30)
    # Held back, the received bitmaps never reach the source.
    time.sleep(1.0)
    for name, q in (("source", src), ("target", dst)):
        st = status(q)
        if st != "postcopy-recover":
            raise AssertionError(f"{name} is {st} with the return path held "
                                 "back; expected postcopy-recover")
    if how == "cut":
        relay.cut()
    else:
        # One side is enough: the other loses the link with it.
        dst.execute("migrate-pause")
    wait_status(src, "source", ("postcopy-paused",), 30)
    wait_status(dst, "target", ("postcopy-paused",), 30)
    relay.cut()
    print(f"recovery failed by {how}: both sides paused again")


class NothingShown(AssertionError):
    """The migration went well but did not do what the test is about."""


class NoRunAsked(NothingShown):
    """It asked for no run of pages."""


class OneBlockAsked(NothingShown):
    """After the first recovery it asked for pages of one block only."""


# main()'s exit code when that is its only failure
NOTHING_SHOWN = 3


def check_runs_asked(trace):
    """The destination's trace must show requests longer than a page."""
    lengths = [int(m, 16) for m in re.findall(
        r"postcopy_page_req_add .* length 0x([0-9a-f]+)",
        open(trace).read())]
    runs = [n for n in lengths if n > 4096]
    if not runs:
        raise NoRunAsked(f"{len(lengths)} requests, none for more than "
                         "one page: no fault-around")
    print(f"{len(runs)} of {len(lengths)} requests asked for runs, up to "
          f"{max(runs) // 4096} pages")


# Sizes the guest's writes (1 MiB up to 100 MiB) cross, unequal so that
# a request naming the wrong one can point past the smaller one's end
TWO_BLOCKS = {"m0": "40M", "m1": "110M"}


def check_two_blocks_asked(trace, mark):
    """After the first recovery's resume (at @mark in @trace) the
    destination must have asked for pages of both blocks."""
    asked = set(re.findall(r"postcopy_page_req_add ask for (\S+) ",
                           open(trace).read()[mark:]))
    missing = [b for b in TWO_BLOCKS if b not in asked]
    if missing:
        raise OneBlockAsked(f"after the first recovery no page of "
                            f"{', '.join(missing)} was asked for "
                            f"(asked: {', '.join(sorted(asked))})")
    print("pages of both blocks asked for after the first recovery")


def check_no_socket_left(pid, before):
    """Cleanup after completion runs in the source's main loop: allow it a
    moment, then the migration's sockets must all be closed."""
    deadline = time.monotonic() + 5
    while (now := socket_fds(pid)) > before:
        if time.monotonic() > deadline:
            raise AssertionError(f"the source has {now - before} socket(s) "
                                 "open after the migration completed")
        time.sleep(0.1)
    print("the source holds no socket of the migration's")


def migrate(guests, args):
    tmp = guests.tmp

    def start(binary, name, extra):
        if args.hugetlb:
            extra = ["-object", "memory-backend-memfd,id=ram,size=150M,"
                     "hugetlb=on,hugetlbsize=2M",
                     "-machine", "memory-backend=ram"] + extra
        if args.two_blocks:
            for block, size in reversed(TWO_BLOCKS.items()):
                extra = ["-object", f"memory-backend-ram,id={block},"
                         f"size={size}", "-numa",
                         f"node,memdev={block}"] + extra
        return guests.start(binary, name, extra)

    src = start(SRC, "source", [])
    trace = os.path.join(tmp, "target.trace")
    dst = start(DST, "target", ["-incoming", "defer"] + (
        ["-trace", "enable=postcopy_page_req_add", "-D", trace]
        if args.expect_runs or args.two_blocks else []))
    resumes = []
    caps = [{"capability": "postcopy-ram", "state": True}]
    if args.preempt:
        caps.append({"capability": "postcopy-preempt", "state": True})
    for q in (src, dst):
        q.execute("migrate-set-capabilities", capabilities=caps)
    if args.release_ram:
        src.execute("migrate-set-capabilities", capabilities=[
            {"capability": "release-ram", "state": True}])
    # Slow enough that postcopy is still going when the link drops.
    src.execute("migrate-set-parameters", **{
        "max-bandwidth": 64 << 20, "max-postcopy-bandwidth": 8 << 20,
        "downtime-limit": 1})

    wait_serial(guests.serial("source"))
    src_pid = guests.procs["source"].pid
    src_sockets = socket_fds(src_pid)
    dst_path = os.path.join(tmp, "dst-0.sock")
    dst.execute("migrate-incoming", uri="unix:" + dst_path)
    # Requested pages bypass max-postcopy-bandwidth (as they must), and
    # they are many: the guest writes its pages in order and asks for
    # runs of them (fault-around), or for 2 MiB pages one after
    # another; so the link itself is slow.
    rate = 24 << 20
    relay = Relay(os.path.join(tmp, "relay-0.sock"), dst_path, rate=rate)
    src.execute("migrate", uri="unix:" + os.path.join(tmp, "relay-0.sock"))
    time.sleep(1.0)
    src.execute("migrate-start-postcopy")
    wait_status(src, "source", ("postcopy-active",), 30)
    wait_status(dst, "target", ("postcopy-active",), 30)
    if not args.cuts:
        src.execute("migrate-set-parameters",
                    **{"max-postcopy-bandwidth": 0})

    for cut in range(1, args.cuts + 1):
        time.sleep(1.0)
        st = status(src)
        if st == "completed":
            raise NothingShown(f"cut {cut}: the migration completed before "
                               "the cut")
        if st != "postcopy-active":
            raise AssertionError(f"cut {cut}: the source is {st} before "
                                 "the cut")
        sent = relay.bytes
        relay.cut()
        wait_status(src, "source", ("postcopy-paused",), 30)
        wait_status(dst, "target", ("postcopy-paused",), 30)
        print(f"cut {cut}: both sides paused after {sent} bytes relayed")

        if cut == 1 and args.fail_recovery:
            fail_recovery(src, dst, tmp, args.fail_recovery)

        dst_path = os.path.join(tmp, f"dst-{cut}.sock")
        relay_path = os.path.join(tmp, f"relay-{cut}.sock")
        # The destination moves to postcopy-recover when the source
        # connects, not before.
        dst.execute("migrate-recover", uri="unix:" + dst_path)
        relay = Relay(relay_path, dst_path,
                      rate=rate if cut < args.cuts else None)
        if cut == args.cuts:
            # The last leg may run at full speed.
            src.execute("migrate-set-parameters",
                        **{"max-postcopy-bandwidth": 0})
        if args.two_blocks:
            resumes.append(os.path.getsize(trace))
        src.execute("migrate", uri="unix:" + relay_path, resume=True)
        if cut < args.cuts:
            wait_status(src, "source", ("postcopy-active",), 30)
            wait_status(dst, "target", ("postcopy-active",), 30)
            print(f"cut {cut}: recovered")

    wait_status(src, "source", ("completed",), 120)
    wait_status(dst, "target", ("completed",), 120)
    run = dst.execute("query-status")
    if run.get("status") != "running":
        raise AssertionError(f"the guest is {run.get('status')} on the "
                             "destination, not running")
    value = guests.check_runs_intact(dst, "target")
    print(f"completed after {args.cuts} cut(s); guest memory consistent "
          f"(first page holds {value})")
    check_no_socket_left(src_pid, src_sockets)
    if args.expect_runs:
        check_runs_asked(trace)
    if args.two_blocks:
        check_two_blocks_asked(trace, resumes[0])
    if not args.hugetlb and not args.two_blocks:
        check_ram_advice(guests.procs["target"].pid)
    guests.check_alive()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuts", type=int, default=1)
    ap.add_argument("--fail-recovery", choices=("cut", "pause", "preempt"))
    ap.add_argument("--preempt", action="store_true",
                    help="postcopy-preempt on both sides")
    ap.add_argument("--release-ram", action="store_true",
                    help="release-ram on the source (needs --cuts 0: a "
                    "recovery is refused with it)")
    ap.add_argument("--hugetlb", action="store_true",
                    help="guest RAM on 2 MiB hugetlbfs pages")
    ap.add_argument("--two-blocks", action="store_true",
                    help="guest RAM in two RAM blocks, both written")
    ap.add_argument("--expect-runs", action="store_true",
                    help="the destination must have asked for runs of "
                    "pages (fault-around: the guest writes its pages in "
                    "order)")
    args = ap.parse_args()
    if args.fail_recovery == "preempt" and not args.preempt:
        ap.error("--fail-recovery preempt needs --preempt")
    if args.two_blocks and not args.cuts:
        ap.error("--two-blocks needs a cut")
    hugepages = Hugepages(160) if args.hugetlb else None

    try:
        return run_guests_test("postcopy-relay-",
                               lambda guests: migrate(guests, args),
                               passthrough=NothingShown)
    except NothingShown as e:
        print(f"FAIL: {e}")
        return NOTHING_SHOWN
    finally:
        if hugepages:
            hugepages.restore()


def run(attempts=3):
    """A migration that asked for no run (a few dozen faults, none next to
    the one before: a stock source's stream often gets there first), that
    completed before its first cut (about 1 in 20 with one cut here: the
    guest's runs of faults pull its pages faster than the relay's rate
    suggests), or that after the first recovery asked for pages of one
    block only (the guest's writes stayed in one block until the
    background stream had sent the other), shows nothing either way; try
    it again, up to @attempts in all."""
    for attempt in range(1, attempts + 1):
        rc = main()
        if rc != NOTHING_SHOWN:
            return rc
        print(f"attempt {attempt} of {attempts} showed nothing")
    return 1


if __name__ == "__main__":
    sys.exit(run())
