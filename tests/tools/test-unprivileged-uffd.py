#!/usr/bin/env python3
"""postcopy-ram on a QEMU that runs as an unprivileged user.

With vm.unprivileged_userfaultfd at 0 the userfaultfd() system call is
refused to an unprivileged process; libvirt runs QEMU as such a user.  A
destination QEMU then can only use postcopy through /dev/userfaultfd,
when it has been granted access to the device.

The test runs $OURS as 'nobody' with -incoming defer, in a mount
namespace of its own where a copy of the /dev/userfaultfd node owned by
'nobody' is bind-mounted over the real one (the host's device is not
touched), and sets postcopy-ram, which makes the destination probe
userfaultfd.  It must succeed; without the grant it must fail with an
error that says what to grant.  Given STOCK, it also shows that stock
QEMU 7.2 fails even with the grant (reported, not asserted).

Skips (exit 77) when it cannot run: not root, no /dev/userfaultfd
(Linux < 6.1), vm.unprivileged_userfaultfd not 0 (nothing to test), or
the build lies where 'nobody' cannot reach it.
"""

import os
import pwd
import shlex
import stat
import subprocess
import sys
import tempfile

from qmplib import Qmp, QmpError

OURS = os.environ.get("OURS") or sys.exit("OURS is not set")
STOCK = os.environ.get("STOCK")
DEVICE = "/dev/userfaultfd"


def skip(reason):
    print(reason)
    sys.exit(77)


def set_postcopy_ram(qemu, tmp, grant):
    """Start @qemu as nobody and set postcopy-ram: None or the error."""
    qmp_path = os.path.join(tmp, "qmp.sock")
    if os.path.exists(qmp_path):
        os.unlink(qmp_path)
    qemu_cmd = shlex.join([
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        qemu, "-machine", "none", "-nodefaults", "-display", "none",
        "-qmp", f"unix:{qmp_path},server=on,wait=off", "-incoming", "defer"])
    script = "mount --make-rprivate / && "
    if grant:
        script += f"mount --bind {shlex.quote(tmp)}/uffd {DEVICE} && "
    script += f"exec {qemu_cmd}"
    proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        qmp = Qmp(qmp_path)
        try:
            qmp.execute("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": True}])
            return None
        except QmpError as e:
            return str(e)
        finally:
            qmp.close()
    finally:
        proc.kill()
        _, err = proc.communicate()
        if err.strip():
            print(f"  ({os.path.basename(qemu)} said: {err.strip()})")


def main():
    if os.geteuid() != 0:
        skip("needs root to start QEMU as another user in a namespace")
    if not os.path.exists(DEVICE):
        skip(f"no {DEVICE} on this host (Linux before 6.1)")
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0":
            skip("vm.unprivileged_userfaultfd is not 0: the system call is "
                 "not refused to unprivileged users here")

    probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                            "--clear-groups", OURS, "--version"],
                           capture_output=True, text=True)
    if probe.returncode:
        skip(f"'nobody' cannot run {OURS} (a directory above it is "
             f"private): {probe.stderr.strip()}")

    nobody = pwd.getpwnam("nobody")
    failures = 0
    # /tmp, not $TMPDIR: the test runner's temporary directory is private
    # to root, and 'nobody' must create its QMP socket here.
    with tempfile.TemporaryDirectory(prefix="uffd-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o777)
        rdev = os.stat(DEVICE).st_rdev
        os.mknod(os.path.join(tmp, "uffd"), stat.S_IFCHR | 0o600, rdev)
        os.chown(os.path.join(tmp, "uffd"), nobody.pw_uid, nobody.pw_gid)

        err = set_postcopy_ram(OURS, tmp, grant=True)
        if err is None:
            print("ok   granted /dev/userfaultfd: postcopy-ram accepted")
        else:
            print(f"FAIL granted /dev/userfaultfd: {err}")
            failures += 1

        err = set_postcopy_ram(OURS, tmp, grant=False)
        if err and "Postcopy is not supported" in err:
            print(f"ok   no grant: refused: {err}")
        else:
            print(f"FAIL no grant: expected a refusal, got {err!r}")
            failures += 1

        if STOCK:
            err = set_postcopy_ram(STOCK, tmp, grant=True)
            print(f"info stock QEMU 7.2 with the grant: "
                  f"{err or 'accepted'}")
    print(f"{2 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
