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
then checked as in the other tests.
"""

import argparse
import sys
import time

from bootguest import run_guests_test, start_tcp_postcopy, wait_status


def migrate(guests, args):
    src, dst, _ = start_tcp_postcopy(
        guests, [{"capability": "postcopy-ram", "state": True}],
        {"max-bandwidth": 32 << 20,
         "max-postcopy-bandwidth": args.rate << 20},
        dst_caps=[{"capability": "postcopy-blocktime", "state": True}])
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
    args = ap.parse_args()
    return run_guests_test("postcopy-rate-limit-",
                           lambda guests: migrate(guests, args))


if __name__ == "__main__":
    sys.exit(main())
