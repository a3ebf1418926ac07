"""Page requests in postcopy as both ends trace them.

A request names its RAM block only when the block differs from the last
request's on the wire (REQ_PAGES_ID, then REQ_PAGES); the source reads
an unnamed one against the block it was last told.  The destination
sends requests from its fault thread (postcopy_page_req_add) and, at a
recovery's resume, asks again from its listen thread for every page
still requested (postcopy_page_req_sync); the source traces the block
it queued each request against (ram_save_queue_pages).  If the two
threads interleave the choice of naming with the writes, a request is
read against the other thread's block: the source then queues a page
the destination never asked for in that block.

Trace the events below (-trace enable=NAME, -D FILE) on each side, then
check the two files.
"""

import re

DST_EVENTS = ("postcopy_page_req_add", "postcopy_page_req_sync",
              "loadvm_postcopy_handle_resume",
              "postcopy_pause_fault_thread",
              "postcopy_pause_fault_thread_continued")
SRC_EVENTS = ("ram_save_queue_pages",)


def trace_opts(path, events):
    # Timestamps (pid@seconds:) make a failure's trace readable
    opts = ["-msg", "timestamp=on", "-D", path]
    for e in events:
        opts += ["-trace", "enable=" + e]
    return opts


def _events(path):
    """(event, args) for each traced line of @path, in order."""
    out = []
    with open(path) as f:
        for line in f:
            m = re.match(r"^(?:\d+@[\d.]+:)?(\w+) ?(.*)$", line.rstrip("\n"))
            if m:
                out.append((m.group(1), m.group(2)))
    return out


def asked(dst_trace):
    """{(block, offset)} of every request the destination sent."""
    pages = set()
    for ev, args in _events(dst_trace):
        m = None
        if ev == "postcopy_page_req_add":
            m = re.match(r"ask for (\S+) at 0x([0-9a-f]+) ", args)
        elif ev == "postcopy_page_req_sync":
            m = re.match(r"ask again for (\S+) at 0x([0-9a-f]+)", args)
        if m:
            pages.add((m.group(1), int(m.group(2), 16)))
    return pages


def check_blocks_named(src_trace, dst_trace):
    """Every request the source queued must be one the destination sent
    for that block, at that offset.  Returns the number of requests the
    source queued; raises AssertionError on one it read against another
    block."""
    starts = asked(dst_trace)
    queued = []
    for ev, args in _events(src_trace):
        if ev == "ram_save_queue_pages":
            m = re.match(r"(\S+): start: 0x([0-9a-f]+) ", args)
            queued.append((m.group(1), int(m.group(2), 16)))
    wrong = [q for q in queued if q not in starts]
    if wrong:
        sample = ", ".join(f"{b} at 0x{s:x}" for b, s in wrong[:4])
        raise AssertionError(
            f"{len(wrong)} of {len(queued)} requests reached the source "
            f"against a block the destination did not ask them of: "
            f"{sample}")
    return len(queued)


def check_fault_thread_waits(dst_trace):
    """A fault thread that could not send waits for the next resume: each
    of its waits (postcopy_pause_fault_thread to ..._continued) must
    span a resume.  Returns the number of waits."""
    waits = 0
    waiting = resumed = False
    for ev, _ in _events(dst_trace):
        if ev == "postcopy_pause_fault_thread":
            waiting, resumed = True, False
        elif ev == "loadvm_postcopy_handle_resume":
            resumed = True
        elif ev == "postcopy_pause_fault_thread_continued" and waiting:
            if not resumed:
                raise AssertionError(
                    f"the fault thread's wait {waits + 1} for a recovery "
                    "ended with no resume since it began")
            waits += 1
            waiting = False
    return waits
