#!/usr/bin/env python3
"""Migrate a running Linux guest with postcopy and show what happened.

Boots build/guest's kernel and initramfs (scripts/make-guest.sh) on a
source QEMU, lets the workload (guest/workload.c) run, migrates over TCP
on loopback to a destination with postcopy-ram and postcopy-blocktime on,
switches to postcopy after a short precopy, and prints a live progress
line and a summary: times, pages requested, blocktime, the guest's access
latency during postcopy, and integrity (the guest still running on the
destination, no CORRUPTION line).  Exits non-zero if the migration fails
or the guest saw corruption.

Also used by scripts/bench.py, through run_migration().
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "tools"))
from qmplib import Qmp  # noqa: E402

BUILD = os.path.join(TOP, "build")
GUEST = os.path.join(BUILD, "guest")
OURS = os.path.join(BUILD, "obj", "qemu-system-x86_64")
STOCK = "/usr/bin/qemu-system-x86_64"
BUCKETS = 22


def pick_accel():
    """KVM where it runs a Linux guest; TCG otherwise (and under PVM)."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return "tcg", "KVM here is PVM, which cannot run a stock Linux guest"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm", "/dev/kvm"
    return "tcg", "no usable /dev/kvm"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SerialLog:
    """Lines of a QEMU serial file, each with the host time it was seen."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        self.partial = b""
        self.lines = []

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        now = time.monotonic()
        data = self.partial + data
        *done, self.partial = data.split(b"\n")
        for line in done:
            self.lines.append((now, line.decode(errors="replace").rstrip("\r")))

    def find(self, needle):
        return [t for t, line in self.lines if needle in line]


WL_RE = re.compile(r"WL t=(\d+) acc=(\d+) worst_us=(\d+) over1ms=(\d+) "
                   r"corrupt=(\d+) h=([\d,]+)")


def latency_summary(lines, t_from, t_to):
    """Merge the workload's per-second lines seen between the two times."""
    hist = [0] * BUCKETS
    acc = worst = over = 0
    for t, line in lines:
        m = WL_RE.search(line)
        if not m or not (t_from <= t <= t_to):
            continue
        acc += int(m.group(2))
        worst = max(worst, int(m.group(3)))
        over += int(m.group(4))
        for i, c in enumerate(m.group(6).split(",")[:BUCKETS]):
            hist[i] += int(c)

    def quantile(q):
        if not acc:
            return None
        need = q * acc
        seen = 0
        for i, c in enumerate(hist):
            seen += c
            if seen >= need:
                return 1 if i == 0 else 2 ** i   # bucket's upper bound, us
        return 2 ** (BUCKETS - 1)

    return {"accesses": acc, "p50_us": quantile(0.5), "p99_us": quantile(0.99),
            "worst_us": worst if acc else None, "over_1ms": over,
            "histogram_log2_us": hist}


class Migration:
    """One source and one destination QEMU in a work directory."""

    def __init__(self, args, workdir, src_bin, dst_bin):
        self.args = args
        self.workdir = workdir
        self.src_bin = src_bin
        self.dst_bin = dst_bin
        self.procs = []
        self.accel, self.accel_why = pick_accel()

    def start(self, name, binary, extra):
        qmp = os.path.join(self.workdir, name + ".qmp")
        serial = os.path.join(self.workdir, name + ".serial")
        append = (f"console=ttyS0 panic=-1 quiet {self.args.kernel_args} "
                  f"wl.mib={self.args.workload_mib} wl.order={self.args.order}")
        if self.args.flip:
            append += f" wl.flip={self.args.flip}"
        accel = self.accel
        if accel == "tcg" and self.args.tcg_single:
            accel = "tcg,thread=single"
        cmd = [binary, "-accel", accel, "-m", self.args.ram,
               "-smp", str(self.args.smp), "-nodefaults", "-display", "none",
               "-kernel", os.path.join(GUEST, "vmlinuz"),
               "-initrd", os.path.join(GUEST, "initrd.img"),
               "-append", append, "-serial", "file:" + serial,
               "-qmp", f"unix:{qmp},server=on,wait=off"] + extra
        if self.accel == "kvm":
            cmd += ["-cpu", "host"]
        log = open(os.path.join(self.workdir, name + ".log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return Qmp(qmp, timeout=30), SerialLog(serial)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_migration(args, workdir, src_bin, dst_bin, progress=True):
    """Migrate once; returns the result as a dict.  Cleans up after itself."""
    m = Migration(args, workdir, src_bin, dst_bin)
    caps = [{"capability": "postcopy-ram", "state": not args.precopy_only}]
    if args.preempt:
        caps.append({"capability": "postcopy-preempt", "state": True})
    res = {"source": src_bin, "destination": dst_bin, "accel": m.accel,
           "preempt": args.preempt, "ok": False}
    try:
        src, src_serial = m.start("source", src_bin, [])
        deadline = time.monotonic() + args.boot_timeout
        while not src_serial.find("WL ready"):
            src_serial.poll()
            if m.procs[0].poll() is not None:
                raise RuntimeError("the source QEMU exited while booting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the guest was not ready within "
                                   f"{args.boot_timeout}s")
            time.sleep(0.2)
        port = free_port()
        dst, dst_serial = m.start("destination", dst_bin,
                                  ["-incoming", "defer"])
        dst.execute("migrate-set-capabilities", capabilities=caps + [
            {"capability": "postcopy-blocktime", "state": True}])
        src.execute("migrate-set-capabilities", capabilities=caps)
        # The link: without a limit loopback copies faster than the guest
        # writes, and precopy alone would finish.
        rate = args.bandwidth << 20
        src.execute("migrate-set-parameters", **{
            "max-bandwidth": rate, "max-postcopy-bandwidth": rate})
        dst.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")

        t0 = time.monotonic()
        src.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        t_switch = t_done = None
        tty = sys.stdout.isatty()
        lead, tail = ("\r", "") if tty else ("", "\n")
        last_line = 0.0
        while True:
            info = src.execute("query-migrate")
            st = info.get("status")
            now = time.monotonic()
            src_serial.poll()
            dst_serial.poll()
            if st in ("failed", "cancelled"):
                raise RuntimeError(f"migration {st}: "
                                   f"{info.get('error-desc', '')}")
            if (t_switch is None and not args.precopy_only and
                    now - t0 >= args.precopy):
                src.execute("migrate-start-postcopy")
                t_switch = now
            if st == "completed":
                t_done = now
                break
            if progress and (tty or now - last_line >= 1.0):
                ram = info.get("ram", {})
                print(f"{lead}  {st:<16} remaining "
                      f"{ram.get('remaining', 0) >> 20:6} MiB  requested "
                      f"{ram.get('postcopy-requests', 0):7}  "
                      f"{now - t0:6.1f}s", end=tail,
                      flush=True)
                last_line = now
            if now - t0 > args.timeout:
                raise RuntimeError(f"not complete after {args.timeout}s")
            time.sleep(0.25)
        if progress and tty:
            print()
        src_info = src.execute("query-migrate")
        deadline = time.monotonic() + 30
        while True:
            dst_info = dst.execute("query-migrate")
            if dst_info.get("status") == "completed":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the destination did not complete")
            time.sleep(0.1)

        # Let the guest run on the destination for a while, then judge.
        settle_until = time.monotonic() + args.settle
        while time.monotonic() < settle_until:
            dst_serial.poll()
            time.sleep(0.2)
        t_end = time.monotonic()
        running = dst.execute("query-status").get("status")
        after = [t for t, line in dst_serial.lines
                 if WL_RE.search(line) and t > t_done]
        corruption = [line for _, line in src_serial.lines + dst_serial.lines
                      if "CORRUPTION" in line]
        postcopy_switch_at = t_switch if t_switch is not None else t_done
        in_postcopy = postcopy_switch_at < t_done
        ram = src_info.get("ram", {})
        res.update({
            "total_time_ms": src_info.get("total-time"),
            "downtime_ms": src_info.get("downtime"),
            "precopy_s": round(postcopy_switch_at - t0, 3),
            "postcopy_s": round(t_done - postcopy_switch_at, 3),
            "pages_requested": ram.get("postcopy-requests"),
            "blocktime_ms": dst_info.get("postcopy-blocktime"),
            "vcpu_blocktime_ms": dst_info.get("postcopy-vcpu-blocktime"),
            # Each line covers the second before it: take the one after too
            "latency_postcopy": latency_summary(
                dst_serial.lines, postcopy_switch_at,
                t_done + 1.0 if in_postcopy else t_done),
            "guest_running": running == "running",
            "guest_progressing": len(after) >= 2,
            "corruption": corruption,
        })
        res["ok"] = (res["guest_running"] and res["guest_progressing"] and
                     not corruption)
        res["elapsed_after_completion_s"] = round(t_end - t_done, 1)
        return res
    except Exception as e:      # report, never leave QEMU behind
        res["error"] = str(e)
        return res
    finally:
        m.stop()


def print_summary(res):
    lat = res.get("latency_postcopy", {})

    def us(v):
        return "-" if v is None else f"{v} us"

    print("summary")
    print(f"  binaries        source {res['source']}")
    print(f"                  destination {res['destination']}")
    print(f"  accelerator     {res['accel']}, preempt "
          f"{'on' if res['preempt'] else 'off'}")
    if "error" in res:
        print(f"  FAILED          {res['error']}")
        return
    print(f"  total time      {res['total_time_ms']} ms "
          f"(precopy {res['precopy_s']} s, postcopy {res['postcopy_s']} s)")
    print(f"  downtime        {res['downtime_ms']} ms")
    print(f"  pages requested {res['pages_requested']}")
    print(f"  blocktime       {res['blocktime_ms']} ms "
          f"(per vCPU {res['vcpu_blocktime_ms']})")
    print(f"  guest accesses during postcopy: {lat.get('accesses')}, "
          f"median {us(lat.get('p50_us'))}, p99 {us(lat.get('p99_us'))}, "
          f"worst {us(lat.get('worst_us'))}, over 1 ms {lat.get('over_1ms')}")
    print(f"  integrity       guest "
          f"{'running' if res['guest_running'] else 'NOT running'} on the "
          f"destination, "
          f"{'progressing' if res['guest_progressing'] else 'NOT progressing'}, "
          f"{len(res['corruption'])} CORRUPTION line(s)")
    for line in res["corruption"][:5]:
        print(f"    {line}")
    print("  result          " + ("OK" if res["ok"] else "FAILED"))


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ram", default="2G", help="guest RAM (default 2G)")
    ap.add_argument("--smp", type=int, default=2, help="vCPUs (default 2)")
    ap.add_argument("--workload-mib", type=int, default=512,
                    help="memory the workload keeps busy (default 512)")
    ap.add_argument("--order", choices=("random", "seq"), default="random")
    ap.add_argument("--precopy", type=float, default=3.0,
                    help="seconds of precopy before the switch (default 3)")
    ap.add_argument("--bandwidth", type=int, default=256, metavar="MiB/s",
                    help="the link's speed, for precopy and postcopy "
                    "(default 256)")
    ap.add_argument("--kernel-args", default="",
                    help="more guest kernel command line")
    ap.add_argument("--tcg-single", action="store_true",
                    help="one TCG thread for all vCPUs")
    ap.add_argument("--precopy-only", action="store_true",
                    help="postcopy-ram off: a plain precopy, for comparison")
    ap.add_argument("--preempt", action="store_true",
                    help="turn on postcopy-preempt")
    ap.add_argument("--src", default=OURS, help="source QEMU binary")
    ap.add_argument("--dst", default=OURS, help="destination QEMU binary")
    ap.add_argument("--flip", type=int, default=0, metavar="SECONDS",
                    help="the workload flips a byte after SECONDS, on purpose")
    ap.add_argument("--settle", type=float, default=4.0,
                    help="seconds to watch the guest after completion")
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the result here")
    return ap


def main():
    args = parser().parse_args()
    for b in (args.src, args.dst):
        if not os.access(b, os.X_OK):
            parser().error(f"no QEMU binary at {b}")
    for f in ("vmlinuz", "initrd.img"):
        if not os.path.exists(os.path.join(GUEST, f)):
            parser().error(f"no {GUEST}/{f}: run scripts/make-guest.sh")
    workdir = os.path.join(BUILD, "demo", f"run-{os.getpid()}")
    os.makedirs(workdir)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))
    try:
        accel, why = pick_accel()
        print(f"demo: {args.ram} guest, {args.smp} vCPUs, {accel} ({why}); "
              f"workload {args.workload_mib} MiB {args.order}; switch after "
              f"{args.precopy}s of precopy")
        res = run_migration(args, workdir, args.src, args.dst)
        print_summary(res)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return 0 if res["ok"] else 1
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
