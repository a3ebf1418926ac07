"""Migration-test's boot sector guest under QEMU, for the project's tests.

The guest (taken from the tree's migration-test) increments the first
byte of every 4 KiB page between 1 and 100 MiB, in order, over and over,
and prints B on its serial port after each pass.  With it stopped, every
page holds the same value as the page before it, but for one step down
(mod 256) where the incrementer stood.

Guests starts such QEMUs for a test and checks a guest runs on with its
memory intact; Relay carries a migration between two of them and can cut
it; status() and wait_status() read query-migrate.  SRC and DST name the
two sides' binaries ($OURS unless they say otherwise).
"""

import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

from qmplib import Qmp, QmpError

OURS = os.environ.get("OURS") or sys.exit("OURS is not set")
TREE = os.environ.get("TREE") or sys.exit("TREE is not set")
SRC = os.environ.get("SRC", OURS)
DST = os.environ.get("DST", OURS)

MEM_START = 1 << 20
MEM_END = 100 << 20
PAGE = 4096


def bootsect(path):
    """Write migration-test's x86 boot sector, from its C header, to @path."""
    header = os.path.join(TREE, "tests/migration/i386/a-b-bootblock.h")
    with open(header) as f:
        body = f.read().split("{", 1)[1].split("}", 1)[0]
    data = bytes(int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]{2}", body))
    if len(data) != 512:
        sys.exit(f"{header}: expected a 512-byte boot sector, got {len(data)}")
    with open(path, "wb") as f:
        f.write(data)


class Relay:
    """Forward one connection from a unix socket to another, until cut."""

    def __init__(self, listen_path, target_path, hold_back=False,
                 rate=None, refuse_second=False):
        self.target_path = target_path
        self.listen_path = listen_path
        # Let the first connection through, make the next one fail
        self.refuse_second = refuse_second
        # Bytes a second towards the destination, all channels together
        self.rate = rate
        self.start = time.monotonic()
        # Forward nothing from the destination to the source
        self.hold_back = hold_back
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(listen_path)
        # With no backlog a second connect() waits until the first is
        # accepted, then looks the path up again (see _refuse_second)
        self.listener.listen(0 if refuse_second else 1)
        self.socks = []
        self.lock = threading.Lock()
        self.cut_done = False
        # Set by stall(): forward nothing more, read nothing more
        self.stalled = threading.Event()
        self.bytes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _refuse_second(self):
        """Once the first connection is queued (the listener polls
        readable), take the path away: a second connect() made later
        finds no socket there, and one already waiting for room looks
        the path up again when the first is accepted (ENOENT either way).
        Returns False if the relay was cut first."""
        try:
            select.select([self.listener], [], [])
        except (OSError, ValueError):
            return False
        os.unlink(self.listen_path)
        return True

    def _serve(self):
        # One connection, or two with postcopy-preempt
        if self.refuse_second and not self._refuse_second():
            return
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.socket(socket.AF_UNIX)
            b.connect(self.target_path)
            with self.lock:
                self.socks += [a, b]
                if self.cut_done:
                    self._shut()
                    return
            threading.Thread(target=self._pipe, args=(a, b, self.rate, True),
                             daemon=True).start()
            threading.Thread(target=self._backward, args=(b, a),
                             daemon=True).start()
            if self.refuse_second:
                self.listener.close()
                return

    def _pipe(self, src, dst, rate=None, forward=False):
        try:
            while True:
                while forward and self.stalled.is_set() and not self.cut_done:
                    time.sleep(0.05)
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    self.bytes += len(data)
                    ahead = self.bytes / rate - (time.monotonic() -
                                                 self.start) if rate else 0
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        self._pass_end(dst)

    def _backward(self, src, dst):
        """From the destination to the source (the return path)."""
        if self.hold_back:
            self._hold(src, dst)
        else:
            self._pipe(src, dst)

    def _hold(self, src, dst):
        """Swallow what @src sends; pass on only its end."""
        try:
            while src.recv(1 << 16):
                pass
        except OSError:
            pass
        self._pass_end(dst)

    @staticmethod
    def _pass_end(dst):
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _shut(self):
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stall(self):
        """Stop forwarding towards the destination (and reading what the
        source sends), as a congested link does: the source's writes fill
        its socket and then block.  The return path still flows."""
        self.stalled.set()

    def cut(self):
        """Drop both directions at once, as a failed link would."""
        with self.lock:
            self.cut_done = True
            self._shut()
        self.listener.close()


def status(qmp):
    return qmp.execute("query-migrate").get("status")


def wait_status(qmp, name, wanted, timeout, fail=("failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.execute("query-migrate")
        st = info.get("status")
        if st in wanted:
            return info
        if st in fail:
            raise AssertionError(f"{name}: migration {st}: "
                                 f"{info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: still {st} after {timeout}s, "
                                 f"waiting for {'/'.join(wanted)}")
        time.sleep(0.05)


def check_guest_ram(path):
    """Migration-test's check: one step down at most, where it stood."""
    with open(path, "rb") as f:
        mem = f.read()
    firsts = mem[::PAGE]
    last = firsts[0]
    edge = False
    bad = []
    for i, b in enumerate(firsts[1:], 1):
        if b == last:
            continue
        if (b + 1) % 256 == last and not edge:
            edge = True
            last = b
            continue
        bad.append(MEM_START + i * PAGE)
    if bad:
        raise AssertionError(
            f"guest memory inconsistent in {len(bad)} pages, first at "
            + ", ".join(hex(a) for a in bad[:5]))
    return firsts[0]


def wait_serial(path, timeout=20):
    """The guest prints B after each pass over its memory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and b"B" in open(path, "rb").read():
            return
        time.sleep(0.05)
    raise AssertionError("the guest did not start on the source")


def serial_passes(path):
    """The passes the guest has made over its memory, as its serial says."""
    return open(path, "rb").read().count(b"B") if os.path.exists(path) else 0


class Guests:
    """The QEMUs of one test, each running the boot sector, files in @tmp.
    @env: their environment (the test's own by default)."""

    def __init__(self, tmp, env=None):
        self.tmp = tmp
        self.env = env
        self.procs = {}
        self.disk = os.path.join(tmp, "bootsect")
        bootsect(self.disk)

    def start(self, binary, name, extra=()):
        """Start @binary as @name with @extra options; its QMP."""
        qmp_path = os.path.join(self.tmp, f"{name}.qmp")
        if os.path.exists(qmp_path):
            os.unlink(qmp_path)
        cmd = [binary, "-accel", "kvm", "-accel", "tcg", "-m", "150M",
               "-name", name, "-display", "none", "-nodefaults",
               "-serial", "file:" + self.serial(name),
               "-drive", f"file={self.disk},format=raw",
               "-qmp", f"unix:{qmp_path},server=on,wait=off"] + list(extra)
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            env=self.env)
        return Qmp(qmp_path)

    def serial(self, name):
        return os.path.join(self.tmp, f"{name}.serial")

    def check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} QEMU exited ({p.returncode})")

    def logs(self, tail=2000):
        """The ends of the QEMUs' logs, for a failure's report."""
        out = ""
        for name in self.procs:
            log = os.path.join(self.tmp, f"{name}.log")
            if os.path.exists(log):
                text = open(log, errors="replace").read()
                out += f"--- {name} log:\n{text[-tail:]}\n"
        return out

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = {}

    def check_runs_intact(self, qmp, name, timeout=10):
        """@name's guest must get on with its passes (two more within
        @timeout seconds); then, stopped, its memory must be consistent.
        Returns what the first page holds."""
        serial = self.serial(name)
        passes = serial_passes(serial)
        deadline = time.monotonic() + timeout
        while serial_passes(serial) < passes + 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"the guest makes no progress on the "
                                     f"{name}")
            time.sleep(0.1)
        qmp.execute("stop")
        dump = os.path.join(self.tmp, f"{name}.mem")
        qmp.execute("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                    filename=dump)
        return check_guest_ram(dump)


def socket_fds(pid):
    """How many sockets process @pid has open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass    # closed meanwhile
    return n


def free_port():
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tcp_postcopy(guests, caps, params, dst_caps=(), delay=0.3):
    """Start a source and a destination QEMU, migrate over TCP on loopback
    with @caps on both sides (and @dst_caps on the destination) and
    @params on the source, and switch to postcopy after @delay seconds.
    Unless @params say otherwise, the downtime limit is 1 ms, so that
    precopy cannot complete before the switch on a slow host.  Returns
    (source, destination, port) with the source in postcopy-active."""
    src = guests.start(SRC, "source")
    dst = guests.start(DST, "target", ["-incoming", "defer"])
    src.execute("migrate-set-capabilities", capabilities=list(caps))
    dst.execute("migrate-set-capabilities",
                capabilities=list(caps) + list(dst_caps))
    src.execute("migrate-set-parameters",
                **dict({"downtime-limit": 1}, **params))
    wait_serial(guests.serial("source"))
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    dst.execute("migrate-incoming", uri=uri)
    src.execute("migrate", uri=uri)
    time.sleep(delay)
    src.execute("migrate-start-postcopy")
    wait_status(src, "source", ("postcopy-active",), 30)
    return src, dst, port


def run_guests_test(prefix, body, passthrough=()):
    """Run body(guests) with a Guests of its own in a fresh directory.
    An AssertionError, QmpError or OSError fails the test with both
    QEMUs' logs, but for those in @passthrough, which the caller gets;
    the QEMUs are stopped and the directory removed in any case.  Returns
    the test's exit status."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    guests = None
    try:
        guests = Guests(tmp)
        body(guests)
    except passthrough:
        raise
    except (AssertionError, QmpError, OSError) as e:
        print(f"FAIL: {e}")
        if guests:
            print(guests.logs())
        return 1
    finally:
        if guests:
            guests.stop_all()
        subprocess.run(["rm", "-rf", tmp])
    return 0
