#!/usr/bin/env python3
"""Where a requested page's time goes: one traced demo migration.

Runs scripts/demo.py's migration once with trace points on in both QEMUs
(the log backend, microsecond timestamps from one host clock) and follows
every page the destination asked for through its stages:

  fault     the fault thread read the fault     postcopy_ram_fault_thread_request
  request   it wrote the request                postcopy_page_req_add
  read      the source's return path read it    migrate_handle_rp_req_pages
  picked    the migration thread took it        get_queued_page
  written   its bytes went into the stream      ram_save_requested_page
  placed    the destination placed it, woke the postcopy_place_page
            faulting threads                    (requested=1)

and prints, for each step, the median, p90, p99 and worst over the pages
that passed through both of its ends, then the ten slowest pages step by
step.  A page the background scan sent before the migration thread saw
the request has no "picked"/"written".
Tracing costs time too: compare runs traced alike, not with untraced ones.

  scripts/fault-stages.py [demo options]   e.g. --bandwidth unlimited
                                            --switch first-pass
"""

import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo  # noqa: E402

EVENTS = ("postcopy_ram_fault_thread_request,postcopy_page_req_add,"
          "postcopy_place_page,migrate_handle_rp_req_pages,get_queued_page,"
          "ram_save_requested_page")
LINE_RE = re.compile(r"^\d+@(\d+)\.(\d+):(\w+) (.*)$")
# The page each event is about: (block, offset)
PAGE_RE = {
    "postcopy_ram_fault_thread_request": re.compile(
        r"^(\S+) at 0x([0-9a-f]+)"),
    "postcopy_page_req_add": re.compile(r"^ask for (\S+) at 0x([0-9a-f]+)"),
    "postcopy_place_page": re.compile(
        r"^(\S+) at 0x([0-9a-f]+) zero=\d requested=1"),
    "migrate_handle_rp_req_pages": re.compile(
        r"^in (\S+) at 0x([0-9a-f]+)"),
    "get_queued_page": re.compile(r"^(\S+)/0x([0-9a-f]+)"),
    "ram_save_requested_page": re.compile(r"^(\S+) at 0x([0-9a-f]+)"),
}
STAGES = [("fault", "postcopy_ram_fault_thread_request"),
          ("request", "postcopy_page_req_add"),
          ("read", "migrate_handle_rp_req_pages"),
          ("picked", "get_queued_page"),
          ("written", "ram_save_requested_page"),
          ("placed", "postcopy_place_page")]


def read_trace(path, times):
    """Add each page's first time at each event to @times."""
    last_block = None
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE_RE.match(line)
            if not m or m.group(3) not in PAGE_RE:
                continue
            p = PAGE_RE[m.group(3)].match(m.group(4))
            if not p:
                continue
            t = int(m.group(1)) + int(m.group(2)) / 1e6
            block = p.group(1)
            # A request that names no block is for the last one named
            if block in ("(null)", "(last)"):
                block = last_block
            elif m.group(3) == "migrate_handle_rp_req_pages":
                last_block = block
            key = (block, int(p.group(2), 16))
            times.setdefault(key, {}).setdefault(m.group(3), t)


def quantiles(values):
    values = sorted(values)
    if not values:
        return None

    def q(p):
        return values[min(len(values) - 1, int(p * len(values)))]
    return (len(values), statistics.median(values), q(0.9), q(0.99),
            values[-1])


# How many of the slowest pages to show step by step
SLOWEST = 10


def slowest(times, n):
    """Print the @n pages slowest from fault to placed, each step's time:
    the tail of the distribution is where one step stands out."""
    first, last = STAGES[0][1], STAGES[-1][1]
    pages = sorted(((t[last] - t[first], key, t) for key, t in times.items()
                    if first in t and last in t and t[last] >= t[first]),
                   key=lambda x: x[0], reverse=True)[:n]
    if not pages:
        return
    print(f"the {len(pages)} slowest pages, us in each step "
          "('-': the page skipped it):")
    for total, (block, offset), t in pages:
        steps, prev = [], t[first]
        for name, event in STAGES[1:]:
            if event in t:
                steps.append(f"{name} {(t[event] - prev) * 1e6:.0f}")
                prev = t[event]
            else:
                steps.append(f"{name} -")
        print(f"  {total * 1e6:8.0f} {block}+0x{offset:x}: " +
              ", ".join(steps))


def report(times):
    names = [s for s, _ in STAGES]
    print(f"{'step':24} {'pages':>7} {'p50 us':>9} {'p90 us':>9} "
          f"{'p99 us':>9} {'worst us':>10}")
    steps = list(zip(STAGES, STAGES[1:])) + [(STAGES[0], STAGES[-1])]
    out = {}
    for (a, ea), (b, eb) in steps:
        spans = [(t[eb] - t[ea]) * 1e6 for t in times.values()
                 if ea in t and eb in t and t[eb] >= t[ea]]
        qs = quantiles(spans)
        label = f"{a} -> {b}"
        out[label] = qs
        if qs:
            print(f"{label:24} {qs[0]:7} {qs[1]:9.0f} {qs[2]:9.0f} "
                  f"{qs[3]:9.0f} {qs[4]:10.0f}")
    slowest(times, SLOWEST)
    asked = sum(1 for t in times.values() if "postcopy_page_req_add" in t)
    picked = sum(1 for t in times.values() if "get_queued_page" in t)
    print(f"pages asked for {asked}, taken from the queue {picked} "
          f"(the rest the scan sent first), stages: {', '.join(names)}")
    return out


def main():
    ap = demo.parser()
    args = ap.parse_args()
    demo.check_inputs(ap, (args.src, args.dst))
    args.trace = EVENTS
    for note in demo.settle(args):
        print("fault-stages: " + note)
    for name in ("source", "destination"):
        path = os.path.join(args.trace_dir, name + ".trace")
        if os.path.exists(path):
            os.unlink(path)
    workdir = demo.make_workdir("fault-stages")
    try:
        res = demo.run_migration(args, workdir, args.src, args.dst,
                                 progress=False)
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    demo.print_summary(res)
    times = {}
    for name in ("source", "destination"):
        read_trace(os.path.join(args.trace_dir, name + ".trace"), times)
    report(times)
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
