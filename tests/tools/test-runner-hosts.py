#!/usr/bin/env python3
"""The runner, the demo and the bench on the three kinds of host.

Each kind is simulated by a fake root (QEMU_POSTCOPY_HOST_ROOT) holding
what scripts/hostkind.py looks at: dev/kvm, sys/module/<module>.  The
runner runs against a fake migration-test that registers cases as the
real one does on such a host (dirty_ring and vcpu_dirty_limit only where
/dev/kvm exists) and fails dirty_ring on PVM, as PVM's dirty ring does;
the case names come from the real migration-test.c ($TREE).

Checked for each kind: the host line, printed once and first; the run
passes; dirty_ring runs, is skipped or is absent as it should; the demo's
and bench's accelerator.  Then the mistakes the runner must still catch
on a host where the entry's condition is false: a misspelt case in
env-skips and in known-failures, an unknown condition.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import types

TOP = os.environ.get("TOP") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
TREE = os.environ.get("TREE") or os.path.join(TOP, "build", "qemu")
RUNNER = os.path.join(TOP, "tests", "run-migration-tests.py")
sys.path.insert(0, os.path.join(TOP, "scripts"))
import demo  # noqa: E402
import hostkind  # noqa: E402

HOSTS = {
    # kind: (files under the fake root, host line, Linux guests' accel)
    "none": (["sys/module/kvm_pvm"],
             "host: no /dev/kvm (module kvm_pvm is loaded, the device is "
             "absent): every guest runs under TCG", "tcg"),
    "pvm": (["dev/kvm", "sys/module/kvm", "sys/module/kvm_pvm"],
            "host: /dev/kvm is PVM (module kvm_pvm): ", "tcg"),
    "kvm": (["dev/kvm", "sys/module/kvm", "sys/module/kvm_intel"],
            "host: hardware KVM (module kvm_intel): every guest runs under "
            "KVM", "kvm"),
}

FAKE_TEST = r'''#!/usr/bin/env python3
import os, sys
root = os.environ["QEMU_POSTCOPY_HOST_ROOT"]
has_kvm = os.path.exists(os.path.join(root, "dev/kvm"))
pvm = os.path.exists(os.path.join(root, "sys/module/kvm_pvm"))
cases = [c for c in open(os.environ["FAKE_CASES"]).read().split()
         if has_kvm or c not in ("/migration/dirty_ring",
                                 "/migration/vcpu_dirty_limit")]
if sys.argv[1] == "-l":
    for c in cases:
        print("/x86_64" + c)
    sys.exit(0)
case = sys.argv[2]
with open(os.environ["FAKE_RAN"], "a") as f:
    f.write(case + "\n")
if case == "/x86_64/migration/dirty_ring" and pvm:
    print("not ok 1 " + case)
    sys.exit(1)
print("ok 1 " + case)
'''

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def make_root(base, kind):
    root = os.path.join(base, "root-" + kind)
    for rel in HOSTS[kind][0]:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if rel.startswith("sys/"):
            os.makedirs(path, exist_ok=True)
        else:
            open(path, "w").close()
    os.makedirs(root, exist_ok=True)
    return root


def run_runner(base, root, env_skips, known, fake_cases):
    ran = os.path.join(base, "ran")
    if os.path.exists(ran):
        os.unlink(ran)
    test = os.path.join(base, "migration-test")
    own = os.path.join(base, "own-tests")
    open(own, "w").write("# none\n")
    env = dict(os.environ, QEMU_POSTCOPY_HOST_ROOT=root,
               FAKE_CASES=fake_cases, FAKE_RAN=ran)
    cmd = [sys.executable, RUNNER, "--ours", "/bin/true", "--stock",
           "/bin/true", "--test", test, "--obj", base, "--tree", TREE,
           "--pairings", "ours-ours", "--logdir", os.path.join(base, "logs"),
           "--env-skips", env_skips, "--known-failures", known,
           "--own-tests", own]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=300)
    ran_cases = open(ran).read().split() if os.path.exists(ran) else []
    return proc, ran_cases


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    real_env_skips = os.path.join(TOP, "tests", "env-skips")
    real_known = os.path.join(TOP, "tests", "known-failures")
    with tempfile.TemporaryDirectory(prefix="runner-hosts-") as base:
        test = write(os.path.join(base, "migration-test"), FAKE_TEST)
        os.chmod(test, 0o755)
        spec = importlib.util.spec_from_file_location("runner", RUNNER)
        runner = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runner)
        registered = sorted(runner.source_cases(TREE))
        check("/migration/dirty_ring" in registered
              and "/migration/postcopy/plain" in registered,
              f"migration-test.c registers {len(registered)} cases, "
              "dirty_ring and postcopy/plain among them")
        check("/migration/ignore_shared" not in registered,
              "a commented-out registration is not a case")
        fake_cases = write(os.path.join(base, "cases"),
                           "\n".join(registered) + "\n")

        for kind, (_, line, accel) in HOSTS.items():
            root = make_root(base, kind)
            os.environ["QEMU_POSTCOPY_HOST_ROOT"] = root
            host = hostkind.detect()
            check(host.kind == kind and host.line().startswith(line),
                  f"{kind}: hostkind says {host.line()!r}")
            args = types.SimpleNamespace(accel="auto", smp=None)
            notes = demo.settle(args)
            check(args.accel == accel and notes[0] == host.line(),
                  f"{kind}: demo and bench run a Linux guest under "
                  f"{args.accel} and say so first")

            proc, ran = run_runner(base, root, real_env_skips, real_known,
                                   fake_cases)
            out = proc.stdout
            first = out.splitlines()[0] if out else ""
            check(proc.returncode == 0,
                  f"{kind}: the runner passes (rc {proc.returncode}"
                  + (f": {proc.stderr.strip()[-200:]}" if proc.returncode
                     else "") + ")")
            check(first == host.line() and out.count("host: ") == 1,
                  f"{kind}: the runner's first line is the host line, once")
            dirty = "/x86_64/migration/dirty_ring"
            want = {"none": "absent", "pvm": "skipped", "kvm": "ran"}[kind]
            got = ("ran" if dirty in ran else
                   "skipped" if f"SKIP  ours->ours  {dirty}" in out else
                   "absent")
            check(got == want, f"{kind}: dirty_ring {got} (want {want})")
            check(len(ran) == len(registered) - {"none": 2, "pvm": 2,
                                                 "kvm": 0}[kind],
                  f"{kind}: {len(ran)} cases ran")

        # Mistakes are caught on a host where the entry does not apply.
        root = make_root(base, "none")
        none_skips = write(os.path.join(base, "skips-typo"),
                           "*  /x86_64/migration/dirty_rign  kvm_pvm  r\n")
        proc, ran = run_runner(base, root, none_skips, real_known, fake_cases)
        check(proc.returncode != 0 and "dirty_rign" in proc.stderr
              and not ran, "a misspelt env-skips case fails the run "
              "before any case, on a host where its condition is false")
        bad_cond = write(os.path.join(base, "skips-cond"),
                         "*  /x86_64/migration/dirty_ring  kvm_pmv  r\n")
        proc, ran = run_runner(base, root, bad_cond, real_known, fake_cases)
        check(proc.returncode != 0 and "kvm_pmv" in proc.stderr and not ran,
              "an unknown condition fails the run")
        typo_known = write(os.path.join(base, "known-typo"),
                           "*  /x86_64/migration/postcopy/plian  #0\n")
        proc, ran = run_runner(base, root, real_env_skips, typo_known,
                               fake_cases)
        check(proc.returncode != 0 and "plian" in proc.stderr and not ran,
              "a misspelt known failure fails the run")
        known_absent = write(os.path.join(base, "known-absent"),
                             "*  /x86_64/migration/dirty_ring  #0\n")
        proc, ran = run_runner(base, root, real_env_skips, known_absent,
                               fake_cases)
        check(proc.returncode == 0 and "not registered on this host"
              in proc.stdout, "a known failure this host does not "
              "register is named, not fatal")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
