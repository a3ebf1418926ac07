#!/usr/bin/env python3
"""Postcopy over TLS 1.3 while the sessions rekey, again and again.

With TLS and a return path, each side reads and writes one GnuTLS
session from two threads (QEMU issue 1937): the source's migration
thread writes while its return path thread reads, the destination's
listen thread reads while its fault thread writes page requests.  A TLS
1.3 key update, which GnuTLS makes by itself after 2^24 records with
AES-GCM (tens of GiB), changes state the other thread is using, and
QEMU crashed.  tests/tools/gnutls-rekey.c, preloaded into both QEMUs,
makes every session rekey every GNUTLS_REKEY_MS milliseconds instead.

A postcopy migration of migration-test's boot sector guest (which
writes all its memory, so it faults all the time) over TLS with PSK
credentials, held to a slow postcopy so that it lasts: it must complete,
both QEMUs alive, with the guest's memory consistent and many rekeys
counted.  The shim is built here with the host's gcc and GnuTLS headers.

  test-tls-rekey.py [--rekey-ms N] [--runs N]
SRC and DST name the binaries ($OURS by default).
"""

import argparse
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
_spec = importlib.util.spec_from_file_location(
    "relaytest", os.path.join(HERE, "test-postcopy-relay.py"))
relaytest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relaytest)
from qmplib import Qmp, QmpError  # noqa: E402

SRC, DST = relaytest.SRC, relaytest.DST


def build_shim(tmp):
    so = os.path.join(tmp, "gnutls-rekey.so")
    r = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so,
                        os.path.join(HERE, "gnutls-rekey.c"), "-ldl"],
                       capture_output=True, text=True)
    if r.returncode:
        print("environment: cannot build the GnuTLS shim: " + r.stderr)
        sys.exit(77)
    return so


def run_once(tmp, shim, rekey_ms, precopy):
    disk = os.path.join(tmp, "bootsect")
    relaytest.bootsect(disk)
    psk = os.path.join(tmp, "psk")
    os.makedirs(psk, exist_ok=True)
    with open(os.path.join(psk, "keys.psk"), "w") as f:
        f.write("qemu:" + secrets.token_hex(32) + "\n")
    counter = os.path.join(tmp, "rekeys")
    if os.path.exists(counter):
        os.unlink(counter)
    env = dict(os.environ, LD_PRELOAD=shim, GNUTLS_REKEY_MS=str(rekey_ms),
               GNUTLS_REKEY_COUNT=counter)
    procs = {}

    def start(binary, name, endpoint, extra):
        qmp_path = os.path.join(tmp, f"{name}.qmp")
        if os.path.exists(qmp_path):
            os.unlink(qmp_path)
        cmd = [binary, "-accel", "kvm", "-accel", "tcg", "-m", "150M",
               "-name", name, "-display", "none", "-nodefaults",
               "-serial", "file:" + os.path.join(tmp, f"{name}.serial"),
               "-drive", f"file={disk},format=raw",
               "-object", f"tls-creds-psk,id=tls0,endpoint={endpoint},"
               f"dir={psk}" + (",username=qemu" if endpoint == "client"
                               else ""),
               "-qmp", f"unix:{qmp_path},server=on,wait=off"] + extra
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        procs[name] = subprocess.Popen(cmd, stdout=log,
                                       stderr=subprocess.STDOUT, env=env)
        return Qmp(qmp_path)

    try:
        src = start(SRC, "source", "client", [])
        dst = start(DST, "target", "server", ["-incoming", "defer"])
        for q in (src, dst):
            q.execute("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": not precopy}])
            q.execute("migrate-set-parameters", **{"tls-creds": "tls0"})
        src.execute("migrate-set-parameters", **{
            "max-bandwidth": 64 << 20, "max-postcopy-bandwidth": 16 << 20})
        relaytest.wait_serial(os.path.join(tmp, "source.serial"))
        port = relaytest.socket.socket()
        port.bind(("127.0.0.1", 0))
        uri = f"tcp:127.0.0.1:{port.getsockname()[1]}"
        port.close()
        dst.execute("migrate-incoming", uri=uri)
        src.execute("migrate", uri=uri)
        if precopy:
            # The control: one thread a session, no return path
            time.sleep(3.0)
            src.execute("migrate-set-parameters", **{"downtime-limit": 60000})
        else:
            time.sleep(1.0)
            src.execute("migrate-start-postcopy")
            relaytest.wait_status(src, "source", ("postcopy-active",), 30)
        relaytest.wait_status(src, "source", ("completed",), 120)
        relaytest.wait_status(dst, "target", ("completed",), 30)
        serial = os.path.join(tmp, "target.serial")
        passes = open(serial, "rb").read().count(b"B")
        deadline = time.monotonic() + 10
        while open(serial, "rb").read().count(b"B") < passes + 2:
            if time.monotonic() > deadline:
                raise AssertionError("the guest makes no progress on the "
                                     "destination")
            time.sleep(0.1)
        dst.execute("stop")
        dump = os.path.join(tmp, "target.mem")
        dst.execute("pmemsave", val=relaytest.MEM_START,
                    size=relaytest.MEM_END - relaytest.MEM_START,
                    filename=dump)
        relaytest.check_guest_ram(dump)
        for name, p in procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} QEMU exited ({p.returncode})")
        with open(counter) as f:
            rekeys = len(f.readlines())
        if rekeys < 10:
            raise AssertionError(f"only {rekeys} rekeys: the test did not "
                                 "exercise them")
        return f"completed, guest memory consistent, {rekeys} rekeys"
    except (AssertionError, QmpError, OSError) as e:
        died = {n: p.poll() for n, p in procs.items() if p.poll() is not None}
        msg = str(e) + (f"; exited: {died}" if died else "")
        for name in procs:
            log = os.path.join(tmp, f"{name}.log")
            if os.path.exists(log):
                tail = open(log, errors="replace").read().strip()
                msg += f"\n--- {name} log: " + tail[-600:]
        raise AssertionError(msg)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rekey-ms", type=int, default=150)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--precopy", action="store_true",
                    help="the control: precopy without a return path, one "
                    "thread a session, rekeying as often")
    a = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="tls-rekey-") as tmp:
        shim = build_shim(tmp)
        for i in range(a.runs):
            try:
                result = run_once(tmp, shim, a.rekey_ms, a.precopy)
                print(f"ok   run {i + 1}: {result}", flush=True)
            except AssertionError as e:
                print(f"FAIL run {i + 1}: {e}", flush=True)
                failures += 1
    print(f"{failures} of {a.runs} run(s) failed ({SRC} -> {DST})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
