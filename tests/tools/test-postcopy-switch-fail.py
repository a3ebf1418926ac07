#!/usr/bin/env python3
"""A postcopy switch whose destination fails: is the VM still somewhere?

Source ($OURS, or SRC) and destination ($OURS, or DST, e.g. stock 7.2)
run migration-test's boot sector guest and talk through a relay (see
bootguest.py).  The switch's package carries a PING of value
0x42 just before RUN; the destination's PONG to it tells the source that
the device state loaded.  The relay watches the return path for that
PONG.

  --fail before --how device|kill|cut
      the destination fails before the source has the PONG: its load of
      the package fails (the source has a virtio-rng-pci the destination
      lacks), or the relay holds the PONG back and the test kills the
      destination or cuts the link.  The source must end in failed with
      its guest running again: running, progressing, memory consistent.
      With the link cut, a destination of ours must not run it.
  --fail after --how kill|cut
      the same once the PONG got through and the source is in
      postcopy-active: the guest is the destination's then, the source
      must pause (postcopy-paused), never run it again.  Before the kill
      the relay stops forwarding, so that the source's writes block: a
      destination that dies behind a congested relay or proxy shows to
      the source only as the end of its return path, and the source must
      not wait in that write for good.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bootguest import (DST, OURS, SRC, Guests, Relay, status, wait_serial,
                       wait_status)
from qmplib import QmpError

# MIG_RP_MSG_PONG, 4 bytes, 0x42: the package's devices are loaded
PONG_PACKAGED_LOADED = bytes.fromhex("0002000400000042")


class PongRelay(Relay):
    """A relay that sees the destination's PONG(0x42) go by and, with
    @hold_pong, holds it and all after it back from the source."""

    def __init__(self, listen_path, target_path, hold_pong, rate=None):
        self.hold_pong = hold_pong
        self.pong_seen = threading.Event()
        super().__init__(listen_path, target_path, rate=rate)

    def _backward(self, src, dst):
        tail = b""
        held = False
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if held:
                    continue
                seen = tail + data
                i = seen.find(PONG_PACKAGED_LOADED)
                if i >= 0:
                    self.pong_seen.set()
                    if self.hold_pong:
                        # What came before the PONG still goes
                        dst.sendall(seen[len(tail):i] if i >= len(tail)
                                    else b"")
                        held = True
                        continue
                dst.sendall(data)
                tail = seen[-len(PONG_PACKAGED_LOADED):]
        except OSError:
            pass
        # The destination's end (it died) reaches the source, held or not
        self._pass_end(dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fail", choices=("before", "after"), required=True)
    ap.add_argument("--how", choices=("device", "kill", "cut"),
                    required=True)
    a = ap.parse_args()
    if a.fail == "after" and a.how == "device":
        ap.error("a device fails to load before the PONG, not after")

    tmp = tempfile.mkdtemp(prefix="switch-fail-")
    guests = None
    try:
        guests = Guests(tmp)
        extra = ["-device", "virtio-rng-pci"] if a.how == "device" else []
        src = guests.start(SRC, "source", extra)
        dst = guests.start(DST, "target", ["-incoming", "defer"])
        caps = [{"capability": "postcopy-ram", "state": True}]
        for q in (src, dst):
            q.execute("migrate-set-capabilities", capabilities=caps)
        src.execute("migrate-set-parameters", **{
            "max-bandwidth": 64 << 20, "max-postcopy-bandwidth": 8 << 20,
            "downtime-limit": 1})
        wait_serial(guests.serial("source"), 60)
        dst_path = os.path.join(tmp, "dst.sock")
        dst.execute("migrate-incoming", uri="unix:" + dst_path)
        # Requested pages bypass max-postcopy-bandwidth, and the guest,
        # writing its pages in order, gets runs of them (fault-around):
        # after the switch only a slow link keeps postcopy going a second.
        relay = PongRelay(os.path.join(tmp, "relay.sock"), dst_path,
                          hold_pong=a.fail == "before" and a.how != "device",
                          rate=(24 << 20) if a.fail == "after" else None)
        src.execute("migrate", uri="unix:" + os.path.join(tmp, "relay.sock"))
        time.sleep(1.0)
        src.execute("migrate-start-postcopy")

        if a.fail == "before" and a.how != "device":
            if not relay.pong_seen.wait(30):
                raise AssertionError("the destination never answered the "
                                     "package's PING(0x42)")
            time.sleep(0.5)
            st = status(src)
            if st != "device":
                raise AssertionError(f"the source is {st} with the PONG "
                                     "held back; expected device")
        elif a.fail == "after":
            wait_status(src, "source", ("postcopy-active",), 30)
            time.sleep(1.0)
        if a.how == "kill":
            if a.fail == "after":
                relay.stall()
                time.sleep(0.5)     # the source's socket fills
            guests.procs["target"].send_signal(signal.SIGKILL)
        elif a.how == "cut":
            relay.cut()

        if a.fail == "after":
            wait_status(src, "source", ("postcopy-paused",), 30)
            run = src.execute("query-status").get("status")
            if run == "running":
                raise AssertionError("the source runs the guest again after "
                                     "the destination had it")
            print(f"failed after the PONG by {a.how}: the source paused, "
                  f"its guest {run}")
            return 0

        info = wait_status(src, "source", ("failed",), 30,
                           fail=("cancelled", "postcopy-paused",
                                 "postcopy-active", "completed"))
        print(f"the source failed: {info.get('error-desc', '')}")
        if a.how == "cut" and DST == OURS:
            # It loaded the devices but never heard that the source went
            # on: it must not run the guest the source runs again
            time.sleep(1.0)
            run = dst.execute("query-status").get("status")
            if run == "running":
                raise AssertionError("the destination runs the guest too")
            print(f"the destination's guest stays {run}")
        deadline = time.monotonic() + 30
        while src.execute("query-status").get("status") != "running":
            if time.monotonic() > deadline:
                raise AssertionError("the source's guest does not run again")
            time.sleep(0.1)
        # Generous: a pass is slow on a loaded host
        value = guests.check_runs_intact(src, "source", timeout=30)
        print(f"failed before the PONG by {a.how}: the guest runs on the "
              f"source again, memory consistent (first page {value})")
        return 0
    except (AssertionError, OSError, QmpError) as e:
        print(f"FAIL: {e}")
        if guests:
            print(guests.logs(1500))
        return 1
    finally:
        if guests:
            guests.stop_all()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
