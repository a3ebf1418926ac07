#!/usr/bin/env python3
"""Measure ours against stock QEMU 7.2: the demo's migration, both ways.

Runs the migration of scripts/demo.py with ours (build/obj on both sides)
and with stock (Debian's /usr/bin/qemu-system-x86_64 on both sides) in
one run, alternating, N repetitions of each mode (MODES: the link, the
switch, preempt, the workload's size and vCPUs); one migration at a time.
Writes build/bench/<time>/results.json and latency-cdf.png (the guest's
access latency during postcopy, ours against stock, from the workload's
histograms) and prints the medians and the ours/stock ratios per mode.
--update-docs also rewrites docs/benchmarks.md,
docs/benchmarks-latency-cdf.png and docs/benchmarks.json from this run
(docs/NAME.* with --docs-name NAME).

The two sides are "ours" and "stock" whatever they run: --stock takes
another binary (an earlier build, for an A/B of a change), and
--stock-no-blocktime runs the stock side with postcopy-blocktime off (for
the cost of blocktime, with --stock set to ours); --ours-global and
--stock-global give one side's QEMUs a migration property (-global
migration.PROP=VALUE, e.g. x-postcopy-fault-around=0 for an A/B of it).

A run that fails, that sees corruption, or that never reaches
postcopy-active is reported and left out of the medians.  Exits non-zero
when a run failed or saw corruption, or a cell has no run to count.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo  # noqa: E402

# matplotlib's font cache and config go under build/, not the home directory
os.environ.setdefault("MPLCONFIGDIR",
                      os.path.join(demo.BUILD, "bench", ".matplotlib"))

DOCS = os.path.join(demo.TOP, "docs")
PNG = "latency-cdf.png"
IMPLS = ("ours", "stock")

# The modes a run can measure: a name, what it is, and what it changes
# from the demo's defaults (2 GiB guest, workload 1 GiB random, the link
# held to 128 MiB/s, the switch after 2 s, one channel).
MODES = {
    "128M": ("the link held to 128 MiB/s, one channel, the switch after "
             "2 s of precopy", {}),
    "128M-preempt": ("the same with postcopy-preempt", {"preempt": True}),
    "libvirt": ("Debian 12 libvirt's defaults: one channel (libvirt 9.0 "
                "cannot enable preempt), max-bandwidth at libvirt's "
                "maximum, max-postcopy-bandwidth 0; the switch 1 s in "
                "(virsh migrate-postcopy), so that postcopy carries most "
                "of the RAM: switched when the first pass ends, as "
                "--postcopy-after-precopy does, it carried about 100 MiB "
                "and a few dozen faults here",
                {"bandwidth": demo.UNLIMITED, "precopy": 1.0}),
    "libvirt-after-precopy": ("libvirt's defaults, switched when the first "
                              "pass over RAM ends (virsh migrate "
                              "--postcopy-after-precopy)",
                              {"bandwidth": demo.UNLIMITED,
                               "switch": "first-pass"}),
    "libvirt-preempt": ("libvirt's unlimited link and 1 s switch with "
                        "postcopy-preempt (libvirt 10 and later can)",
                        {"bandwidth": demo.UNLIMITED, "precopy": 1.0,
                         "preempt": True}),
    "128M-smp1": ("128M with 1 vCPU", {"smp": 1}),
    "128M-preempt-smp1": ("128M-preempt with 1 vCPU",
                          {"smp": 1, "preempt": True}),
    "libvirt-smp1": ("libvirt with 1 vCPU",
                     {"bandwidth": demo.UNLIMITED, "precopy": 1.0,
                      "smp": 1}),
    "libvirt-preempt-smp1": ("libvirt-preempt with 1 vCPU",
                             {"bandwidth": demo.UNLIMITED, "precopy": 1.0,
                              "preempt": True, "smp": 1}),
    "128M-smp4": ("128M with 4 vCPUs, the workload in 4 threads, each on "
                  "a quarter of it, all also reading 64 MiB of shared "
                  "pages (a 3 GiB guest)",
                  {"smp": 4, "threads": 4, "shared_mib": 64, "ram": "3G"}),
    "128M-seq": ("128M with the workload sweeping its memory in order",
                 {"order": "seq"}),
    "128M-stride": ("128M with the workload touching every 8th page, then "
                    "the next", {"order": "stride", "stride": 8}),
    "128M-seq-preempt": ("128M-seq with postcopy-preempt",
                         {"order": "seq", "preempt": True}),
    "128M-stride-preempt": ("128M-stride with postcopy-preempt",
                            {"order": "stride", "stride": 8,
                             "preempt": True}),
    "128M-wl512": ("128M with a workload of 512 MiB",
                   {"workload_mib": 512}),
    "128M-wl2048": ("128M with a workload of 2 GiB (a 3 GiB guest)",
                    {"workload_mib": 2048, "ram": "3G"}),
    "128M-wl512-smp1": ("128M-wl512 with 1 vCPU",
                        {"workload_mib": 512, "smp": 1}),
    "128M-wl2048-smp1": ("128M-wl2048 with 1 vCPU",
                         {"workload_mib": 2048, "ram": "3G", "smp": 1}),
}
DEFAULT_MODES = "128M,128M-preempt,libvirt"
# A run whose host lost more of its CPU time than this to its hypervisor
# during postcopy measures the hypervisor (bench --max-stolen)
MAX_STOLEN_PCT = 1.0
# What a mode may change, with the option of scripts/demo.py it stands for
MODE_KEYS = ("ram", "smp", "workload_mib", "order", "stride", "threads",
             "shared_mib", "bandwidth", "switch", "precopy", "preempt")

# key, label, unit, how to read it from a run's result
METRICS = [
    ("p50_us", "access latency p50", "us",
     lambda r: r["latency_postcopy"]["p50_us"]),
    ("p99_us", "access latency p99", "us",
     lambda r: r["latency_postcopy"]["p99_us"]),
    ("p999_us", "access latency p99.9", "us",
     lambda r: r["latency_postcopy"]["p999_us"]),
    ("worst_us", "access latency worst", "us",
     lambda r: r["latency_postcopy"]["worst_us"]),
    ("stall_p50_us", f"stall (>= {demo.STALL_US} us) p50", "us",
     lambda r: r["latency_postcopy"]["stall_p50_us"]),
    ("over_1ms", "accesses over 1 ms", "",
     lambda r: r["latency_postcopy"]["over_1ms"]),
    ("over_1ms_per_1000_requests", "accesses over 1 ms per 1000 pages "
     "requested", "", lambda r: round(
         1000 * r["latency_postcopy"]["over_1ms"] / r["pages_requested"], 2)
     if r.get("pages_requested") else None),
    ("accesses", "accesses", "",
     lambda r: r["latency_postcopy"]["accesses"]),
    ("accesses_per_s", "accesses per second", "",
     lambda r: round(r["latency_postcopy"]["accesses"] /
                     r["latency_postcopy"]["seconds"])
     if r["latency_postcopy"].get("seconds") else None),
    ("postcopy_s", "postcopy duration", "s", lambda r: r["postcopy_s"]),
    ("remaining_at_switch_mib", "RAM left at the switch", "MiB",
     lambda r: r.get("remaining_at_switch_mib")),
    ("total_time_ms", "total time", "ms", lambda r: r["total_time_ms"]),
    ("downtime_ms", "downtime", "ms", lambda r: r["downtime_ms"]),
    ("blocktime_ms", "blocktime", "ms", lambda r: r["blocktime_ms"]),
    ("vcpu_blocktime_max_ms", "blocktime of the most blocked vCPU", "ms",
     lambda r: max(r["vcpu_blocktime_ms"]) if r.get("vcpu_blocktime_ms")
     else None),
    ("pages_requested", "pages requested", "",
     lambda r: r["pages_requested"]),
    ("blocktime_per_request_ms", "blocktime per page requested", "ms",
     lambda r: round(r["blocktime_ms"] / r["pages_requested"], 3)
     if r.get("blocktime_ms") is not None and r.get("pages_requested")
     else None),
    ("fault_mean_us", "fault latency mean (stock: blocktime/request)", "us",
     lambda r: fault_mean_us(r)),
    ("fault_p50_us", "fault latency p50 (bucket bound)", "us",
     lambda r: (r.get("fault_latency") or {}).get("p50_us")),
    ("fault_p99_us", "fault latency p99 (bucket bound)", "us",
     lambda r: (r.get("fault_latency") or {}).get("p99_us")),
    ("fault_worst_us", "fault latency worst (bucket bound)", "us",
     lambda r: (r.get("fault_latency") or {}).get("worst_us")),
    ("faults", "faults", "", lambda r: (r.get("fault_latency") or {})
     .get("faults")),
    ("host_stolen_pct", "host CPU stolen during postcopy", "%",
     lambda r: (r.get("host_stolen_pct") or {}).get("postcopy")),
]


def fault_mean_us(r):
    """The destination's mean fault latency; where it reports none
    (stock 7.2), blocktime per page requested, the nearest mean it has."""
    if r.get("fault_latency"):
        return r["fault_latency"]["mean_us"]
    if r.get("blocktime_ms") is not None and r.get("pages_requested"):
        return round(1000 * r["blocktime_ms"] / r["pages_requested"], 1)
    return None


def rel(path):
    return os.path.relpath(path, demo.TOP) if path.startswith(
        demo.TOP + os.sep) else path


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def file_id(path):
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def machine(args, accel_why):
    cpu = "unknown"
    hyper = False
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and " hypervisor" in line:
                hyper = True
    mem = sh(["awk", "/MemTotal/ {printf \"%.1f GiB\", $2/1048576}",
              "/proc/meminfo"])
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        debian = "?"
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory": mem,
            "virtual_machine": hyper, "kernel": platform.release(),
            "debian": debian, "accel": args.accel, "accel_why": accel_why,
            "loadavg_start": os.getloadavg()[1]}


def place_cost(outdir):
    """Microseconds a UFFDIO_COPY into fresh memory takes here, or None.

    The destination's listen thread places every page so; on a virtual
    machine whose hypervisor takes free memory back, the first write to a
    fresh page faults in the hypervisor and costs several times the copy
    (scripts/place-cost.c), and a run's results follow it.
    """
    exe = os.path.join(outdir, "place-cost")
    if not os.path.exists(exe):
        try:
            subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror",
                            "-o", exe,
                            os.path.join(demo.TOP, "scripts", "place-cost.c")],
                           check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"bench: scripts/place-cost.c did not build ({e}): the "
                  "cost of placing a page is not recorded")
            return None
    try:
        return float(sh([exe]))
    except ValueError:
        return None


def binaries(args):
    tree = os.path.join(demo.BUILD, "qemu")
    dirty = sh(["git", "-C", tree, "status", "--porcelain",
                "--untracked-files=no"])
    return {
        "ours": {"path": args.ours, "sha256": sha256(args.ours),
                 "version": sh([args.ours, "--version"]).split("\n")[0],
                 "built": datetime.datetime.fromtimestamp(
                     os.stat(args.ours).st_mtime, datetime.timezone.utc)
                 .strftime("%Y-%m-%d %H:%M UTC"),
                 "tree_head": sh(["git", "-C", tree, "rev-parse", "--short",
                                  "HEAD"]),
                 "tree_patches": sh(["git", "-C", tree, "rev-list", "--count",
                                     "base..HEAD"]),
                 "tree_had_local_changes": bool(dirty),
                 "project_commit": sh(["git", "-C", demo.TOP, "rev-parse",
                                       "--short", "HEAD"])},
        "stock": {"path": args.stock, "sha256": sha256(args.stock),
                  "version": sh([args.stock, "--version"]).split("\n")[0]},
    }


def stolen_verdict(res, limit):
    """Why a run that lost more than @limit% of the host's CPU to its
    hypervisor during postcopy is not counted, or None."""
    stolen = (res.get("host_stolen_pct") or {}).get("postcopy")
    if stolen is None or stolen <= limit:
        return None
    return (f"host CPU stolen {stolen}% during postcopy, over --max-stolen "
            f"{limit}%")


def busy_steal_pct(window):
    """The share of the host's CPU time its hypervisor took in @window
    seconds while every CPU was kept busy: an idle virtual machine asks
    for little and is seldom refused, so only a busy one shows whether
    the hypervisor would give it the CPUs a migration needs."""
    spin = ("import time\nend = time.monotonic() + %f\n"
            "while time.monotonic() < end:\n    pass\n" % window)
    start = demo.host_cpu_ticks()
    procs = [subprocess.Popen([sys.executable, "-c", spin])
             for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.wait()
    return demo.stolen_pct(start, demo.host_cpu_ticks())


def wait_for_quiet_host(limit, longest, window=2.0):
    """Wait, at most @longest seconds, for a @window in which the host's
    hypervisor took at most @limit% of its CPU time with every CPU busy:
    it takes it in waves of minutes, and a migration started in one is
    not counted.  Returns the seconds waited and the last window's
    share."""
    waited, pct = 0.0, None
    if longest <= 0:
        return waited, pct
    while True:
        pct = busy_steal_pct(window)
        if pct is None or pct <= limit or waited >= longest:
            return waited, pct
        time.sleep(3 * window)
        waited += 4 * window


def run_one(args, workdir, binary):
    """One migration from @binary to itself, in a fresh @workdir."""
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    return demo.run_migration(args, workdir, binary, binary, progress=False)


def classify(res):
    if "error" in res:
        return "failed: " + res["error"]
    if not res["ok"]:
        return ("integrity failed: " +
                ("; ".join(res["corruption"][:2]) or
                 f"guest running {res['guest_running']}, progressing "
                 f"{res['guest_progressing']}"))
    if not res["reached_postcopy"]:
        return ("never reached postcopy-active (statuses: " +
                ", ".join(res["statuses"]) + ")")
    return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def counted(runs, impl, mode):
    return [r for r in runs if impl in (None, r["impl"]) and
            r["mode"] == mode and r["counted"]]


def summarize(runs, modes):
    out = {}
    for mode in modes:
        cell = {}
        for key, _, _, get in METRICS:
            row = {}
            for impl in IMPLS:
                good = counted(runs, impl, mode)
                vals = [v for v in (get(r["result"]) for r in good)
                        if v is not None]
                row[impl] = median(vals)
                row["n_" + impl] = len(good)
                row["range_" + impl] = [min(vals), max(vals)] if vals else None
            o, s = row["ours"], row["stock"]
            row["ratio"] = round(o / s, 3) if o is not None and s else None
            cell[key] = row
        out[mode] = cell
    return out


def merged_hist(runs, impl, mode, which="latency_postcopy"):
    """The histograms of the counted runs (impl None: both) added up."""
    hist = [0] * demo.BUCKETS
    for r in runs:
        if impl in (None, r["impl"]) and r["mode"] == mode and r["counted"]:
            for i, c in enumerate(r["result"][which]["histogram_log2_us"]):
                hist[i] += c
    return hist


def cdf_points(hist):
    """(x, y): the fraction of counts at most x us, for each bucket."""
    total = sum(hist)
    xs, ys, seen = [], [], 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= total:
            break   # 1.0 has no place on a logit axis
        xs.append(demo.bucket_us(i))
        ys.append(seen / total)
    return xs, ys


def plot(runs, modes, names, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(modes), 3)
    rows = (len(modes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.6 * rows),
                             squeeze=False)
    for ax in axes.flat[len(modes):]:
        ax.set_visible(False)
    for ax, mode in zip(axes.flat, modes):
        for impl, style in zip(IMPLS, ("-", "--")):
            hist = merged_hist(runs, impl, mode)
            if not sum(hist):
                continue
            n = len(counted(runs, impl, mode))
            ax.step(*cdf_points(hist), style, where="post", linewidth=2,
                    label=f"{names[impl]}, postcopy ({n} runs, {sum(hist)} "
                    "accesses)")
        base = merged_hist(runs, None, mode, "latency_baseline")
        if sum(base):
            ax.step(*cdf_points(base), ":", where="post", color="gray",
                    label="both, before the migration")
        ax.set_xscale("log", base=2)
        ax.set_yscale("logit")
        ax.set_xlabel("access time (us, log2 buckets)")
        ax.set_ylabel("fraction of accesses at most this long")
        ax.set_title(mode)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        v = round(v, 2)
    elif isinstance(v, float):
        v = int(v)
    return f"{v} {unit}".strip()


def label_of(key):
    for k, label, unit, _ in METRICS:
        if k == key:
            return label + (f" ({unit})" if unit else "")
    return key


def print_table(summary, names):
    for mode, cell in summary.items():
        print(f"\n{mode}: medians ({cell['total_time_ms']['n_ours']} "
              f"{names['ours']}, {cell['total_time_ms']['n_stock']} "
              f"{names['stock']} runs counted)")
        print(f"  {'':54} {names['ours']:>12} {names['stock']:>12} "
              f"{'ratio':>8}")
        for key, _, _, _ in METRICS:
            row = cell[key]
            print(f"  {label_of(key):54} {fmt(row['ours']):>12} "
                  f"{fmt(row['stock']):>12} {fmt(row['ratio']):>8}")


def mode_settings(name, base):
    """The demo options a mode runs with: @base's, then its own."""
    settings = {k: base[k] for k in MODE_KEYS if k in base}
    settings.update({"switch": base.get("switch", "time"),
                     "preempt": False})
    settings.update(MODES[name][1])
    return settings


def describe_mode(st):
    link = ("unlimited (libvirt's maximum)" if st["bandwidth"] ==
            demo.UNLIMITED else f"{st['bandwidth']} MiB/s")
    switch = ("when the first pass ends" if st["switch"] == "first-pass"
              else f"after {st['precopy']} s")
    threads = st.get("threads", 1)
    work = (f"workload {st['workload_mib']} MiB {st['order']}"
            + (f" (every {st.get('stride', 8)}th page)"
               if st["order"] == "stride" else "")
            + (f" in {threads} threads" if threads > 1 else "")
            + (f", {st['shared_mib']} MiB shared" if st.get("shared_mib")
               else ""))
    return (f"{st['ram']} guest, {demo.vcpus(st['smp'])}, {work}, link "
            f"{link}, switch {switch}, postcopy-preempt "
            f"{'on' if st['preempt'] else 'off'}")


# The targets one channel is held to, with one vCPU: (metric, which
# figure of its row: ours' median or ours/stock, "max" or "min", the
# bound, what it says)
TARGETS = [
    ("over_1ms_per_1000_requests", "ours", "max", 1,
     "accesses over 1 ms per 1000 pages requested: at most 1"),
    ("fault_p99_us", "ours", "max", 1024,
     "fault latency p99 (bucket bound, us): at most 1 ms"),
    ("fault_worst_us", "ours", "max", 5000,
     "fault latency worst (bucket bound, us): at most 5 ms"),
    ("blocktime_ms", "ratio", "max", 0.5,
     "blocktime: at most 0.5x stock's"),
    ("accesses_per_s", "ratio", "min", 2,
     "accesses per second: at least 2x stock's"),
]
# Rows given as the upper bounds of log2 buckets: a value whose bucket
# straddles a bound is neither met nor missed
BUCKET_KEYS = ("p50_us", "p99_us", "p999_us", "stall_p50_us",
               "fault_p50_us", "fault_p99_us", "fault_worst_us")
# One channel is to stay within this of preempt on every latency row
PREEMPT_FACTOR = 1.5
LATENCY_KEYS = ("p50_us", "p99_us", "p999_us", "worst_us", "stall_p50_us",
                "over_1ms", "over_1ms_per_1000_requests", "fault_mean_us",
                "fault_p50_us", "fault_p99_us", "fault_worst_us")


def judge(key, value, kind, bound):
    """'met', 'not met' or 'not known' for @value against @bound."""
    if value is None:
        return "not known"
    if kind == "min":
        return "met" if value >= bound else "not met"
    if value <= bound:
        return "met"
    if key in BUCKET_KEYS and value / 2 < bound:
        return "not known"      # the bucket holds values on both sides
    return "not met"


def targets_section(data):
    """Markdown judging the run's one-vCPU, one-channel modes against
    TARGETS, each against its preempt twin, and across workload sizes;
    [] where the run has no such mode."""
    c, summary = data["config"], data["summary"]
    st = c["mode_settings"]
    judged = [m for m in c["modes"] if st[m]["smp"] == 1 and
              not st[m]["preempt"] and m in summary]
    if not judged:
        return []
    ours, stock = c["names"]["ours"], c["names"]["stock"]

    def twin(mode):
        want = dict(st[mode], preempt=True)
        return next((m for m in c["modes"] if st[m] == want and
                     m in summary), None)

    lines = [
        "## One channel against its targets", "",
        "Each mode with one vCPU and postcopy-preempt off, judged on the "
        f"medians above (the median of {ours}, or {ours}/{stock} where "
        "the target is a ratio). Bucket rows are upper bounds of powers "
        "of two: a median whose bucket holds values on both sides of a "
        "bound is not known.", "",
        "| target | " + " | ".join(judged) + " |",
        "| --- |" + " --- |" * len(judged),
    ]
    for key, which, kind, bound, what in TARGETS:
        cells = []
        for mode in judged:
            v = summary[mode][key][which]
            cells.append(f"{fmt(v)}{'x' if which == 'ratio' and v else ''}"
                         f": {judge(key, v, kind, bound)}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    cells = []
    pairs = []
    for mode in judged:
        pre = twin(mode)
        if pre is None:
            cells.append("no preempt mode in this run")
            continue
        pairs.append((mode, pre))
        rows = {"not met": [], "not known": []}
        for key in LATENCY_KEYS:
            one, two = summary[mode][key]["ours"], summary[pre][key]["ours"]
            if one is None or two is None:
                continue
            verdict = judge(key, one, "max", PREEMPT_FACTOR * two)
            if verdict != "met":
                rows[verdict].append(f"{label_of(key)} {fmt(one)} against "
                                     f"{fmt(two)}")
        why = "; ".join(", ".join(rows["not met"]) if v == "not met" else
                        "not known: " + ", ".join(rows[v])
                        for v in rows if rows[v])
        verdict = ("not met" if rows["not met"] else
                   "not known" if rows["not known"] else "met")
        cells.append(f"against {pre}: {verdict}" +
                     (f" ({why})" if why else ""))
    lines.append(f"| within {PREEMPT_FACTOR}x of preempt on every latency "
                 "row | " + " | ".join(cells) + " |")
    for mode, pre in pairs:
        lines += ["", f"{ours}, {mode} against {pre}:", "",
                  f"| | {mode} | {pre} | one channel/preempt |",
                  "| --- | ---: | ---: | ---: |"]
        for key in LATENCY_KEYS:
            one, two = summary[mode][key]["ours"], summary[pre][key]["ours"]
            ratio = round(one / two, 2) if one is not None and two else None
            lines.append(f"| {label_of(key)} | {fmt(one)} | {fmt(two)} | "
                         f"{fmt(ratio)} |")
    # The same mode at several sizes of workload
    groups = {}
    for mode in judged:
        rest = {k: v for k, v in st[mode].items()
                if k not in ("workload_mib", "ram")}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(mode)
    for modes in groups.values():
        if len({st[m]["workload_mib"] for m in modes}) < 2:
            continue
        modes.sort(key=lambda m: st[m]["workload_mib"])
        lines += ["", "As the work grows (" + ", ".join(modes) + "):", "",
                  "| workload (MiB) | blocktime per page requested, "
                  f"{ours} (ms) | fault latency mean, {ours} (us) | "
                  f"blocktime, {ours}/{stock} | accesses over 1 ms, "
                  f"{ours}/{stock} | accesses per second, {ours}/{stock} "
                  "|",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in modes:
            row = summary[m]
            lines.append(
                f"| {st[m]['workload_mib']} | "
                f"{fmt(row['blocktime_per_request_ms']['ours'])} | "
                f"{fmt(row['fault_mean_us']['ours'])} | "
                f"{fmt(row['blocktime_ms']['ratio'])} | "
                f"{fmt(row['over_1ms']['ratio'])} | "
                f"{fmt(row['accesses_per_s']['ratio'])} |")
    return lines + [""]


def write_docs(data, outdir, name="benchmarks"):
    """docs/@name.md, its picture and its results from the run in
    @outdir"""
    m, b, c = data["machine"], data["binaries"], data["config"]
    names = c["names"]
    doc_png = f"{name}-latency-cdf.png"
    lines = [
        "# Benchmarks: ours against stock QEMU 7.2"
        + (f" ({name})" if name != "benchmarks" else ""),
        "",
        "Written by `scripts/bench.py` (`make bench "
        "BENCH_ARGS=--update-docs` at the end of a run, or `--docs-from` "
        "with a run's results) from the run that started "
        f"{data['started']}; its full results were in "
        f"`build/bench/{os.path.basename(outdir)}/results.json`, copied to "
        f"`docs/{name}.json`. The tables per mode give medians, the "
        "last one every migration.",
        "",
        "## The machine",
        "",
        f"- CPU: {m['cpu']}, {m['cpus']} cores"
        + (", a virtual machine" if m["virtual_machine"] else "")
        + f"; {m['memory']} of RAM",
        f"- kernel {m['kernel']}, Debian {m['debian']}",
        f"- load average (5 min) {m['loadavg_start']:.2f} at the start, "
        f"{m['loadavg_end']:.2f} at the end of the run",
        f"- accelerator: {m['accel']} ({m['accel_why']})",
    ] + ([
        "- placing a 4 KiB page into fresh memory, as the destination "
        "does (UFFDIO_COPY, `scripts/place-cost.c`, 256 MiB): "
        f"{m['place_cost_us_start']:.2f} us at the start, "
        f"{m['place_cost_us_end']:.2f} us at the end of the run",
    ] if m.get("place_cost_us_start") is not None and
        m.get("place_cost_us_end") is not None else []) + [
        f"- {names['ours']}: `{rel(b['ours']['path'])}` built "
        f"{b['ours']['built']} from "
        f"`build/qemu` at {b['ours']['tree_head']} (base + "
        f"{b['ours']['tree_patches']} patches"
        + (", with local changes in the tree" if
           b["ours"]["tree_had_local_changes"] else "")
        + f"), project commit {b['ours']['project_commit']}",
        f"- {names['stock']}: `{rel(b['stock']['path'])}`, "
        f"{b['stock']['version']}"
        + (", postcopy-blocktime off" if c.get("stock_no_blocktime")
           else ""),
    ]
    for impl in IMPLS:
        for g in c.get("globals", {}).get(impl, []):
            lines.append(f"- {names[impl]}: `-global migration.{g}` on "
                         "source and destination")
    if data.get("ours_changed_during_run"):
        lines.append("- **the ours binary was rebuilt during the run**; "
                     "runs before and after are mixed")
    lines += [
        "",
        "## What ran",
        "",
        "The demo's migration (`scripts/demo.py`) over TCP on loopback: the "
        "guest's workload keeps its memory busy (half the accesses rewrite "
        f"the page), runs {c['baseline']} s undisturbed, then migrates, "
        "postcopy-blocktime on"
        + (f" (off for {names['stock']})" if c.get("stock_no_blocktime")
           else "") + ". The modes:",
        "",
    ]
    for mode in c["modes"]:
        lines.append(f"- **{mode}**: {MODES.get(mode, ('', {}))[0]}; "
                     f"{describe_mode(c['mode_settings'][mode])}.")
    lines += [
        "",
        f"{c['reps']} repetition(s) of each mode, each with "
        f"{names['ours']} and {names['stock']} one after the other (which "
        "goes first alternates), one migration at a time: "
        f"{len(data['runs'])} migrations.",
        "",
    ]
    left = [r for r in data["runs"] if not r["counted"]]
    if left:
        lines.append("Left out of the medians:")
        lines.append("")
        for r in left:
            lines.append(f"- {names[r['impl']]}, {r['mode']}, repetition "
                         f"{r['rep'] + 1}: {r['verdict']}")
    else:
        lines.append("Every migration reached postcopy-active, completed, "
                     "and the guest ran on with no CORRUPTION line.")
    lines += ["", "## Results", ""]
    for mode, cell in data["summary"].items():
        n = cell["total_time_ms"]
        lines += [
            f"### {mode}",
            "",
            f"Medians of {n['n_ours']} ({names['ours']}) and "
            f"{n['n_stock']} ({names['stock']}) migrations; latencies are "
            "the guest's, during postcopy.",
            "",
            f"| | {names['ours']} | (range) | {names['stock']} | (range) | "
            f"{names['ours']}/{names['stock']} |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]

        def span(r):
            return "-" if not r else f"{fmt(r[0])}–{fmt(r[1])}"
        for key, _, _, _ in METRICS:
            row = cell[key]
            lines.append(f"| {label_of(key)} | "
                         f"{fmt(row['ours'])} | {span(row['range_ours'])} | "
                         f"{fmt(row['stock'])} | {span(row['range_stock'])} "
                         f"| {fmt(row['ratio'])} |")
        both = [cell[k] for k, _, _, _ in METRICS
                if cell[k]["range_ours"] and cell[k]["range_stock"]]
        overlap = sum(1 for r in both
                      if r["range_ours"][0] <= r["range_stock"][1] and
                      r["range_stock"][0] <= r["range_ours"][1])
        lines += ["", f"The two sides' ranges overlap in {overlap} of "
                  f"these {len(both)} rows.", ""]
    lines += [
        f"![access latency during postcopy, {names['ours']} against "
        f"{names['stock']}]({doc_png})",
        "",
        "### Every migration",
        "",
        "| # | side | mode | postcopy (s) | total (ms) | downtime "
        "(ms) | blocktime (ms) | requested | fault mean (us) | p99.9 (us) | "
        "worst (us) | over 1 ms | CPU stolen (%) | counted |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(data["runs"], 1):
        res = r["result"]
        lat = res.get("latency_postcopy", {})
        lines.append(
            f"| {i} | {names[r['impl']]} | {r['mode']} | "
            f"{fmt(res.get('postcopy_s'))} | {fmt(res.get('total_time_ms'))} "
            f"| {fmt(res.get('downtime_ms'))} | "
            f"{fmt(res.get('blocktime_ms'))} | "
            f"{fmt(res.get('pages_requested'))} | "
            f"{fmt(fault_mean_us(res))} | "
            f"{fmt(lat.get('p999_us'))} | {fmt(lat.get('worst_us'))} | "
            f"{fmt(lat.get('over_1ms'))} | "
            f"{fmt((res.get('host_stolen_pct') or {}).get('postcopy'))} | "
            f"{'yes' if r['counted'] else 'no'} |")
    lines += [""] + targets_section(data)
    lines += ["## How to read it", ""] + HOW_TO_READ
    notes = c.get("notes")
    if notes:
        lines += ["", "## Notes on this run", ""] + [f"- {n}" for n in notes]
    lines.append("")
    with open(os.path.join(DOCS, f"{name}.md"), "w") as f:
        f.write("\n".join(lines))
    shutil.copyfile(os.path.join(outdir, PNG), os.path.join(DOCS, doc_png))
    shutil.copyfile(os.path.join(outdir, "results.json"),
                    os.path.join(DOCS, f"{name}.json"))


HOW_TO_READ = [
    "- The access latencies are the workload's own (`guest/workload.c`): "
    "it times every access (check a 4 KiB page, maybe rewrite it) and "
    "prints a histogram in powers of two of microseconds each second. "
    "A quantile is the upper bound of its bucket, so it moves in "
    "factors of two. The guest cannot tell a page fault from another "
    "access, and a quantile counts accesses, not time: a guest whose "
    "faults are answered in a fraction of a millisecond runs on into "
    "memory that has not arrived yet and faults on a larger share of "
    "its accesses than one that waits tens of milliseconds a fault "
    "while the background copy fills its memory. So p99 can show a "
    "fast fault's round trip where the slower side shows ordinary "
    "speed; read the quantiles with the guest's progress (accesses per "
    "second), the worst access, the stalls and blocktime.",
    f"- A stall is an access of {demo.STALL_US} us or more. The guest "
    "sees some of those without any migration (the gray line in the "
    "picture: the seconds before each migration); `scripts/demo.py` "
    "prints the same for comparison.",
    "- The fault latency rows come from the destination's query-migrate "
    "(`postcopy-latency`, `postcopy-latency-dist`, QEMU 10.1's members): "
    "each fault from its read off the userfaultfd to its page placed; "
    "quantiles and the worst are bucket upper bounds (powers of two of "
    "microseconds). Stock 7.2 reports none: its mean row shows blocktime "
    "per page requested instead, a mean of another kind (with one vCPU, "
    "about how long the guest waited for each page it asked for).",
    "- Postcopy duration: from `migrate-start-postcopy` to "
    "`completed`, as the script saw it (polling every 0.2 s). Total "
    "time and downtime are the source's `query-migrate`; blocktime "
    "the destination's `postcopy-blocktime`.",
    "- Host CPU stolen: the share of this machine's CPU time its "
    "hypervisor took during postcopy (/proc/stat's steal column, 0 on "
    "bare metal). Both QEMUs and the guest's vCPUs share the host's "
    "cores; a run that lost more of them is slower for that reason, "
    "whichever side it measured, and the side that keeps the CPUs busier "
    "loses more. A run that lost more than `--max-stolen` (1% unless the "
    "notes say otherwise) is not counted and is run again, at most "
    "`--stolen-retries` (2) more times; the table of every migration "
    "lists it.",
    "- A ratio below 1 means the first side took less (time, waits) than "
    "the second; for accesses and accesses per second, more is better.",
    "- The picture: the fraction of accesses during postcopy that took "
    "at most a given time, all counted runs of a mode together, and in "
    "gray the same before the migrations began; the y axis stretches both "
    "ends, so the tail is visible.",
]


def plot_run(data, outdir):
    c = data["config"]
    title = (f"the guest's access times, {c['accel']}, "
             f"{data['started']}")
    plot(data["runs"], c["modes"], c["names"], os.path.join(outdir, PNG),
         title)


def upgrade_results(data):
    """Results of a run from before modes (preempt off/on) in today's form."""
    c = data["config"]
    if "mode_settings" in c:
        return
    names = {False: "128M", True: "128M-preempt"}
    c["modes"] = [names[p] for p in c["modes"]]
    c["mode_settings"] = {}
    for mode in c["modes"]:
        st = {k: c[k] for k in MODE_KEYS if k in c}
        st.update({"switch": "time", "preempt": mode.endswith("preempt")})
        c["mode_settings"][mode] = st
    c["names"] = {"ours": "ours", "stock": "stock"}
    for r in data["runs"]:
        r["mode"] = names[r.pop("preempt")]


def docs_from(ap, path, notes, name, max_stolen):
    """Summary, picture and docs again from a results.json, no migration;
    @notes (--note) are added to the run's notes, and with @max_stolen
    (--max-stolen) the runs are counted again by it."""
    try:
        import matplotlib  # noqa: F401
        with open(path) as f:
            data = json.load(f)
    except (ImportError, OSError, ValueError) as e:
        ap.error(f"--docs-from {path}: {e}")
    outdir = os.path.dirname(os.path.abspath(path))
    upgrade_results(data)
    data["config"]["notes"] = data["config"].get("notes", []) + notes
    # The quantiles again from the recorded histograms (so a change of
    # their definition reaches an earlier run's numbers).
    for r in data["runs"]:
        for key in ("latency_baseline", "latency_precopy",
                    "latency_postcopy"):
            lat = r["result"].get(key)
            if lat:
                lat.update(demo.hist_stats(lat["histogram_log2_us"]))
    if max_stolen is not None:
        data["config"]["max_stolen_pct"] = max_stolen
        for r in data["runs"]:
            verdict = classify(r["result"]) or stolen_verdict(r["result"],
                                                              max_stolen)
            r["counted"] = verdict is None
            r["verdict"] = verdict or "counted"
    data["summary"] = summarize(data["runs"], data["config"]["modes"])
    print_table(data["summary"], data["config"]["names"])
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    plot_run(data, outdir)
    write_docs(data, outdir, name)
    print(f"bench: docs/{name}.md, its picture and docs/{name}.json "
          f"rewritten from {path}")
    return 0


def mode_list(text):
    modes = [m for m in text.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise argparse.ArgumentTypeError(
                f"no mode {m!r}; have {', '.join(MODES)}")
    if not modes:
        raise argparse.ArgumentTypeError("no mode given")
    return modes


def parser():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modes:\n" + "\n".join(f"  {k:16} {v[0]}" for k, v in
                                      MODES.items())
        + "\n\nmake bench BENCH_N=... BENCH_ARGS='...' passes options "
        "through.")
    ap.add_argument("--reps", type=demo.positive(int), default=3,
                    help="repetitions (default 3)")
    ap.add_argument("--modes", type=mode_list,
                    default=mode_list(DEFAULT_MODES),
                    help=f"modes to run, comma-separated (default "
                    f"{DEFAULT_MODES})")
    ap.add_argument("--ours", default=demo.OURS)
    ap.add_argument("--stock", default=demo.STOCK)
    ap.add_argument("--names", default="ours,stock",
                    help="what to call the two sides in the tables "
                    "(default ours,stock)")
    ap.add_argument("--stock-no-blocktime", action="store_true",
                    help="postcopy-blocktime off for the stock side")
    for impl in IMPLS:
        ap.add_argument(f"--{impl}-global", action="append", default=[],
                        metavar="PROP=VALUE", dest=f"{impl}_globals",
                        help=f"-global migration.PROP=VALUE for the {impl} "
                        "side's QEMUs (repeatable)")
    ap.add_argument("--max-stolen", type=float, metavar="PCT",
                    help="a run during whose postcopy the host's hypervisor "
                    "took more than PCT%% of its CPU time is not counted "
                    f"(default {MAX_STOLEN_PCT}; with --docs-from, the "
                    "runs are judged again by it)")
    ap.add_argument("--stolen-retries", type=int, default=2, metavar="N",
                    help="run such a run again, up to N more times "
                    "(default 2)")
    ap.add_argument("--quiet-wait", type=float, default=300,
                    metavar="SECONDS",
                    help="before each migration, wait up to SECONDS for "
                    "2 s in which the hypervisor took at most "
                    "--max-stolen of the CPU with every CPU busy "
                    "(default 300; 0: do not wait)")
    ap.add_argument("--note", action="append", default=[],
                    help="a line for the docs' notes on this run")
    ap.add_argument("--update-docs", action="store_true",
                    help="rewrite docs/benchmarks.md and its picture")
    ap.add_argument("--docs-name", default="benchmarks", metavar="NAME",
                    help="write docs/NAME.md, docs/NAME-latency-cdf.png and "
                    "docs/NAME.json (default benchmarks): a run of some "
                    "modes only beside the main one")
    ap.add_argument("--docs-from", metavar="RESULTS_JSON",
                    help="migrate nothing: summarize an earlier run's "
                    "results.json again and rewrite the docs from it")
    demo.add_guest_options(ap)
    return ap


def main():
    ap = parser()
    args = ap.parse_args()
    if (args.stolen_retries < 0 or (args.max_stolen or 0) < 0 or
            args.quiet_wait < 0):
        ap.error("--stolen-retries, --max-stolen and --quiet-wait cannot "
                 "be negative")
    if args.docs_from:
        return docs_from(ap, args.docs_from, args.note, args.docs_name,
                         args.max_stolen)
    if args.max_stolen is None:
        args.max_stolen = MAX_STOLEN_PCT
    demo.check_inputs(ap, (args.ours, args.stock))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        ap.error("no matplotlib: make bench installs Debian's "
                 "python3-matplotlib and runs this with /usr/bin/python3 "
                 f"(this is {sys.executable})")
    names = dict(zip(IMPLS, args.names.split(",")))
    if len(names) != 2 or len(args.names.split(",")) != 2:
        ap.error("--names takes two names, comma-separated")
    args.precopy_only = False
    args.flip = 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)

    notes = demo.settle(args)
    accel_why = demo.detect_accel()[1].line()
    stamp = datetime.datetime.now(datetime.timezone.utc)
    outdir = os.path.join(demo.BUILD, "bench", stamp.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(outdir, exist_ok=True)
    workdir = os.path.join(outdir, "work")
    for note in notes:
        print("bench: " + note)
    base = {k: getattr(args, k) for k in MODE_KEYS if hasattr(args, k)}
    settings = {m: mode_settings(m, base) for m in args.modes}
    data = {
        "started": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(args, accel_why),
        "binaries": binaries(args),
        "config": {"accel": args.accel, "baseline": args.baseline,
                   "settle": args.settle, "reps": args.reps,
                   "max_stolen_pct": args.max_stolen,
                   "stolen_retries": args.stolen_retries,
                   "modes": args.modes, "mode_settings": settings,
                   "names": names,
                   "stock_no_blocktime": args.stock_no_blocktime,
                   "globals": {impl: getattr(args, f"{impl}_globals")
                               for impl in IMPLS},
                   "notes": args.note},
        "runs": [],
    }
    ours_id = file_id(args.ours)
    data["machine"]["place_cost_us_start"] = place_cost(outdir)
    if data["machine"]["place_cost_us_start"] is not None:
        print("bench: placing a page into fresh memory takes "
              f"{data['machine']['place_cost_us_start']:.2f} us here "
              "(scripts/place-cost.c)")

    plan = []
    for rep in range(args.reps):
        for k, mode in enumerate(args.modes):
            order = IMPLS if (rep + k) % 2 == 0 else IMPLS[::-1]
            plan += [(rep, mode, impl) for impl in order]
    print(f"bench: {len(plan)} migrations, results in {outdir}")
    for mode in args.modes:
        print(f"bench: {mode}: {describe_mode(settings[mode])}")
    bad = 0
    try:
        for i, (rep, mode, impl) in enumerate(plan, 1):
            binary = args.ours if impl == "ours" else args.stock
            if impl == "ours" and file_id(args.ours) != ours_id:
                if not data.get("ours_changed_during_run"):
                    print("bench: WARNING: the ours binary changed during "
                          "the run (rebuilt); noted in the results")
                data["ours_changed_during_run"] = True
            for k, v in settings[mode].items():
                setattr(args, k, v)
            args.blocktime = not (impl == "stock" and args.stock_no_blocktime)
            args.globals = getattr(args, f"{impl}_globals")
            for attempt in range(1 + args.stolen_retries):
                waited, pct = wait_for_quiet_host(args.max_stolen,
                                                  args.quiet_wait)
                if waited:
                    print(f"bench: waited {waited:.0f} s for the host's "
                          f"hypervisor to take at most {args.max_stolen}% "
                          f"of its CPU (the last {pct}%)", flush=True)
                res = run_one(args, workdir, binary)
                res["waited_for_quiet_host_s"] = waited
                verdict = demo_verdict = classify(res)
                if "error" in res or not res["ok"]:
                    bad += 1
                    kept = os.path.join(outdir, f"failed-{i}" + (
                        f"-{attempt + 1}" if attempt else ""))
                    os.rename(workdir, kept)
                    demo_verdict = f"{verdict} (logs: {kept})"
                stolen = (res.get("host_stolen_pct") or {}).get("postcopy")
                again = False
                if verdict is None:
                    verdict = demo_verdict = stolen_verdict(res,
                                                            args.max_stolen)
                    again = (verdict is not None and
                             attempt < args.stolen_retries)
                lat = res.get("latency_postcopy", {})
                print(f"[{i}/{len(plan)}] {names[impl]:8} {mode:16} rep "
                      f"{rep + 1}: "
                      + (f"postcopy {res['postcopy_s']} s, total "
                         f"{res['total_time_ms']} ms, blocktime "
                         f"{res['blocktime_ms']} ms, requested "
                         f"{res['pages_requested']}, fault mean "
                         f"{fault_mean_us(res)} us, worst access "
                         f"{lat.get('worst_us')} us, over 1 ms "
                         f"{lat.get('over_1ms')}, host CPU stolen "
                         f"{stolen}%" if "error" not in res else "")
                      + f" -> {demo_verdict or 'counted'}"
                      + ("; not counted, run again" if again else ""),
                      flush=True)
                data["runs"].append({"rep": rep, "mode": mode,
                                     "impl": impl, "binary": binary,
                                     "counted": verdict is None,
                                     "verdict": verdict or "counted",
                                     "result": res})
                if not again:
                    break
    except KeyboardInterrupt:
        print("\nbench: interrupted; QEMU stopped, nothing summarized "
              f"({len(data['runs'])} runs done, not written)")
        shutil.rmtree(outdir, ignore_errors=True)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    data["machine"]["loadavg_end"] = os.getloadavg()[1]
    data["machine"]["place_cost_us_end"] = place_cost(outdir)
    data["summary"] = summarize(data["runs"], args.modes)
    print_table(data["summary"], names)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    plot_run(data, outdir)
    print(f"\nbench: {outdir}/results.json, {outdir}/{PNG}")
    if args.update_docs:
        write_docs(data, outdir, args.docs_name)
        print(f"bench: docs/{args.docs_name}.md, its picture and "
              f"docs/{args.docs_name}.json rewritten")
    empty = [m for m, cell in data["summary"].items()
             for impl in IMPLS if not cell["total_time_ms"]["n_" + impl]]
    if empty:
        print(f"bench: no counted run in {', '.join(sorted(set(empty)))}")
    if bad:
        print(f"bench: {bad} run(s) failed or saw corruption (above)")
    return 1 if bad or empty else 0


if __name__ == "__main__":
    sys.exit(main())
