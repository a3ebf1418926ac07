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
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

from bootguest import DST, SRC, Guests, wait_serial, wait_status
from qmplib import QmpError

HERE = os.path.dirname(os.path.abspath(__file__))


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
    psk = os.path.join(tmp, "psk")
    os.makedirs(psk, exist_ok=True)
    with open(os.path.join(psk, "keys.psk"), "w") as f:
        f.write("qemu:" + secrets.token_hex(32) + "\n")
    counter = os.path.join(tmp, "rekeys")
    if os.path.exists(counter):
        os.unlink(counter)
    guests = Guests(tmp, env=dict(os.environ, LD_PRELOAD=shim,
                                  GNUTLS_REKEY_MS=str(rekey_ms),
                                  GNUTLS_REKEY_COUNT=counter))

    def start(binary, name, endpoint, extra):
        creds = f"tls-creds-psk,id=tls0,endpoint={endpoint},dir={psk}"
        if endpoint == "client":
            creds += ",username=qemu"
        return guests.start(binary, name, ["-object", creds] + extra)

    try:
        src = start(SRC, "source", "client", [])
        dst = start(DST, "target", "server", ["-incoming", "defer"])
        for q in (src, dst):
            q.execute("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": not precopy}])
            q.execute("migrate-set-parameters", **{"tls-creds": "tls0"})
        # Postcopy's runs must switch: a 1 ms downtime limit keeps precopy
        # from completing first (it did once in CI, 1 s in at 64 MiB/s)
        src.execute("migrate-set-parameters", **{
            "max-bandwidth": 64 << 20, "max-postcopy-bandwidth": 16 << 20,
            "downtime-limit": 1})
        wait_serial(guests.serial("source"))
        port = socket.socket()
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
            wait_status(src, "source", ("postcopy-active",), 30)
        wait_status(src, "source", ("completed",), 120)
        wait_status(dst, "target", ("completed",), 30)
        guests.check_runs_intact(dst, "target")
        guests.check_alive()
        with open(counter) as f:
            rekeys = len(f.readlines())
        if rekeys < 10:
            raise AssertionError(f"only {rekeys} rekeys: the test did not "
                                 "exercise them")
        return f"completed, guest memory consistent, {rekeys} rekeys"
    except (AssertionError, QmpError, OSError) as e:
        died = {n: p.poll() for n, p in guests.procs.items()
                if p.poll() is not None}
        msg = str(e) + (f"; exited: {died}" if died else "")
        raise AssertionError(msg + "\n" + guests.logs(600))
    finally:
        guests.stop_all()


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
