#!/usr/bin/env python3
"""A requested page must not wait for the rest of a rate-limit window.

Source ($OURS, or SRC) and destination ($OURS, or DST) run migration-test's
boot sector guest, which writes 99 MiB of its RAM in order, over and over,
and migrate over TCP on loopback with postcopy held to a slow
max-postcopy-bandwidth: nearly the whole of that RAM comes in postcopy, and
the guest faults on a page the background stream has not sent yet, again
and again.  The migration thread sends the window's share of the stream
(100 ms of the rate) in a burst, then sleeps until the window ends; a page
request must wake it and its page go out at once.

At the end the test reads the destination's postcopy-blocktime (the time
the guest's vCPU waited for pages) and the source's postcopy-requests, and
fails when the mean wait per request exceeds --max-wait-ms (10 ms).
Stock 7.2 let a request wait for the end of the window (the migration
thread woke, found the stream over its limit and went round its loop
without sending): a mean of tens of milliseconds.  The guest's memory is
then checked as in the other tests.  (The series' last patch shortens
postcopy's windows to a few ms, so on its tip the wait is short either
way; `make stable-fix-tests` shows the fix against 7.2's 100 ms windows.)

With --slow-rate KIB the background stream's own rate is checked first:
after the switch the destination's vCPUs are stopped, so that nothing is
requested, max-postcopy-bandwidth is set to KIB KiB/s, and the source's
bytes sent over --measure seconds must come to at most 1.25 times that
(and at least half, or the stream stalled).  A window whose budget is
less than a page still sends one, so short windows at a slow rate send
too much.  Then the rate is raised, the vCPUs run again and the
migration completes as above.
"""

import argparse
import sys
import time

from bootguest import run_guests_test, start_tcp_postcopy, wait_status


def check_slow_rate(src, dst, args):
    """The stream alone, held to --slow-rate KiB/s, keeps to it."""
    limit = args.slow_rate << 10
    dst.execute("stop")
    src.execute("migrate-set-parameters", **{"max-postcopy-bandwidth": limit})
    time.sleep(1)       # the window in progress ends
    before = src.execute("query-migrate")["ram"]["transferred"]
    time.sleep(args.measure)
    sent = src.execute("query-migrate")["ram"]["transferred"] - before
    rate = sent / args.measure
    print(f"postcopy held to {args.slow_rate} KiB/s, vCPUs stopped: "
          f"{rate / 1024:.0f} KiB/s over {args.measure} s")
    if rate > 1.25 * limit:
        raise AssertionError(
            f"the stream ran at {rate / limit:.2f} times "
            "max-postcopy-bandwidth: its windows are shorter than a page "
            "at that rate")
    if rate < 0.5 * limit:
        raise AssertionError(f"the stream ran at {rate / limit:.2f} times "
                             "max-postcopy-bandwidth: it stalled")
    src.execute("migrate-set-parameters",
                **{"max-postcopy-bandwidth": args.rate << 20})
    dst.execute("cont")


def migrate(guests, args):
    caps = [{"capability": "postcopy-ram", "state": True}]
    if args.preempt:
        caps.append({"capability": "postcopy-preempt", "state": True})
    src, dst, _ = start_tcp_postcopy(
        guests, caps,
        {"max-bandwidth": 32 << 20,
         "max-postcopy-bandwidth": args.rate << 20},
        dst_caps=[{"capability": "postcopy-blocktime", "state": True}])
    if args.slow_rate:
        check_slow_rate(src, dst, args)
    start = time.monotonic()
    wait_status(src, "source", ("completed",), 300)
    wait_status(dst, "target", ("completed",), 60)
    took = time.monotonic() - start

    requests = src.execute("query-migrate")["ram"]["postcopy-requests"]
    info = dst.execute("query-migrate")
    if "postcopy-blocktime" not in info:
        raise AssertionError("the destination reports no "
                             f"postcopy-blocktime: {info}")
    blocktime = info["postcopy-blocktime"]
    print(f"postcopy at {args.rate} MiB/s took {took:.1f} s: "
          f"{requests} pages requested, the guest blocked "
          f"{blocktime} ms in all")
    if requests < args.min_requests:
        raise AssertionError(f"only {requests} pages requested; the "
                             "test needs the guest to fault more")
    wait = blocktime / requests
    if wait > args.max_wait_ms:
        raise AssertionError(
            f"{wait:.1f} ms of blocktime per page requested (at most "
            f"{args.max_wait_ms} ms): requests wait for the rate "
            "limit's window to end")
    print(f"{wait:.2f} ms of blocktime per page requested")
    value = guests.check_runs_intact(dst, "target", timeout=30)
    print(f"guest memory consistent (first page holds {value})")
    guests.check_alive()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=16,
                    help="max-postcopy-bandwidth in MiB/s (16)")
    ap.add_argument("--max-wait-ms", type=float, default=10.0,
                    help="the mean wait per requested page that fails "
                    "the test (10 ms)")
    ap.add_argument("--min-requests", type=int, default=20,
                    help="fewer requests than this show nothing: fail")
    ap.add_argument("--slow-rate", type=int, default=0, metavar="KIB",
                    help="first check the stream alone at KIB KiB/s")
    ap.add_argument("--measure", type=float, default=4.0,
                    help="seconds the stream is measured for (4)")
    ap.add_argument("--preempt", action="store_true",
                    help="with postcopy-preempt")
    args = ap.parse_args()
    return run_guests_test("postcopy-rate-limit-",
                           lambda guests: migrate(guests, args))


if __name__ == "__main__":
    sys.exit(main())
