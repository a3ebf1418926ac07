#!/usr/bin/env python3
"""Migrate a running Linux guest with postcopy and show what happened.

Boots build/guest's kernel and initramfs (scripts/make-guest.sh) on a
source QEMU, lets the workload (guest/workload.c) run, migrates over TCP
on loopback to a destination with postcopy-ram and postcopy-blocktime on,
switches to postcopy after a short precopy, and prints a live progress
line and a summary: times, pages requested, blocktime, the guest's access
latency during postcopy, and integrity (the guest still running on the
destination, no CORRUPTION line).  Exits non-zero if the migration fails,
never reaches postcopy, or the guest saw corruption.

Every QEMU it starts is stopped on every way out (Ctrl-C included); its
files live in build/demo/run-<pid>, removed at the end unless the run
failed (then the QEMU logs are kept there).

Also used by scripts/bench.py, through add_guest_options(), settle() and
run_migration().
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "tools"))
sys.path.insert(0, os.path.join(TOP, "scripts"))
import hostkind  # noqa: E402
from qmplib import Qmp  # noqa: E402

BUILD = os.path.join(TOP, "build")
GUEST = os.path.join(BUILD, "guest")
OURS = os.path.join(BUILD, "obj", "qemu-system-x86_64")
STOCK = "/usr/bin/qemu-system-x86_64"
NOTE = "docs/notes/tcg-smp-migration-corruption.md"
BUCKETS = 22
# --bandwidth unlimited: libvirt's maximum, QEMU_DOMAIN_MIG_BANDWIDTH_MAX
# (INT64_MAX / 1 MiB) MiB/s, in bytes, which libvirt 9.0 sets as
# max-bandwidth when no bandwidth is given (max-postcopy-bandwidth stays 0,
# also unlimited).
UNLIMITED = 0
LIBVIRT_MAX_BANDWIDTH = ((2 ** 63 - 1) >> 20) << 20
# An access this slow (us) waited for something: under TCG a plain access
# (verify and maybe rewrite 4 KiB) takes a few microseconds.
STALL_US = 256


def detect_accel():
    """The accelerator that runs a stock Linux guest here, and the host."""
    host = hostkind.detect()
    return host.linux_accel, host


def settle(args):
    """Fix args.accel and args.smp; returns lines to show the user."""
    accel, host = detect_accel()
    notes = [host.line()]
    if args.accel == "auto":
        args.accel = accel
    elif args.accel != accel:
        notes.append(f"accelerator {args.accel} as asked (a Linux guest "
                     f"would run under {accel} here)")
    if args.smp is None:
        args.smp = 2
    stock = [b for b in (getattr(args, "src", None), getattr(args, "dst", None),
                         getattr(args, "stock", None)) if b == STOCK]
    if args.accel == "tcg" and stock:
        notes.append("stock QEMU 7.2 under TCG loses guest writes in "
                     "migration (a dirty bitmap sync leaves TCG's TLB "
                     "unaware), with any number of vCPUs: a CORRUPTION "
                     f"with stock may be that ({NOTE}); the series' first "
                     "patch fixes it in ours")
    return notes


def vcpus(n):
    return f"{n} vCPU" + ("s" if n > 1 else "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """In the child: SIGKILL when the process that started it dies."""
    try:
        # prctl(PR_SET_PDEATHSIG, SIGKILL)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


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
            text = line.decode(errors="replace").rstrip("\r")
            self.lines.append((now, text))

    def find(self, needle):
        return [t for t, line in self.lines if needle in line]


WL_RE = re.compile(r"WL t=(\d+) acc=(\d+) worst_us=(\d+) over1ms=(\d+) "
                   r"corrupt=(\d+) h=([\d,]+)")


def bucket_us(i):
    """The upper bound of histogram bucket i, in microseconds."""
    return 1 if i == 0 else 2 ** i


def hist_quantile(hist, q):
    """The bucket upper bound (us) below which a fraction q of counts lie."""
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= q * total:
            return bucket_us(i)
    return bucket_us(len(hist) - 1)


def fault_latency(info):
    """What the destination's query-migrate says of each fault's latency.

    postcopy-latency-dist (QEMU 10.1's name; ours has it, stock 7.2 not)
    counts faults in buckets [2^i, 2^(i+1)) us; quantiles are given as
    their bucket's upper bound, as the workload's are."""
    dist = info.get("postcopy-latency-dist")
    if dist is None:
        return None
    faults = sum(dist)

    def quantile(q):
        seen = 0
        for i, c in enumerate(dist):
            seen += c
            if faults and seen >= q * faults:
                return 2 ** (i + 1)
        return None

    last = max((i for i, c in enumerate(dist) if c), default=None)
    return {"faults": faults,
            "mean_us": round(info["postcopy-latency"] / 1000, 1),
            "p50_us": quantile(0.5), "p99_us": quantile(0.99),
            "worst_us": None if last is None else 2 ** (last + 1),
            "vcpu_mean_us": [round(v / 1000, 1) for v in
                             info.get("postcopy-vcpu-latency", [])],
            "non_vcpu_mean_us": round(
                info.get("postcopy-non-vcpu-latency", 0) / 1000, 1),
            "dist": dist}


def latency_summary(lines, t_from, t_to):
    """Merge the workload's per-second lines seen between the two times.

    The quantiles are bucket upper bounds: p50/p99/p999 over every access
    (the guest cannot tell a fault from another access: faults are in the
    tail), stall_* over the accesses of STALL_US or more, the ones that
    waited (for a page in postcopy, or for the host: TCG has some of those
    without any migration, hence the baseline)."""
    hist = [0] * BUCKETS
    acc = worst = over = seconds = 0
    for t, line in lines:
        m = WL_RE.search(line)
        if not m or not (t_from < t <= t_to):
            continue
        seconds += 1
        acc += int(m.group(2))
        worst = max(worst, int(m.group(3)))
        over += int(m.group(4))
        for i, c in enumerate(m.group(6).split(",")[:BUCKETS]):
            hist[i] += int(c)
    out = {"seconds": seconds, "accesses": acc,
           "worst_us": worst if acc else None, "over_1ms": over,
           "histogram_log2_us": hist}
    out.update(hist_stats(hist))
    return out


def hist_stats(hist):
    """The quantiles latency_summary() derives from a histogram."""
    # Bucket i holds [2^(i-1), 2^i) us: the first stall bucket is
    # [STALL_US, 2 * STALL_US).
    first_stall = STALL_US.bit_length()
    stalls = [0] * first_stall + hist[first_stall:]
    return {"p50_us": hist_quantile(hist, 0.5),
            "p99_us": hist_quantile(hist, 0.99),
            "p999_us": hist_quantile(hist, 0.999),
            "stalls": sum(stalls),
            "stall_p50_us": hist_quantile(stalls, 0.5),
            "stall_p99_us": hist_quantile(stalls, 0.99)}


class Migration:
    """One source and one destination QEMU in a work directory."""

    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.procs = []

    def start(self, name, binary, extra):
        a = self.args
        qmp = os.path.join(self.workdir, name + ".qmp")
        serial = os.path.join(self.workdir, name + ".serial")
        append = (f"console=ttyS0 panic=-1 quiet {a.kernel_args} "
                  f"wl.mib={a.workload_mib} wl.order={a.order} "
                  f"wl.stride={getattr(a, 'stride', 8)} "
                  f"wl.threads={getattr(a, 'threads', 1)} "
                  f"wl.shared={getattr(a, 'shared_mib', 0)}")
        if a.flip:
            append += f" wl.flip={a.flip}"
        accel = a.accel
        if accel == "tcg" and a.tcg_single:
            accel = "tcg,thread=single"
        cmd = [binary, "-accel", accel, "-m", a.ram,
               "-smp", str(a.smp), "-nodefaults", "-display", "none",
               "-name", "debug-threads=on",
               "-kernel", os.path.join(GUEST, "vmlinuz"),
               "-initrd", os.path.join(GUEST, "initrd.img"),
               "-append", append, "-serial", "file:" + serial,
               "-qmp", f"unix:{qmp},server=on,wait=off"] + extra
        for g in getattr(a, "globals", []):
            cmd += ["-global", "migration." + g]
        if a.accel == "kvm":
            cmd += ["-cpu", "host"]
        if getattr(a, "trace", None):
            os.makedirs(a.trace_dir, exist_ok=True)
            cmd += ["-msg", "timestamp=on",
                    "-D", os.path.join(a.trace_dir, name + ".trace")]
            for event in a.trace.split(","):
                cmd += ["-trace", "enable=" + event]
        with open(os.path.join(self.workdir, name + ".log"), "w") as log:
            # A session of its own: Ctrl-C reaches this script, which stops
            # QEMU itself; the death signal covers this script being killed.
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL,
                                 start_new_session=True,
                                 preexec_fn=_die_with_parent)
        self.procs.append(p)
        try:
            return Qmp(qmp, timeout=30), SerialLog(serial)
        except OSError:
            raise RuntimeError(f"the {name} QEMU did not open its QMP socket: "
                               + self.log_tail(name)) from None

    def log_tail(self, name, lines=3):
        try:
            with open(os.path.join(self.workdir, name + ".log")) as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self):
        """Stop every QEMU started, a second Ctrl-C notwithstanding."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()
            for p in self.procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            signal.signal(signal.SIGINT, old)


def run_guest_test(prefix, args, body):
    """body(m) with a Migration of @args in a fresh temporary directory:
    its return code, or on an AssertionError (a check) or a RuntimeError
    (this module's, as a guest that does not start) 1, printed with the
    last lines of both QEMUs' logs, the directory kept.  Every QEMU
    stops."""
    m = Migration(args, tempfile.mkdtemp(prefix=prefix))
    try:
        rc = body(m)
    except (AssertionError, RuntimeError) as e:
        print(f"FAIL: {e}")
        for name in ("source", "destination"):
            print(f"--- {name} log: {m.log_tail(name, 5)}")
        print(f"(kept in {m.workdir})")
        return 1
    finally:
        m.stop()
    shutil.rmtree(m.workdir, ignore_errors=True)
    return rc


def wait_ready(m, serial, deadline_s):
    deadline = time.monotonic() + deadline_s
    while not serial.find("WL ready"):
        serial.poll()
        if m.procs[0].poll() is not None:
            raise RuntimeError("the source QEMU exited while booting: "
                               + m.log_tail("source"))
        err = [line for _, line in serial.lines if "WL ERROR" in line]
        if err:
            raise RuntimeError("the workload did not start: " + err[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the guest was not ready within "
                               f"{deadline_s:.0f}s")
        time.sleep(0.2)
    return serial.find("WL ready")[0]


def switch_due(args, elapsed, ram):
    """Whether to send migrate-start-postcopy now."""
    if args.switch == "first-pass":
        # As libvirt's --postcopy-after-precopy: once the first pass over
        # RAM has ended, i.e. the second dirty bitmap sync has happened.
        return ram.get("dirty-sync-count", 0) >= 2
    return elapsed >= args.precopy


def host_cpu_ticks():
    """The host's CPU time so far in clock ticks: (stolen, all).

    In a virtual machine the hypervisor's share of its CPUs is /proc/stat's
    steal column; a run that lost much of it is slow for that reason."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal (guest is in user)
    return ticks[7], sum(ticks)


def stolen_pct(start, end):
    """The percentage of the host's CPU time stolen between two
    host_cpu_ticks() readings."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round(100 * (end[0] - start[0]) / (end[1] - start[1]), 1)


def watch(src, src_serial, dst_serial, args, t0, progress):
    """Poll until completion, switching to postcopy on time.

    Returns (t_switch, t_done, statuses seen, MiB remaining at the switch,
    host_cpu_ticks() at the switch)."""
    t_switch = t_done = remaining_at_switch = ticks_switch = None
    seen = []
    tty = sys.stdout.isatty()
    lead, tail = ("\r", "") if tty else ("", "\n")
    last_line = 0.0
    while True:
        info = src.execute("query-migrate")
        st = info.get("status")
        now = time.monotonic()
        if st not in seen:
            seen.append(st)
        src_serial.poll()
        dst_serial.poll()
        ram = info.get("ram", {})
        if st in ("failed", "cancelled"):
            raise RuntimeError(f"migration {st}: "
                               f"{info.get('error-desc', '')}")
        if st == "completed":
            t_done = now
            break
        if (t_switch is None and not args.precopy_only and
                switch_due(args, now - t0, ram)):
            remaining_at_switch = ram.get("remaining", 0) >> 20
            ticks_switch = host_cpu_ticks()
            src.execute("migrate-start-postcopy")
            t_switch = now
        if progress and (tty or now - last_line >= 1.0):
            print(f"{lead}  {st:<16} remaining "
                  f"{ram.get('remaining', 0) >> 20:6} MiB  requested "
                  f"{ram.get('postcopy-requests', 0):7}  "
                  f"{now - t0:6.1f}s", end=tail, flush=True)
            last_line = now
        if now - t0 > args.timeout:
            raise RuntimeError(f"not complete after {args.timeout}s")
        time.sleep(0.2)
    if progress and tty:
        print()
    return t_switch, t_done, seen, remaining_at_switch, ticks_switch


def run_migration(args, workdir, src_bin, dst_bin, progress=True):
    """Migrate once; returns the result as a dict.  Stops its QEMUs.

    args: the options of add_guest_options() after settle(), and preempt,
    precopy_only, flip.  A KeyboardInterrupt still stops both QEMUs and is
    passed on."""
    m = Migration(args, workdir)
    caps = [{"capability": "postcopy-ram", "state": not args.precopy_only}]
    if args.preempt:
        caps.append({"capability": "postcopy-preempt", "state": True})
    res = {"source": src_bin, "destination": dst_bin, "accel": args.accel,
           "smp": args.smp, "preempt": args.preempt, "ok": False,
           "reached_postcopy": False}
    try:
        src, src_serial = m.start("source", src_bin, [])
        t_ready = wait_ready(m, src_serial, args.boot_timeout)
        port = free_port()
        dst, dst_serial = m.start("destination", dst_bin,
                                  ["-incoming", "defer"])
        dst.execute("migrate-set-capabilities", capabilities=caps + [
            {"capability": "postcopy-blocktime", "state": args.blocktime}])
        src.execute("migrate-set-capabilities", capabilities=caps)
        # The link: without a limit loopback copies faster than the guest
        # writes, precopy alone would finish and postcopy would be short.
        # Unlimited is what Debian 12's libvirt sets unless told otherwise.
        if args.bandwidth == UNLIMITED:
            src.execute("migrate-set-parameters", **{
                "max-bandwidth": LIBVIRT_MAX_BANDWIDTH,
                "max-postcopy-bandwidth": 0})
        else:
            rate = args.bandwidth << 20
            src.execute("migrate-set-parameters", **{
                "max-bandwidth": rate, "max-postcopy-bandwidth": rate})
        dst.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        # The guest's latency before any migration, for comparison.
        ticks_baseline = host_cpu_ticks()
        until = time.monotonic() + args.baseline
        while time.monotonic() < until:
            src_serial.poll()
            time.sleep(0.2)
        src_serial.poll()

        ticks_start = host_cpu_ticks()
        t0 = time.monotonic()
        src.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        t_switch, t_done, seen, remaining, ticks_switch = watch(
            src, src_serial, dst_serial, args, t0, progress)
        ticks_done = host_cpu_ticks()
        src_info = src.execute("query-migrate")
        deadline = time.monotonic() + 30
        while True:
            dst_info = dst.execute("query-migrate")
            if dst_info.get("status") == "completed":
                break
            if dst_info.get("status") == "failed":
                raise RuntimeError("the destination failed: "
                                   + m.log_tail("destination"))
            if time.monotonic() > deadline:
                raise RuntimeError("the destination did not complete")
            time.sleep(0.1)

        # Let the guest run on the destination for a while, then judge.
        settle_until = time.monotonic() + args.settle
        while time.monotonic() < settle_until:
            dst_serial.poll()
            time.sleep(0.2)
        running = dst.execute("query-status").get("status")
        after = [t for t, line in dst_serial.lines
                 if WL_RE.search(line) and t > t_done]
        corruption = [line for _, line in src_serial.lines + dst_serial.lines
                      if "CORRUPTION" in line]
        switch = t_switch if t_switch is not None else t_done
        ram = src_info.get("ram", {})
        res.update({
            "statuses": seen,
            "reached_postcopy": "postcopy-active" in seen,
            "remaining_at_switch_mib": remaining,
            "total_time_ms": src_info.get("total-time"),
            "downtime_ms": src_info.get("downtime"),
            "precopy_s": round(switch - t0, 3),
            "postcopy_s": round(t_done - switch, 3),
            "pages_requested": ram.get("postcopy-requests"),
            "blocktime_ms": dst_info.get("postcopy-blocktime"),
            "vcpu_blocktime_ms": dst_info.get("postcopy-vcpu-blocktime"),
            "fault_latency": fault_latency(dst_info),
            "latency_baseline": latency_summary(src_serial.lines, t_ready, t0),
            "latency_precopy": latency_summary(src_serial.lines, t0, switch),
            # Each line covers the second before it: take the one after too
            "latency_postcopy": latency_summary(
                dst_serial.lines, switch,
                t_done + 1.0 if t_switch is not None else t_done),
            "host_stolen_pct": {
                "baseline": stolen_pct(ticks_baseline, ticks_start),
                "postcopy": stolen_pct(ticks_switch, ticks_done),
            },
            "guest_running": running == "running",
            "guest_progressing": len(after) >= 2,
            "corruption": corruption,
            "flipped": [line for _, line in src_serial.lines +
                        dst_serial.lines if "on purpose" in line],
        })
        res["ok"] = (res["guest_running"] and res["guest_progressing"] and
                     not corruption)
        return res
    except Exception as e:      # report, never leave QEMU behind
        res["error"] = str(e)
        return res
    finally:
        m.stop()


def describe_link(args):
    """The link and the switch, in words."""
    link = ("link unlimited (libvirt's maximum max-bandwidth)"
            if args.bandwidth == UNLIMITED else
            f"link {args.bandwidth} MiB/s")
    if args.precopy_only:
        return link + "; no postcopy (--precopy-only)"
    if args.switch == "first-pass":
        return link + "; switch when the first pass ends"
    return link + f"; switch after {args.precopy}s of precopy"


def print_summary(res):
    lat = res.get("latency_postcopy", {})
    base = res.get("latency_baseline", {})

    def us(v):
        return "-" if v is None else f"{v} us"

    print("summary")
    print(f"  binaries        source {res['source']}")
    print(f"                  destination {res['destination']}")
    print(f"  guest           {vcpus(res['smp'])}, {res['accel']}, preempt "
          f"{'on' if res['preempt'] else 'off'}")
    if "error" in res:
        print(f"  FAILED          {res['error']}")
        print("  result          FAILED")
        return
    print(f"  total time      {res['total_time_ms']} ms "
          f"(precopy {res['precopy_s']} s, postcopy {res['postcopy_s']} s)")
    if res["reached_postcopy"]:
        print(f"  switch          with {res['remaining_at_switch_mib']} MiB "
              f"still to copy")
    else:
        print("  switch          NEVER reached postcopy-active "
              f"(statuses seen: {', '.join(res['statuses'])})")
    print(f"  downtime        {res['downtime_ms']} ms")
    print(f"  pages requested {res['pages_requested']}")
    print(f"  blocktime       {res['blocktime_ms']} ms "
          f"(per vCPU {res['vcpu_blocktime_ms']})")
    fl = res.get("fault_latency")
    if fl:
        print(f"  fault latency   {fl['faults']} faults, mean {fl['mean_us']} "
              f"us, p50 < {us(fl['p50_us'])}, p99 < {us(fl['p99_us'])}, "
              f"worst < {us(fl['worst_us'])} (per vCPU mean "
              f"{fl['vcpu_mean_us']} us, other threads "
              f"{fl['non_vcpu_mean_us']} us)")
    elif res["blocktime_ms"] is not None and res["pages_requested"]:
        print(f"  fault latency   not reported by the destination; blocktime "
              f"per page requested {res['blocktime_ms'] / res['pages_requested']:.3f}"
              " ms (a mean)")
    print(f"  guest latency   during postcopy: {lat.get('accesses')} accesses,"
          f" median {us(lat.get('p50_us'))}, p99 {us(lat.get('p99_us'))}, "
          f"p99.9 {us(lat.get('p999_us'))}, worst {us(lat.get('worst_us'))}, "
          f"over 1 ms {lat.get('over_1ms')}")
    print(f"                  stalls (>= {STALL_US} us): {lat.get('stalls')}, "
          f"median {us(lat.get('stall_p50_us'))}, "
          f"p99 {us(lat.get('stall_p99_us'))}")
    print(f"                  before the migration ({base.get('seconds')} s): "
          f"{base.get('accesses')} accesses, median {us(base.get('p50_us'))}, "
          f"p99 {us(base.get('p99_us'))}, p99.9 {us(base.get('p999_us'))}, "
          f"worst {us(base.get('worst_us'))}, "
          f"over 1 ms {base.get('over_1ms')}")
    stolen = res.get("host_stolen_pct") or {}
    if stolen.get("postcopy") is not None:
        print(f"  host CPU stolen {stolen['postcopy']}% during postcopy, "
              f"{stolen.get('baseline')}% before the migration (the "
              "hypervisor's share of this virtual machine's CPUs)")
    for line in res["flipped"]:
        print(f"  flip            {line}")
    running = "running" if res["guest_running"] else "NOT running"
    going = "progressing" if res["guest_progressing"] else "NOT progressing"
    print(f"  integrity       guest {running} on the destination, {going}, "
          f"{len(res['corruption'])} CORRUPTION line(s)")
    for line in res["corruption"][:5]:
        print(f"    {line}")
    verdict = "verified" if res["ok"] else "FAILED"
    print(f"  result          integrity {verdict}" +
          ("" if res["reached_postcopy"] else ", but no postcopy happened"))


def positive(kind):
    def check(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}")
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
        return v
    return check


def bandwidth(text):
    if text == "unlimited":
        return UNLIMITED
    return positive(int)(text)


def ram_size(text):
    if not re.fullmatch(r"[1-9]\d*[MG]?", text):
        raise argparse.ArgumentTypeError(
            f"not a RAM size like 2G or 1536M: {text!r}")
    return text


def add_guest_options(ap):
    """The guest and migration options the demo and the bench share."""
    ap.add_argument("--ram", type=ram_size, default="2G",
                    help="guest RAM (default 2G)")
    ap.add_argument("--smp", type=positive(int), default=None,
                    help="vCPUs (default 2)")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="accelerator (default auto: KVM on a hardware KVM "
                    "host, TCG otherwise; scripts/hostkind.py)")
    ap.add_argument("--workload-mib", type=positive(int), default=1024,
                    help="memory the workload keeps busy (default 1024)")
    ap.add_argument("--order", choices=("random", "seq", "stride"),
                    default="random", help="the workload's order: random "
                    "(default), a sequential sweep, or strided (every "
                    "--stride-th page, then the next)")
    ap.add_argument("--stride", type=positive(int), default=8,
                    help="pages between two accesses in --order stride "
                    "(default 8)")
    ap.add_argument("--threads", type=positive(int), default=1,
                    help="workload threads, each on its own slice of "
                    "--workload-mib (default 1)")
    ap.add_argument("--shared-mib", type=int, default=0,
                    help="MiB of pages every thread also reads (default 0)")
    ap.add_argument("--precopy", type=positive(float), default=2.0,
                    help="seconds of precopy before the switch (default 2)")
    ap.add_argument("--bandwidth", type=bandwidth, default=128,
                    metavar="MiB/s", help="the link's speed, for precopy "
                    "and postcopy (default 128), or 'unlimited' as "
                    "Debian 12's libvirt sets it")
    ap.add_argument("--switch", choices=("time", "first-pass"),
                    default="time", help="switch to postcopy after "
                    "--precopy seconds (default), or when the first pass "
                    "over RAM ends, as libvirt's --postcopy-after-precopy")
    ap.add_argument("--no-blocktime", dest="blocktime", action="store_false",
                    help="postcopy-blocktime off on the destination (no "
                    "blocktime or fault latency then)")
    ap.add_argument("--kernel-args", default="",
                    help="more guest kernel command line")
    ap.add_argument("--tcg-single", action="store_true",
                    help="one TCG thread for all vCPUs")
    ap.add_argument("--baseline", type=float, default=3.0,
                    help="seconds the guest runs before the migration, to "
                    "measure its latency undisturbed (default 3)")
    ap.add_argument("--settle", type=positive(float), default=4.0,
                    help="seconds to watch the guest after completion")
    ap.add_argument("--boot-timeout", type=positive(float), default=300)
    ap.add_argument("--timeout", type=positive(float), default=600)


def parser():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="make demo DEMO_ARGS='...' passes options through.")
    add_guest_options(ap)
    ap.add_argument("--precopy-only", action="store_true",
                    help="postcopy-ram off: a plain precopy, for comparison")
    ap.add_argument("--preempt", action="store_true",
                    help="turn on postcopy-preempt")
    ap.add_argument("--src", default=OURS, help="source QEMU binary")
    ap.add_argument("--dst", default=OURS, help="destination QEMU binary")
    ap.add_argument("--flip", type=positive(int), nargs="?", const=-1,
                    default=0, metavar="SECONDS",
                    help="the workload flips a byte of guest memory on "
                    "purpose, SECONDS after it starts (default: about 1 s "
                    "into postcopy); the demo must report CORRUPTION")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--global", dest="globals", action="append", default=[],
                    metavar="PROP=VALUE", help="-global migration.PROP=VALUE "
                    "for both QEMUs (repeatable)")
    ap.add_argument("--trace", metavar="EVENTS",
                    help="trace these events (comma-separated, globs) in "
                    "both QEMUs, with timestamps, into --trace-dir")
    ap.add_argument("--trace-dir", default=os.path.join(BUILD, "demo",
                                                        "trace"),
                    help="where --trace writes source.trace and "
                    "destination.trace (default build/demo/trace)")
    return ap


def check_inputs(ap, binaries):
    for b in binaries:
        if not os.access(b, os.X_OK):
            ap.error(f"no QEMU binary at {b}")
    for f in ("vmlinuz", "initrd.img"):
        if not os.path.exists(os.path.join(GUEST, f)):
            ap.error(f"no {GUEST}/{f}: run scripts/make-guest.sh "
                     "(make demo does)")


def make_workdir(kind):
    path = os.path.join(BUILD, kind, f"run-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def main():
    ap = parser()
    args = ap.parse_args()
    check_inputs(ap, (args.src, args.dst))
    if args.flip == -1:
        args.flip = int(args.baseline + args.precopy + 1.5)
    # SIGTERM and SIGHUP end the run as Ctrl-C does: QEMU stopped, files gone.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    workdir = make_workdir("demo")
    keep = False
    try:
        for note in settle(args):
            print("demo: " + note)
        print(f"demo: {args.ram} guest, {vcpus(args.smp)}, {args.accel}; "
              f"workload {args.workload_mib} MiB {args.order}; "
              + describe_link(args))
        res = run_migration(args, workdir, args.src, args.dst)
        print_summary(res)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        if "error" in res:
            keep = True
            print(f"demo: QEMU logs kept in {workdir}")
            return 1
        if not res["ok"]:
            return 1
        if not res["reached_postcopy"] and not args.precopy_only:
            print("demo: the migration completed before the switch; a lower "
                  "--bandwidth or a shorter --precopy gives postcopy work")
            return 1
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted; QEMU stopped")
        return 130
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
