#!/usr/bin/env python3
"""Run QEMU's migration-test case by case, in three pairings.

Each case runs in its own process, by its exact path, so one abort does not
hide the cases after it.  The pairings are

  ours-ours    source and destination both built from the series
  stock-ours   Debian's stock QEMU 7.2 migrating to ours
  ours-stock   ours migrating to stock

ours-ours runs every case; the two interop pairings run the cases matched
by INTEROP_CASES.  Two files beside this script steer the run:

  known-failures  cases that cannot pass yet, with the issue that will fix
                  them.  They run and are reported; a pass is an error, so
                  the list only shrinks.
  env-skips       cases not run because this host cannot run them, each
                  with the condition that detects the host and the reason.

After migration-test, the project's own tests listed in own-tests run,
one command each (exit 0 passes, 77 skips with the last line printed as
the reason).

The last line is "N passed, N failed, N skipped"; the exit status is
non-zero on any unexpected result.
"""

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
import hostkind  # noqa: E402
PAIRINGS = ("ours-ours", "stock-ours", "ours-stock")
ARROW = {"ours-ours": "ours->ours", "stock-ours": "stock->ours",
         "ours-stock": "ours->stock"}

# Cases run in the interop pairings, as globs over the path below the arch.
INTEROP_CASES = (
    "/migration/postcopy/*",
    "/migration/precopy/unix/plain",
    "/migration/precopy/unix/xbzrle",
    "/migration/precopy/tcp/plain",
    "/migration/precopy/tcp/tls/psk/match",
    "/migration/multifd/tcp/plain/none",
)


# Conditions an env-skips entry may name, each a test of the host's kind
# (scripts/hostkind.py), which detects and never assumes.
CONDITIONS = {
    "always": lambda host: True,
    "kvm_pvm": lambda host: host.kind == "pvm",
    "no_kvm": lambda host: host.kind == "none",
    "hw_kvm": lambda host: host.kind == "kvm",
}


def source_cases(tree):
    """Every case path migration-test's source can register, on any host.

    The binary lists only what this host offers (dirty_ring needs a KVM
    dirty ring), so names in env-skips and known-failures are checked
    against the source instead: a misspelt name is caught everywhere.
    """
    path = os.path.join(tree, "tests", "qtest", "migration-test.c")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return set(re.findall(r'qtest_add_(?:data_)?func\s*\(\s*"([^"]+)"',
                          text))


def read_table(path, ncols):
    """Rows of whitespace-separated fields; the last takes the rest."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(None, ncols - 1)
            if len(fields) != ncols:
                raise SystemExit(f"{path}:{lineno}: expected {ncols} fields")
            rows.append((lineno, fields))
    return rows


def matches(pattern, pairing):
    return pattern == "*" or pairing in pattern.split(",")


def list_cases(test, ours):
    env = dict(os.environ, QTEST_QEMU_BINARY=ours)
    out = subprocess.run([test, "-l"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [line.strip() for line in out.splitlines()
            if line.startswith("/")]


def started_binaries(output):
    """Map 'source'/'target' to the binary libqtest says it started."""
    seen = {}
    for m in re.finditer(r"# starting QEMU: exec (\S+) .*?-name (\w+)",
                         output):
        seen.setdefault(m.group(2), m.group(1))
    return seen


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_case(args, case, pairing, tmpdir, logdir):
    src = args.stock if pairing.startswith("stock") else args.ours
    dst = args.stock if pairing.endswith("stock") else args.ours
    env = dict(os.environ, QTEST_QEMU_BINARY=args.ours,
               QTEST_QEMU_BINARY_SRC=src, QTEST_QEMU_BINARY_DST=dst,
               TMPDIR=tmpdir)
    start = time.monotonic()
    proc = subprocess.Popen([args.test, "-p", case], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        output, _ = proc.communicate()
        timed_out = True
    # QEMUs left behind by an aborted case die with their process group.
    kill_group(proc)
    elapsed = time.monotonic() - start

    log = os.path.join(logdir, pairing, case.strip("/").replace("/", "_"))
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log + ".log", "w", encoding="utf-8") as f:
        f.write(output)

    oks = re.findall(r"^ok \d+ (\S+)(.*)$", output, re.M)
    skip = [extra for name, extra in oks if name == case and "# SKIP" in extra]
    if timed_out:
        return "fail", f"timed out after {args.timeout}s", elapsed, log
    if proc.returncode != 0 or not oks:
        tail = [ln for ln in output.splitlines() if ln.strip()][-3:]
        return "fail", " | ".join(tail)[:300], elapsed, log
    if skip:
        return "skip", skip[0].split("# SKIP", 1)[1].strip(), elapsed, log
    if [name for name, _ in oks] != [case]:
        return "fail", f"ran {[n for n, _ in oks]}, not only {case}", \
            elapsed, log
    seen = started_binaries(output)
    want = {"source": src, "target": dst}
    for role, binary in seen.items():
        if role in want and binary != want[role]:
            return "fail", f"{role} ran {binary}, expected {want[role]}", \
                elapsed, log
    return "pass", "", elapsed, log


def run_own_tests(args, tmpdir):
    """The project's own tests: (name, status, reason, seconds) each."""
    out = []
    env = dict(os.environ, OURS=args.ours, STOCK=args.stock, OBJ=args.obj,
               TREE=args.tree, TOP=os.path.dirname(HERE), TMPDIR=tmpdir)
    for _, (name, command) in read_table(args.own_tests, 2):
        if args.only and args.only not in name:
            continue
        start = time.monotonic()
        proc = subprocess.Popen(["bash", "-c", command], env=env,
                                cwd=os.path.dirname(HERE),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=args.own_timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc)
            output, _ = proc.communicate()
            rc = None
        kill_group(proc)
        secs = time.monotonic() - start
        log = os.path.join(args.logdir, "own", name + ".log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w", encoding="utf-8") as f:
            f.write(output)
        lines = [ln for ln in output.splitlines() if ln.strip()]
        if rc == 0:
            status, why = "pass", ""
        elif rc == 77:
            status, why = "skip", lines[-1] if lines else "no reason given"
        elif rc is None:
            status, why = "fail", f"timed out after {args.own_timeout}s"
        else:
            # A test's own verdict says more than the QEMU log it dumps
            verdict = [ln for ln in lines if ln.startswith("FAIL")]
            status, why = "fail", " | ".join(verdict[:1] or lines[-3:])[:300]
        out.append((name, status, why, secs, log))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--stock", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--test", required=True, help="migration-test binary")
    ap.add_argument("--pairings", default=",".join(PAIRINGS))
    ap.add_argument("--only", default="",
                    help="run only cases whose path contains this")
    ap.add_argument("--timeout", type=int, default=240,
                    help="seconds a case may take")
    ap.add_argument("--logdir", required=True)
    ap.add_argument("--known-failures",
                    default=os.path.join(HERE, "known-failures"))
    ap.add_argument("--env-skips", default=os.path.join(HERE, "env-skips"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--own-tests", default=os.path.join(HERE, "own-tests"))
    ap.add_argument("--own-timeout", type=int, default=900)
    ap.add_argument("--obj", required=True, help="QEMU build directory")
    ap.add_argument("--tree", required=True, help="QEMU source tree")
    args = ap.parse_args()

    for b in (args.ours, args.stock, args.test):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"not executable: {b}")
    pairings = [p for p in args.pairings.split(",") if p]
    for p in pairings:
        if p not in PAIRINGS:
            raise SystemExit(f"unknown pairing {p}; have {PAIRINGS}")

    host = hostkind.detect()
    print(host.line(), flush=True)
    known = read_table(args.known_failures, 3)    # pairings case issue
    skips = read_table(args.env_skips, 4)         # pairings case cond reason
    cases = list_cases(args.test, args.ours)
    if not cases:
        raise SystemExit("migration-test listed no cases")
    arch = cases[0].split("/")[1]
    can_register = {f"/{arch}{c}" for c in source_cases(args.tree)}
    for path, rows in ((args.known_failures, known), (args.env_skips, skips)):
        for lineno, fields in rows:
            if fields[1] not in can_register:
                raise SystemExit(f"{path}:{lineno}: migration-test has no "
                                 f"case {fields[1]}")
    for lineno, fields in skips:
        if fields[2] not in CONDITIONS:
            raise SystemExit(f"{args.env_skips}:{lineno}: unknown condition "
                             f"{fields[2]!r}; have {sorted(CONDITIONS)}")
    skips = [(n, f) for n, f in skips if CONDITIONS[f[2]](host)]
    for lineno, fields in known:
        if fields[1] not in cases:
            print(f"note: known failure {fields[1]} "
                  f"({args.known_failures}:{lineno}) is not registered on "
                  f"this host, so it does not run here", flush=True)

    started = time.monotonic()
    shutil.rmtree(args.logdir, ignore_errors=True)
    os.makedirs(args.logdir)
    tmpdir = tempfile.mkdtemp(prefix="qemu-postcopy-test-")
    results = []
    counts = {"pass": 0, "fail": 0, "skip": 0, "xfail": 0}
    try:
        for pairing in pairings:
            print(f"--- pairing {ARROW[pairing]}", flush=True)
            for case in cases:
                if args.only and args.only not in case:
                    continue
                rel = case[len(arch) + 1:]
                if pairing != "ours-ours" and not any(
                        fnmatch.fnmatchcase(rel, g) for g in INTEROP_CASES):
                    continue
                skip = [f for _, f in skips if matches(f[0], pairing)
                        and f[1] == case]
                xfail = [f[2] for _, f in known
                         if matches(f[0], pairing) and f[1] == case]
                if skip:
                    status, why, secs, log = "skip", skip[0][3], 0.0, None
                else:
                    status, why, secs, log = run_case(args, case, pairing,
                                                      tmpdir, args.logdir)
                if xfail and status == "fail":
                    status, why = "xfail", f"known failure, {xfail[0]}: {why}"
                elif xfail and status == "pass":
                    status, why = "fail", (f"unexpected pass: remove it from "
                                           f"known-failures ({xfail[0]})")
                counts["xfail" if status == "xfail" else status] += 1
                label = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP",
                         "xfail": "XFAIL"}[status]
                line = f"{label:5} {ARROW[pairing]:11} {case} ({secs:.1f}s)"
                if why:
                    line += f"  {why}"
                if status == "fail" and log:
                    line += f"\n      log: {log}.log"
                print(line, flush=True)
                results.append({"pairing": pairing, "case": case,
                                "status": status, "reason": why,
                                "seconds": round(secs, 1)})
        print("--- the project's own tests", flush=True)
        for name, status, why, secs, log in run_own_tests(args, tmpdir):
            counts[status] += 1
            line = f"{status.upper():5} {'own':11} {name} ({secs:.1f}s)"
            if why:
                line += f"  {why}"
            if status == "fail":
                line += f"\n      log: {log}"
            print(line, flush=True)
            results.append({"pairing": "own", "case": name,
                            "status": status, "reason": why,
                            "seconds": round(secs, 1)})
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print()
    print("pairing      pass  fail  skip  known-failures")
    for pairing in pairings + ["own"]:
        mine = [r for r in results if r["pairing"] == pairing]
        c = {s: sum(r["status"] == s for r in mine)
             for s in ("pass", "fail", "skip", "xfail")}
        print(f"{ARROW.get(pairing, pairing):11} {c['pass']:5} {c['fail']:5} "
              f"{c['skip']:5} {c['xfail']:5}")
    for r in results:
        if r["status"] == "skip":
            print(f"skipped: {r['pairing']} {r['case']}: {r['reason']}")
    took = time.monotonic() - started
    line = f"==> tests took {took:.0f}s"
    if os.environ.get("CHECK_START", "").isdigit():
        total = time.time() - int(os.environ["CHECK_START"])
        line += f"; make check so far {total:.0f}s"
    print(line)
    print(f"known failures (counted apart): {counts['xfail']}")
    print(f"{counts['pass']} passed, {counts['fail']} failed, "
          f"{counts['skip']} skipped")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
