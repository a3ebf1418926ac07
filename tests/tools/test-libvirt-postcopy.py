#!/usr/bin/env python3
"""virsh migrate --postcopy between two libvirt hosts on this machine.

Two libvirtd daemons (Debian 12's libvirt 9.0) run as two hosts: each in
mount and UTS namespaces of its own, with its own hostname, host_uuid and
its own /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt
and /var/cache/libvirt, bind-mounted from build/libvirt/<host>/.  A guest
whose <emulator> is the QEMU under test is started on host A and moved to
host B by virsh, in three ways:

  switch     virsh migrate --live --postcopy, then virsh migrate-postcopy
  after      virsh migrate --live --postcopy --postcopy-after-precopy
  resume     virsh migrate --live --postcopy, virsh migrate-postcopy, the
             migration's TCP connection killed (ss -K) in postcopy-active;
             both sides must report postcopy-paused; then
             virsh migrate --postcopy-resume

The guest is migration-test's boot sector (it increments a byte in every
page from 1 MiB to 100 MiB, forever); a low --bandwidth keeps precopy from
finishing first.  After each migration the source QEMU must have exited,
the domain on A be shut off with reason "migrated" (there `virsh
domjobinfo --completed` is printed: in postcopy only the source gets the
statistics; then the definition is undefined and must be gone), the guest
running on B and making progress there, its memory consistent (the check
of bootguest.py, on a pmemsave dump), and the two libvirtd debug
logs must show the QMP libvirt sent and received: postcopy-ram set on both
sides, migrate-start-postcopy sent to the source, the destination in
postcopy-active before it completed (and, in the resume run, postcopy-paused
on both sides, migrate-recover and migrate with resume).

Configurations, in this order:

  root     QEMU run as root: stock 7.2 ($STOCK) and ours ($OURS), each
           through the three migrations; so a failure with ours is ours.
  unpriv   QEMU run as libvirt-qemu, vm.unprivileged_userfaultfd=0, the
           destination reaching userfaultfd through /dev/userfaultfd
           (granted to libvirt-qemu by an ACL, and listed in qemu.conf's
           cgroup_device_acl so that it is in the private /dev libvirt
           makes for QEMU): stock must fail with "Postcopy is not
           supported" (expected: stock passing fails the test); ours must
           fail so too without the ACL (the control), then pass the three
           migrations with it.

The ACLs (on /dev/userfaultfd, and on /dev/kvm, which Debian's udev would
make root:kvm 0660) and the sysctl are saved before they are changed and
restored at the end, or by the next run if this one was killed.

Every daemon and QEMU the test started is stopped by its PID on every exit
(SIGINT and SIGTERM included); leftovers of an earlier, killed run are
stopped at the start.  Logs stay in build/libvirt/.

Environment: OURS, TREE (the QEMU source tree, for the boot sector),
STOCK (default /usr/bin/qemu-system-x86_64).  Options: --only
root|unpriv, --emulators ours,stock, --scenarios
switch,after,resume,switchfail (switchfail: a destination that cannot load
the devices must leave the domain running on the source; stock 7.2 loses
it, an expected failure),
--accel tcg (the default is KVM when /dev/kvm opens).
Skips (77) when it cannot run here, saying why.
"""

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
BASE = os.path.join(TOP, "build", "libvirt")

OURS = os.environ.get("OURS") or sys.exit("OURS is not set")
TREE = os.environ.get("TREE") or sys.exit("TREE is not set")
STOCK = os.environ.get("STOCK") or "/usr/bin/qemu-system-x86_64"

# The boot sector guest and its memory check
sys.path.insert(0, HERE)
import bootguest  # noqa: E402

DOMAIN = "qpc-guest"
DOMAIN_UUID = "5b1c0d6e-7a3f-4e0b-9c2d-71a1b2c3d4e5"
QEMU_USER = "libvirt-qemu"
# Each host's own copy of libvirt's directories: build/libvirt/<host>/<key>.
LIBVIRT_DIRS = {"/etc/libvirt": "etc", "/run/libvirt": "run",
                "/var/lib/libvirt": "lib", "/var/log/libvirt": "log",
                "/var/cache/libvirt": "cache"}
UFFD_SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"
BANDWIDTH = 25          # MiB/s for precopy: it cannot converge
SLOW_POSTCOPY = 4       # MiB/s for postcopy in the resume run, so it lasts


class Skip(Exception):
    pass


class Failure(Exception):
    pass


class VmLost(Failure):
    """A failed switch left the domain running nowhere."""


T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pdeathsig():
    """libvirtd dies with the test, even if the test is SIGKILLed."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def kill_pid(pid, what, grace=10.0):
    """Stop @pid (TERM, then KILL); say so.  True if it was running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    say(f"  stopped {what} (pid {pid})")
    return True


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def our_qemu_pids():
    """Every QEMU running the test's domain (its UUID is on the line)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and DOMAIN_UUID.encode() in proc_cmdline(int(d)):
            pids.append(int(d))
    return pids


def our_daemon_pids():
    """libvirtd processes started with a configuration of the test's."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cmd = proc_cmdline(int(d))
        if cmd and os.path.basename(cmd[0]) == b"libvirtd" and \
                any(a.startswith(BASE.encode()) for a in cmd):
            pids.append(int(d))
    return pids


class Host:
    """One libvirt host: a libvirtd in mount and UTS namespaces of its own."""

    def __init__(self, name, hostname):
        self.name = name
        self.hostname = hostname
        self.root = os.path.join(BASE, name)
        self.host_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS,
                                        hostname + ".qemu-postcopy"))
        self.proc = None
        self.logfile = None

    def path(self, inside):
        """Where a path inside this host's namespace is, seen from outside."""
        for d in LIBVIRT_DIRS:
            if inside == d or inside.startswith(d + "/"):
                return os.path.join(self.root, LIBVIRT_DIRS[d]) + \
                    inside[len(d):]
        raise ValueError(inside)

    @property
    def uri(self):
        return ("qemu+unix:///system?socket="
                + self.path("/run/libvirt/libvirt-sock"))

    def prepare(self, unpriv):
        # Everything anew but the cache: libvirt's probe of each emulator
        # is kept there, and redone when the binary changes.
        os.makedirs(self.root, exist_ok=True)
        for entry in os.listdir(self.root):
            if entry != LIBVIRT_DIRS["/var/cache/libvirt"]:
                p = os.path.join(self.root, entry)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
        for d in LIBVIRT_DIRS:
            os.makedirs(self.path(d), exist_ok=True)
        os.makedirs(self.path("/etc/libvirt/qemu"))
        os.makedirs(self.path("/var/lib/libvirt/images"))
        os.makedirs(self.path("/var/log/libvirt/qemu"))
        dump = self.path("/var/lib/libvirt/dump")
        os.makedirs(dump)
        os.chmod(dump, 0o1777)        # QEMU writes its pmemsave dump here
        bootguest.bootsect(self.path("/var/lib/libvirt/images/bootsect"))
        with open(self.path("/etc/libvirt/libvirtd.conf"), "w") as f:
            f.write(f'''# written by {os.path.basename(__file__)}
unix_sock_dir = "/run/libvirt"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
host_uuid = "{self.host_uuid}"
log_filters = "1:qemu.qemu_monitor 1:qemu.qemu_migration 3:*"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
''')
        # No systemd and no cgroup delegation here, no virtlogd: QEMU's
        # output goes to a file.  In unpriv mode the private /dev that
        # libvirt builds for QEMU must hold /dev/userfaultfd.
        acl = ['"/dev/null"', '"/dev/full"', '"/dev/zero"', '"/dev/random"',
               '"/dev/urandom"', '"/dev/ptmx"', '"/dev/kvm"']
        if unpriv:
            acl.append('"/dev/userfaultfd"')
            who = f'user = "{QEMU_USER}"\ngroup = "{QEMU_USER}"\n'
        else:
            who = 'user = "root"\ngroup = "root"\n'
        with open(self.path("/etc/libvirt/qemu.conf"), "w") as f:
            f.write(f'''# written by {os.path.basename(__file__)}
{who}security_driver = "none"
cgroup_controllers = [ ]
cgroup_device_acl = [ {", ".join(acl)} ]
stdio_handler = "file"
''')
        os.chmod(self.path("/etc/libvirt/qemu.conf"), 0o600)

    def start(self):
        binds = [f"mkdir -p {d} && mount --bind {shlex.quote(self.path(d))} {d}"
                 for d in LIBVIRT_DIRS]
        script = " && ".join(
            ["mount --make-rprivate /"] + binds +
            [f"hostname {self.hostname}",
             "exec libvirtd -f /etc/libvirt/libvirtd.conf"
             f" -p {shlex.quote(self.path('/run/libvirt/libvirtd.pid'))}"])
        self.logfile = open(os.path.join(self.root, "libvirtd.out"), "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=self.logfile,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=pdeathsig)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"host {self.name}: libvirtd exited "
                              f"({self.proc.returncode}): "
                              + open(self.logfile.name).read()[-1500:])
            r = self.virsh("hostname", check=False, quiet=True)
            if r.returncode == 0:
                if r.stdout.strip() != self.hostname:
                    raise Failure(f"host {self.name} says it is "
                                  f"{r.stdout.strip()}")
                break
            if time.monotonic() > deadline:
                raise Failure(f"host {self.name}: libvirtd does not answer "
                              f"after 60s: {r.stderr.strip()}")
            time.sleep(0.2)
        say(f"  host {self.name}: libvirtd pid {self.proc.pid}, hostname "
            f"{self.hostname}, host_uuid {self.host_uuid}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            kill_pid(self.proc.pid, f"host {self.name} libvirtd")
            self.proc.wait()
        self.proc = None
        if self.logfile:
            self.logfile.close()
            self.logfile = None

    def virsh(self, *args, check=True, quiet=False, timeout=120):
        cmd = ["virsh", "-c", self.uri] + list(args)
        if not quiet:
            say(f"  [{self.name}] virsh {' '.join(args)}")
        r = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise Failure(f"host {self.name}: virsh {' '.join(args)}: "
                          f"{r.stderr.strip()}")
        return r

    def events(self, offset):
        """QEMU's MIGRATION statuses, as this libvirtd logged them."""
        return migration_events(monitor_lines(self.log_since(offset)))

    def domstate(self):
        return self.virsh("domstate", "--reason", DOMAIN,
                          quiet=True).stdout.strip()

    def qemu_pid(self):
        try:
            with open(self.path(f"/run/libvirt/qemu/{DOMAIN}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def log_offset(self):
        try:
            return os.path.getsize(self.path("/var/log/libvirt/libvirtd.log"))
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.path("/var/log/libvirt/libvirtd.log"), "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def serial(self):
        try:
            with open(self.path(f"/var/log/libvirt/qemu/{DOMAIN}.serial"),
                      "rb") as f:
                return f.read()
        except OSError:
            return b""


GRANTED = ("/dev/userfaultfd", "/dev/kvm")
SAVED_ACLS = os.path.join(BASE, "saved-device-acls")


def grant_devices():
    """Let libvirt-qemu open /dev/userfaultfd and /dev/kvm, by ACLs.

    What an administrator does on a host (Debian makes /dev/kvm root:kvm
    0660 and libvirt-qemu is in group kvm; a machine without udev lacks
    that).  The ACLs as they were are saved first, for restore_devices()
    and, should the test be killed, for the next run's cleanup_stale().
    """
    devs = [d for d in GRANTED if os.path.exists(d)]
    saved = subprocess.run(["getfacl", "--absolute-names"] + devs,
                           capture_output=True, text=True, check=True).stdout
    with open(SAVED_ACLS + ".new", "w") as f:
        f.write(saved)
    os.rename(SAVED_ACLS + ".new", SAVED_ACLS)
    for d in devs:
        subprocess.run(["setfacl", "-m", f"u:{QEMU_USER}:rw", d], check=True)
    say(f"  granted {QEMU_USER} rw on {', '.join(devs)} (ACL)")


SAVED_SYSCTL = os.path.join(BASE, "saved-unprivileged-userfaultfd")


def set_sysctl():
    """vm.unprivileged_userfaultfd=0, the old value saved if it differs."""
    with open(UFFD_SYSCTL) as f:
        old = f.read().strip()
    if old == "0":
        return
    with open(SAVED_SYSCTL, "w") as f:
        f.write(old)
    with open(UFFD_SYSCTL, "w") as f:
        f.write("0")
    say(f"  vm.unprivileged_userfaultfd: {old} -> 0 for the run")


def restore_sysctl():
    if not os.path.exists(SAVED_SYSCTL):
        return
    with open(SAVED_SYSCTL) as f:
        old = f.read().strip()
    with open(UFFD_SYSCTL, "w") as f:
        f.write(old)
    os.unlink(SAVED_SYSCTL)
    say(f"  vm.unprivileged_userfaultfd restored to {old}")


def restore_devices():
    if not os.path.exists(SAVED_ACLS):
        return
    devs = [d for d in GRANTED if os.path.exists(d)]
    # setfacl --restore leaves an ACL entry it is not given: drop all first.
    subprocess.run(["setfacl", "-b"] + devs, check=True)
    subprocess.run(["setfacl", f"--restore={SAVED_ACLS}"], check=True)
    os.unlink(SAVED_ACLS)
    say(f"  restored the ACLs of {', '.join(devs)}")


def check_qemu(pid, host, emulator, unpriv):
    """The QEMU of host @host is @emulator, run by the configured user."""
    exe = proc_cmdline(pid)[0].decode()
    if os.path.realpath(exe) != os.path.realpath(emulator):
        raise Failure(f"host {host} runs {exe}, not {emulator}")
    uid = os.stat(f"/proc/{pid}").st_uid
    want = pwd.getpwnam(QEMU_USER).pw_uid if unpriv else 0
    if uid != want:
        raise Failure(f"host {host}'s QEMU runs as uid {uid}, not {want}")


def domain_xml(emulator, kvm):
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{DOMAIN}</name>
  <uuid>{DOMAIN_UUID}</uuid>
  <memory unit='MiB'>150</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/bootsect'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/{DOMAIN}.serial'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_for(what, cond, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Failure(f"{what}: not after {timeout}s")
        time.sleep(step)


class Run:
    """The test's two hosts and the migrations between them."""

    def __init__(self, kvm):
        self.a = Host("a", "qpc-host-a")
        self.b = Host("b", "qpc-host-b")
        self.kvm = kvm
        self.qemu_pids = set()
        self.background = []            # virsh migrate, while it runs

    def start_hosts(self, unpriv):
        for h in (self.a, self.b):
            h.prepare(unpriv)
            h.start()

    def stop_hosts(self):
        for proc in self.background:
            if proc.poll() is None:
                kill_pid(proc.pid, "virsh")
                proc.communicate()
        self.background.clear()
        self.stop_guests()
        for h in (self.a, self.b):
            h.stop()

    def stop_guests(self):
        for h in (self.a, self.b):
            pid = h.qemu_pid()
            if pid:
                self.qemu_pids.add(pid)
        for pid in sorted(self.qemu_pids | set(our_qemu_pids())):
            if DOMAIN_UUID.encode() in proc_cmdline(pid):
                # A destination cut off in postcopy does not exit on TERM.
                kill_pid(pid, "QEMU", grace=3.0)
        self.qemu_pids.clear()

    def start_guest(self, emulator, unpriv, xml_emulator=None):
        xml = os.path.join(self.a.root, f"{DOMAIN}.xml")
        with open(xml, "w") as f:
            f.write(domain_xml(xml_emulator or emulator, self.kvm))
        self.a.virsh("define", xml)
        self.a.virsh("start", DOMAIN)
        pid = wait_for("the source QEMU's pid file", self.a.qemu_pid, 10)
        self.qemu_pids.add(pid)
        check_qemu(pid, "a", emulator, unpriv)
        wait_for("the guest's first pass on host a",
                 lambda: b"B" in self.a.serial(), 20)
        return pid

    def migrate_cmd(self, *extra, port):
        return ["migrate", "--live", "--postcopy", "--persistent",
                "--unsafe", "--bandwidth", str(BANDWIDTH), *extra,
                DOMAIN, self.b.uri, "--migrateuri", f"tcp://127.0.0.1:{port}",
                "--listen-address", "127.0.0.1"]

    def virsh_bg(self, host, args):
        say(f"  [{host.name}] virsh {' '.join(args)} &")
        proc = subprocess.Popen(["virsh", "-c", host.uri] + args,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.background.append(proc)
        return proc

    def wait_virsh(self, proc, timeout):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise Failure(f"virsh migrate still running after {timeout}s")
        return proc.returncode, out, err

    def finish_migrate(self, mig):
        rc, _, err = self.wait_virsh(mig, 120)
        if rc:
            raise Failure(f"virsh migrate failed: {err.strip()}")

    def wait_precopy(self, mig):
        """The source's job is migrating and has sent something."""
        def going():
            if mig.poll() is not None:
                raise Failure(f"virsh migrate ended ({mig.returncode}) "
                              f"before the switch: "
                              f"{mig.communicate()[1].strip()}")
            r = self.a.virsh("domjobinfo", DOMAIN, check=False, quiet=True)
            m = re.search(r"Memory processed:\s+([\d.]+) (\w+)", r.stdout)
            return m and float(m.group(1)) > 0
        wait_for("the migration job on host a", going, 30, step=0.2)

    # --- the three migrations --------------------------------------------

    def switch(self):
        port = free_port()
        mig = self.virsh_bg(self.a, self.migrate_cmd(port=port))
        self.wait_precopy(mig)
        time.sleep(1.0)
        self.a.virsh("migrate-postcopy", DOMAIN)
        self.finish_migrate(mig)

    def after(self):
        port = free_port()
        mig = self.virsh_bg(self.a, self.migrate_cmd(
            "--postcopy-after-precopy", port=port))
        self.finish_migrate(mig)

    def resume(self):
        port = free_port()
        mig = self.virsh_bg(self.a, self.migrate_cmd(
            "--postcopy-bandwidth", str(SLOW_POSTCOPY), port=port))
        self.wait_precopy(mig)
        time.sleep(1.0)
        self.a.virsh("migrate-postcopy", DOMAIN)
        # QEMU's own word (its MIGRATION events, in each libvirtd's log)
        # and libvirt's (the domain state's reason).  qemu-monitor-command
        # cannot ask: it waits for the destination's migration job.
        want = {"a": "paused (post-copy)", "b": "running (post-copy)"}
        for h in (self.a, self.b):
            wait_for(f"postcopy-active on host {h.name}",
                     lambda: "postcopy-active" in h.events(self.offsets[h]),
                     30)
            wait_for(f"domstate {want[h.name]!r} on host {h.name}",
                     lambda: h.domstate() == want[h.name], 10)
        time.sleep(1.0)
        for h in (self.a, self.b):
            ev = h.events(self.offsets[h])
            if ev[-1] != "postcopy-active":
                raise Failure(f"host {h.name} went on to {ev[-1]} before "
                              "the cut; postcopy must last longer")
        cut = subprocess.run(["ss", "-K", "-t", "-n", "state", "established",
                              f"( sport = :{port} or dport = :{port} )"],
                             capture_output=True, text=True)
        killed = [ln for ln in cut.stdout.splitlines()[1:] if ln.strip()]
        say(f"  ss -K: killed {len(killed)} socket(s) of port {port}")
        if cut.returncode or not killed:
            raise Failure(f"ss -K killed nothing: {cut.stderr.strip()}")
        want = {"a": "paused (post-copy failed)",
                "b": "running (post-copy failed)"}
        for h in (self.a, self.b):
            wait_for(f"postcopy-paused on host {h.name}",
                     lambda: h.events(self.offsets[h])[-1]
                     == "postcopy-paused", 30)
            wait_for(f"domstate {want[h.name]!r} on host {h.name}",
                     lambda: h.domstate() == want[h.name], 10)
        say("  both QEMUs report postcopy-paused; domstate: a "
            f"{want['a']!r}, b {want['b']!r}")
        rc, out, err = self.wait_virsh(mig, 60)
        say(f"  the first virsh migrate ended ({rc}): {err.strip()}")
        if rc == 0:
            raise Failure("virsh migrate succeeded across the cut")
        port2 = free_port()
        res = self.virsh_bg(self.a, self.migrate_cmd(
            "--postcopy-resume", "--postcopy-bandwidth", "0", port=port2))
        rc, out, err = self.wait_virsh(res, 120)
        if rc:
            raise Failure(f"virsh migrate --postcopy-resume failed: "
                          f"{err.strip()}")

    def switchfail(self):
        """The destination cannot load the devices (the source's QEMU has
        a virtio-rng-pci the destination's lacks): the switch fails, and
        the domain must run on at the source."""
        port = free_port()
        mig = self.virsh_bg(self.a, self.migrate_cmd(port=port))
        self.wait_precopy(mig)
        time.sleep(1.0)
        self.a.virsh("migrate-postcopy", DOMAIN)
        rc, out, err = self.wait_virsh(mig, 120)
        say(f"  virsh migrate ended ({rc}): {err.strip()}")
        if rc == 0:
            raise Failure("virsh migrate succeeded although the destination "
                          "cannot load the source's devices")

    def host_args_emulator(self, emulator, host, args, name):
        """A wrapper that adds @args to the guest's QEMU on @host only:
        libvirt hands the destination the same XML, emulator included."""
        path = os.path.join(BASE, f"emulator-{name}.sh")
        with open(path, "w") as f:
            f.write(f"""#!/bin/sh
case "$(hostname) $*" in
"qpc-host-{host} "*"-name guest={DOMAIN}"*)
    exec {shlex.quote(emulator)} "$@" {args} ;;
esac
exec {shlex.quote(emulator)} "$@"
""")
        os.chmod(path, 0o755)
        return path

    def extra_device_emulator(self, emulator):
        """The guest gets a virtio-rng-pci on host a only."""
        return self.host_args_emulator(emulator, "a", "-device virtio-rng-pci",
                                       "extra-device")

    def one_page_faults_emulator(self, emulator):
        """Our destination asks for one page a fault.  The guest writes its
        pages in order, and with fault-around it gets runs of them, past
        --postcopy-bandwidth as requests go: postcopy would end before the
        resume scenario's cut.  (Stock 7.2 asks for one page a fault.)"""
        if emulator != OURS:
            return None
        return self.host_args_emulator(
            emulator, "b", "-global migration.x-postcopy-fault-around=0",
            "one-page-faults")

    def verify_on_source(self, src_pid, a_off, b_off):
        """After a failed switch: running on a, nowhere on b."""
        state = self.a.virsh("domstate", "--reason", DOMAIN,
                             quiet=True).stdout.strip()
        if not state.startswith("running"):
            raise VmLost(f"{DOMAIN} is {state!r} on host a after the "
                         "failed switch: the VM is lost")
        if not os.path.exists(f"/proc/{src_pid}") or _zombie(src_pid):
            raise Failure("the source QEMU is gone")
        passes = self.a.serial().count(b"B")
        wait_for("guest progress on host a",
                 lambda: self.a.serial().count(b"B") > passes + 1, 20)
        names = self.b.virsh("list", "--name", quiet=True).stdout
        if DOMAIN in names.split():
            raise Failure(f"{DOMAIN} runs on host b too")
        self.a.virsh("suspend", DOMAIN, quiet=True)
        dump_in = "/var/lib/libvirt/dump/guest.mem"
        dump = self.a.path(dump_in)
        os.makedirs(os.path.dirname(dump), exist_ok=True)
        if os.path.exists(dump):
            os.unlink(dump)
        args = {"val": bootguest.MEM_START,
                "size": bootguest.MEM_END - bootguest.MEM_START,
                "filename": dump_in}
        self.a.virsh("qemu-monitor-command", DOMAIN, json.dumps(
            {"execute": "pmemsave", "arguments": args}), quiet=True)
        try:
            value = bootguest.check_guest_ram(dump)
        except AssertionError as e:
            raise Failure(str(e))
        os.unlink(dump)
        say(f"  domain {state!r} on a, progressing, memory consistent "
            f"(first page holds {value}); not on b")
        self.a.virsh("destroy", DOMAIN, quiet=True)
        self.a.virsh("undefine", DOMAIN, quiet=True)
        self.qemu_pids.discard(src_pid)

    # --- after each migration --------------------------------------------

    def verify(self, src_pid, a_off, b_off, scenario):
        wait_for("the source QEMU to exit",
                 lambda: not os.path.exists(f"/proc/{src_pid}")
                 or _zombie(src_pid), 20)
        # The source keeps the migration's statistics (in postcopy the
        # destination gets none); then its inactive definition goes.
        state = self.a.virsh("domstate", "--reason", DOMAIN,
                             quiet=True).stdout.strip()
        if state != "shut off (migrated)":
            raise Failure(f"{DOMAIN} is {state!r} on host a")
        info = self.a.virsh("domjobinfo", "--completed", DOMAIN,
                            quiet=True).stdout
        say(f"  [a] virsh domjobinfo --completed {DOMAIN}:")
        for ln in info.strip().splitlines():
            say(f"      {ln}")
        if not re.search(r"Job type:\s+Completed", info):
            raise Failure("domjobinfo --completed on host a shows no "
                          "completed job")
        self.a.virsh("undefine", DOMAIN, quiet=True)
        names = self.a.virsh("list", "--all", "--name", quiet=True).stdout
        if DOMAIN in names.split():
            raise Failure(f"{DOMAIN} is still listed on host a")
        state = self.b.virsh("domstate", DOMAIN, quiet=True).stdout.strip()
        if state != "running":
            raise Failure(f"{DOMAIN} is {state!r} on host b")
        dst_pid = self.b.qemu_pid()
        self.qemu_pids.add(dst_pid)
        check_qemu(dst_pid, "b", self.emulator, self.unpriv)
        passes = self.b.serial().count(b"B")
        wait_for("guest progress on host b",
                 lambda: self.b.serial().count(b"B") > passes, 20)
        self.b.virsh("suspend", DOMAIN, quiet=True)
        dump_in = "/var/lib/libvirt/dump/guest.mem"
        dump = self.b.path(dump_in)
        if os.path.exists(dump):
            os.unlink(dump)
        args = {"val": bootguest.MEM_START,
                "size": bootguest.MEM_END - bootguest.MEM_START,
                "filename": dump_in}
        self.b.virsh("qemu-monitor-command", DOMAIN, json.dumps(
            {"execute": "pmemsave", "arguments": args}), quiet=True)
        if not os.path.exists(dump):
            raise Failure(f"pmemsave on host b wrote no {dump}")
        try:
            value = bootguest.check_guest_ram(dump)
        except AssertionError as e:
            raise Failure(str(e))
        os.unlink(dump)
        # The dump is the guest's memory: its boot sector's code is at
        # 0x7c00 (the GDT after it the CPU marks accessed).
        args = {"val": 0x7c00, "size": 64, "filename": dump_in}
        self.b.virsh("qemu-monitor-command", DOMAIN, json.dumps(
            {"execute": "pmemsave", "arguments": args}), quiet=True)
        with open(dump, "rb") as f, \
                open(self.b.path("/var/lib/libvirt/images/bootsect"),
                     "rb") as g:
            if f.read() != g.read(64):
                raise Failure("pmemsave at 0x7c00 on host b does not give "
                              "the boot sector: not the guest's memory?")
        os.unlink(dump)
        say(f"  guest running on b, gone from a; memory consistent "
            f"(first page holds {value})")
        check_qmp_log(self.a.log_since(a_off), self.b.log_since(b_off),
                      scenario)
        self.b.virsh("destroy", DOMAIN, quiet=True)
        self.b.virsh("undefine", DOMAIN, quiet=True)
        self.qemu_pids.discard(dst_pid)

    def scenario(self, name, emulator, unpriv):
        a_off, b_off = self.a.log_offset(), self.b.log_offset()
        self.offsets = {self.a: a_off, self.b: b_off}
        self.emulator, self.unpriv = emulator, unpriv
        wrapper = (self.extra_device_emulator(emulator)
                   if name == "switchfail" else
                   self.one_page_faults_emulator(emulator)
                   if name == "resume" else None)
        src_pid = self.start_guest(emulator, unpriv, xml_emulator=wrapper)
        getattr(self, name)()
        if name == "switchfail":
            self.verify_on_source(src_pid, a_off, b_off)
        else:
            self.verify(src_pid, a_off, b_off, name)

    def expect_refusal(self, emulator, what):
        """An unprivileged destination that cannot have userfaultfd.

        The migration must fail at once with QEMU's "Postcopy is not
        supported", the guest still running on host a.
        """
        self.start_guest(emulator, True)
        mig = self.virsh_bg(self.a, self.migrate_cmd(port=free_port()))
        rc, out, err = self.wait_virsh(mig, 60)
        say(f"  virsh migrate ended ({rc}): {err.strip()}")
        if rc == 0:
            raise Failure(f"{what} migrated in postcopy mode")
        if "Postcopy is not supported" not in err:
            raise Failure(f"{what} failed, but not with 'Postcopy is not "
                          f"supported': {err.strip()}")
        state = self.a.virsh("domstate", DOMAIN, quiet=True).stdout.strip()
        if state != "running":
            raise Failure(f"after the refusal the guest is {state!r} on a")
        self.a.virsh("destroy", DOMAIN, quiet=True)
        self.a.virsh("undefine", DOMAIN, quiet=True)


def monitor_lines(log):
    """(direction, JSON text) of each QMP message in a libvirtd log."""
    out = []
    for ln in log.splitlines():
        m = re.search(r"QEMU_MONITOR_SEND_MSG: .*msg=(\{.*\})$", ln)
        if m:
            out.append(("send", m.group(1)))
            continue
        m = re.search(r"QEMU_MONITOR_RECV_EVENT: .*event=(\{.*\})$", ln)
        if m:
            out.append(("event", m.group(1)))
    return out


def migration_events(msgs):
    return [json_status(t) for d, t in msgs
            if d == "event" and '"MIGRATION"' in t]


def json_status(text):
    m = re.search(r'"status":\s*"([a-z-]+)"', text)
    return m.group(1) if m else None


def sent(msgs, command):
    return [t for d, t in msgs
            if d == "send" and f'"execute":"{command}"' in t.replace(" ", "")]


def check_qmp_log(a_log, b_log, scenario):
    """What libvirt told each QEMU, and what it heard back."""
    a, b = monitor_lines(a_log), monitor_lines(b_log)
    for name, msgs in (("a", a), ("b", b)):
        caps = [t for t in sent(msgs, "migrate-set-capabilities")
                if re.search(r'"capability":\s*"postcopy-ram",\s*'
                             r'"state":\s*true', t)]
        if not caps:
            raise Failure(f"host {name}'s log shows no migrate-set-"
                          "capabilities with postcopy-ram on")
    if not sent(a, "migrate-start-postcopy"):
        raise Failure("host a's log shows no migrate-start-postcopy")
    if sent(b, "migrate-start-postcopy"):
        raise Failure("migrate-start-postcopy was sent to the destination")
    ev = migration_events(b)
    if "postcopy-active" not in ev or "completed" not in ev or \
            ev.index("postcopy-active") > ev.index("completed"):
        raise Failure(f"the destination's MIGRATION events {ev}: no "
                      "postcopy-active before completed")
    src_ev = migration_events(a)
    if scenario == "resume":
        for name, evs in (("a", src_ev), ("b", ev)):
            if "postcopy-paused" not in evs:
                raise Failure(f"host {name} never reported postcopy-paused: "
                              f"{evs}")
        if not sent(b, "migrate-recover"):
            raise Failure("no migrate-recover was sent to the destination")
        if not [t for t in sent(a, "migrate")
                if re.search(r'"resume":\s*true', t)]:
            raise Failure("no migrate with resume was sent to the source")
    say(f"  libvirtd logs: postcopy-ram set on a and b, "
        f"migrate-start-postcopy sent to a; b's MIGRATION events: "
        f"{' '.join(dict.fromkeys(ev))}")


def cleanup_stale():
    """Daemons and QEMUs an earlier, killed run of the test left."""
    for pid in our_qemu_pids():
        kill_pid(pid, "QEMU left by an earlier run")
    for pid in our_daemon_pids():
        kill_pid(pid, "libvirtd left by an earlier run")
    restore_sysctl()
    restore_devices()


def preflight(emulators):
    for tool in ("libvirtd", "virsh", "unshare", "ss", "setfacl"):
        if not shutil.which(tool):
            raise Skip(f"{tool} is not installed (scripts/setup-host.sh "
                       "installs it)")
    if os.geteuid() != 0:
        raise Skip("needs root: it starts libvirt daemons in namespaces")
    for e in emulators.values():
        if not os.access(e, os.X_OK):
            raise Skip(f"no emulator {e}")
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        raise Skip(f"no user {QEMU_USER} (libvirt-daemon-system makes it)")
    r = subprocess.run(["unshare", "--mount", "--uts", "true"],
                       capture_output=True, text=True)
    if r.returncode:
        raise Skip(f"cannot make mount and UTS namespaces: "
                   f"{r.stderr.strip()}")
    # ss -K needs the kernel's sock_destroy (CONFIG_INET_DIAG_DESTROY).
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = lst.accept()
        subprocess.run(["ss", "-K", "-t", "-n",
                        f"( dport = :{port} )"], capture_output=True)
        c.settimeout(2)
        try:
            c.recv(1)
            destroyed = False
        except (ConnectionError, socket.timeout) as e:
            destroyed = not isinstance(e, socket.timeout)
        c.close()
        s.close()
    if not destroyed:
        raise Skip("ss -K cannot kill a TCP connection here (the kernel "
                   "lacks CONFIG_INET_DIAG_DESTROY)")


def kvm_usable():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def run_all(args, emulators, scenarios, state):
    """The configurations in turn; raises on the first failure."""
    preflight(emulators)
    cleanup_stale()
    os.makedirs(BASE, exist_ok=True)
    kvm = args.accel == "auto" and kvm_usable()
    if not kvm:
        say("the guest runs under TCG" + (" (no usable /dev/kvm)"
                                          if args.accel == "auto" else ""))
    run = state["run"] = Run(kvm)
    results = state["results"]

    if args.only != "unpriv":
        say("=== QEMU as root")
        run.start_hosts(unpriv=False)
        for ename, emulator in emulators.items():
            run_scenarios(run, results, scenarios, f"root {ename}", emulator,
                          unpriv=False)
        run.stop_hosts()

    if args.only == "root":
        return 0
    if not os.path.exists("/dev/userfaultfd"):
        say(f"=== QEMU as {QEMU_USER}: skipped")
        say("skipped the unprivileged part: no /dev/userfaultfd here "
            "(Linux before 6.1)")
        return 77
    say(f"=== QEMU as {QEMU_USER}, vm.unprivileged_userfaultfd=0, "
        f"/dev/userfaultfd granted to {QEMU_USER} by an ACL")
    set_sysctl()
    grant_devices()
    run.start_hosts(unpriv=True)
    for ename, emulator in emulators.items():
        if ename == "stock":
            say("--- unpriv stock: expected failure")
            t = time.monotonic()
            run.expect_refusal(emulator, "stock QEMU 7.2 as an unprivileged "
                               "destination")
            results.append(("xfail", "unpriv stock refused (Postcopy is "
                            "not supported)", time.monotonic() - t))
            continue
        # The control: without the ACL, ours is refused too, so its passes
        # below are the grant's doing.
        say(f"--- unpriv {ename} without the ACL on /dev/userfaultfd: "
            "expected failure")
        t = time.monotonic()
        subprocess.run(["setfacl", "-x", f"u:{QEMU_USER}", "/dev/userfaultfd"],
                       check=True)
        try:
            run.expect_refusal(emulator, f"{ename} without the ACL on "
                               "/dev/userfaultfd")
        finally:
            subprocess.run(["setfacl", "-m", f"u:{QEMU_USER}:rw",
                            "/dev/userfaultfd"], check=True)
        results.append(("xfail", f"unpriv {ename} without the ACL refused "
                        "(Postcopy is not supported)", time.monotonic() - t))
        run_scenarios(run, results, scenarios, f"unpriv {ename}", emulator,
                      unpriv=True)
    run.stop_hosts()
    return 0


def run_scenarios(run, results, scenarios, label, emulator, unpriv):
    for s in scenarios:
        t = time.monotonic()
        if s == "switchfail" and emulator == STOCK:
            # Stock 7.2 loses the VM there: expected, and must stay so
            # for the test to mean anything
            say(f"--- {label}: {s}: expected failure")
            try:
                run.scenario(s, emulator, unpriv=unpriv)
            except VmLost as e:
                say(f"  as expected: {e}")
                run.stop_guests()
                results.append(("xfail", f"{label} {s} (stock loses the "
                                "VM)", time.monotonic() - t))
                continue
            raise Failure(f"{label} {s} passed with stock: the expected "
                          "failure is gone")
        say(f"--- {label}: {s}")
        run.scenario(s, emulator, unpriv=unpriv)
        results.append(("pass", f"{label} {s}", time.monotonic() - t))


def dump_logs(run):
    for h in (run.a, run.b):
        for p in (os.path.join(h.root, "libvirtd.out"),
                  h.path(f"/var/log/libvirt/qemu/{DOMAIN}.log")):
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    say(f"--- {p} (end):\n" + f.read()[-1500:])


def cleanup(state):
    """Stop all the test started, restore the sysctl: False if it could not."""
    ok = True
    run = state.get("run")
    if run:
        try:
            run.stop_hosts()
        except Exception as e:          # the rest must still happen
            say(f"stopping the hosts: {e}")
            ok = False
    for undo in (restore_sysctl, restore_devices):
        try:
            undo()
        except (OSError, subprocess.SubprocessError) as e:
            say(f"FAIL: {undo.__name__}: {e}")
            ok = False
    left = our_qemu_pids() + our_daemon_pids()
    if left:
        say(f"FAIL: still running after the cleanup: {left}")
        for pid in left:
            kill_pid(pid, "leftover")
        ok = False
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("root", "unpriv"))
    ap.add_argument("--emulators", default="stock,ours")
    ap.add_argument("--scenarios", default="switch,after,resume,switchfail")
    ap.add_argument("--accel", choices=("auto", "tcg"), default="auto",
                    help="auto: KVM when /dev/kvm can be opened")
    args = ap.parse_args()
    emulators = {e: {"ours": OURS, "stock": STOCK}[e]
                 for e in args.emulators.split(",")}
    scenarios = args.scenarios.split(",")
    for s in scenarios:
        if s not in ("switch", "after", "resume", "switchfail"):
            ap.error(f"unknown scenario {s}")

    # SIGINT too: a shell without job control starts a background job
    # with SIGINT ignored, and Python then leaves it so.
    def on_signal(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    state = {"results": []}
    try:
        rc = run_all(args, emulators, scenarios, state)
    except Skip as e:
        say(f"skipped: {e}")
        rc = 77
    except (Failure, subprocess.SubprocessError, OSError) as e:
        say(f"FAIL: {e}")
        if state.get("run"):
            dump_logs(state["run"])
        rc = 1
    except KeyboardInterrupt as e:
        say(f"interrupted ({e or 'SIGINT'}); stopping what the test "
            "started")
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        clean = cleanup(state)
    for status, name, secs in state["results"]:
        say(f"{status.upper():5} {name} ({secs:.1f}s)")
    say(f"total {time.monotonic() - T0:.1f}s")
    if not clean and rc in (0, 77):
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
