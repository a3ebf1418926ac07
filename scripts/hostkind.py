#!/usr/bin/env python3
"""What this host's /dev/kvm is, and which accelerator each guest gets.

The project meets three kinds of host:

  none  no /dev/kvm (or one this user cannot open): every guest runs
        under TCG.  A loaded kvm module without the device counts here.
  pvm   /dev/kvm backed by kvm_pvm: migration-test's boot-sector guests
        run under KVM, but a stock Linux kernel does not boot there, so
        the demo's and the benchmark's Linux guests run under TCG; PVM's
        dirty ring loses pages, so the dirty-ring cases are skipped.
  kvm   /dev/kvm backed by kvm_intel or kvm_amd: every guest runs under
        KVM.

A /dev/kvm with none of those modules behind it is reported as "other":
the boot-sector guests use it (QEMU falls back to TCG if it cannot), the
Linux guests do not.

Every check reads below a root directory, "/" unless the environment's
QEMU_POSTCOPY_HOST_ROOT names another, so that a test can point them at
a fake root.  Run as a program it prints the host line.
"""

import os
import sys


class HostKind:
    """One host's kind, why, and what follows for the guests."""

    def __init__(self, kind, found, follows, linux_accel):
        self.kind = kind              # "none", "pvm", "kvm" or "other"
        self.found = found            # what was found, for people
        self.follows = follows        # what that means for the guests
        self.linux_accel = linux_accel  # "kvm" or "tcg" for a Linux guest

    def line(self):
        return f"host: {self.found}: {self.follows}"


def host_root():
    return os.environ.get("QEMU_POSTCOPY_HOST_ROOT", "/")


def detect(root=None):
    root = root or host_root()

    def there(path):
        return os.path.exists(os.path.join(root, path.lstrip("/")))

    modules = [m for m in ("kvm_pvm", "kvm_intel", "kvm_amd")
               if there("/sys/module/" + m)]
    dev = os.path.join(root, "dev/kvm")
    if not os.path.exists(dev):
        found = "no /dev/kvm"
        if modules:
            found += f" (module {modules[0]} is loaded, the device is absent)"
        return HostKind("none", found, "every guest runs under TCG", "tcg")
    if not os.access(dev, os.R_OK | os.W_OK):
        return HostKind("none", "/dev/kvm is not usable by this user",
                        "every guest runs under TCG", "tcg")
    if "kvm_pvm" in modules:
        return HostKind(
            "pvm", "/dev/kvm is PVM (module kvm_pvm)",
            "migration-test's boot-sector guests run under KVM, Linux "
            "guests (demo, bench) under TCG because PVM does not boot a "
            "stock kernel; the KVM dirty-ring cases are skipped", "tcg")
    for mod in ("kvm_intel", "kvm_amd"):
        if mod in modules:
            return HostKind("kvm", f"hardware KVM (module {mod})",
                            "every guest runs under KVM", "kvm")
    return HostKind(
        "other", "/dev/kvm with neither kvm_intel, kvm_amd nor kvm_pvm "
        "behind it", "boot-sector guests use it, Linux guests run under "
        "TCG", "tcg")


if __name__ == "__main__":
    print(detect().line())
    sys.exit(0)
