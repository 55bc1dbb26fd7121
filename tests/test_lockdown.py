"""The privilege split, proven: capabilities and ids from /proc, seccomp on both
processes, a death test for every syscall a policy forbids, and a compromised broker's
credentials against the worker.

A death test checks which system call killed the process: the kernel's audit record of
the kill (lab/seccomp_audit.py) must name the call the process said it was about to make.
SIGSYS alone proves little: a process whose filter let the call through dies of SIGSYS
later too, on its way out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyseccomp
import pytest

from lab.processes import PRGUARD, REPO, Helper, children, proc_status, start_helper
from lab.seccomp_audit import SeccompAudit
from prguard.shared import sandbox

PRGUARD_SCRIPT = str(Path(sys.executable).parent / "prguard")
CAP_SYS_RAWIO = 1 << 17


def assert_confined(pid: int, caps: int, uid: int, gid: int) -> None:
    status = proc_status(pid)
    assert int(status["CapPrm"], 16) == caps
    assert int(status["CapEff"], 16) == caps
    for field in ("CapInh", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert status["Groups"].strip() == ""
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert int(status["Seccomp_filters"]) >= 1


@pytest.fixture
def nobody(sockdir: Path) -> Iterator[Helper]:
    os.chmod(sockdir, 0o777)  # so the -u user could remove its socket at exit
    helper = start_helper(PRGUARD, str(sockdir / "n.sock"), "-u", "nobody", "-g", "nogroup")
    yield helper
    helper.stop()


def test_proc_status_as_root(prguard: Helper) -> None:
    (worker,) = children(prguard.pid)
    assert_confined(prguard.pid, 0, 0, 0)
    assert_confined(worker, CAP_SYS_RAWIO, 0, 0)


def test_proc_status_with_user_and_group_and_multipath(sockdir: Path) -> None:
    """The opener does not change the other two (its own state: tests/test_opener.py)."""
    os.chmod(sockdir, 0o777)
    helper = start_helper(PRGUARD, str(sockdir / "m.sock"), "-u", "nobody", "-g", "nogroup",
                          "--multipath=on", timeout=30)
    try:
        assert_confined(helper.pid, 0, 65534, 65534)
        capabilities = sorted(int(proc_status(k)["CapEff"], 16) for k in children(helper.pid))
        assert capabilities == [0, CAP_SYS_RAWIO]
    finally:
        helper.stop()


def test_proc_status_with_user_and_group(nobody: Helper) -> None:
    (worker,) = children(nobody.pid)
    assert_confined(nobody.pid, 0, 65534, 65534)
    assert_confined(worker, CAP_SYS_RAWIO, 65534, 65534)
    assert proc_status(worker)["Threads"] != "1"  # the SG_IO pool, all under TSYNC


def forbidden(role: str) -> list[str]:
    specs: list[str] = []
    seen: dict[str, int] = {}
    for rule in sandbox.load_seccomp_policy(role).forbidden:
        index = seen.get(rule.syscall, 0)
        seen[rule.syscall] = index + 1
        specs.append(f"{rule.syscall}#{index}")
    return specs


def start_with_probe(sockdir: Path, role: str, spec: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PRGUARD_SECCOMP_PROBE=f"{role}:{spec}")
    extra = ["--multipath=on"] if role == "opener" else []
    return subprocess.Popen([*PRGUARD, "-k", str(sockdir / "p.sock"), *extra], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def audit() -> Iterator[SeccompAudit]:
    with SeccompAudit() as records:
        yield records


PROBE_LINE = re.compile(r"^prguard: seccomp probe: pid (\d+) calls (\w+) \(system call (\d+)\)"
                        r" with [0-9a-fx, ]+\n")


def killed_by_its_probe(audit: SeccompAudit, stderr: str, spec: str) -> tuple[int, str]:
    """The probing process said which call it makes; the kernel's audit record of its
    death names that very call. Returns (its pid, stderr after the probe's line)."""
    report = PROBE_LINE.match(stderr)
    assert report, stderr
    pid, name, number = int(report[1]), report[2], int(report[3])
    assert name == spec.partition("#")[0]
    assert number == pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    kill = audit.kill_of(pid)
    assert kill is not None, f"no seccomp kill of pid {pid} in the kernel's audit records"
    assert (kill.signal, kill.syscall) == (signal.SIGSYS, number), kill.record
    return pid, stderr[report.end():]


@pytest.mark.parametrize("spec", forbidden("broker"))
def test_broker_dies_on_each_forbidden_syscall(sockdir: Path, audit: SeccompAudit,
                                               spec: str) -> None:
    proc = start_with_probe(sockdir, "broker", spec)
    assert proc.wait(20) == -signal.SIGSYS
    assert proc.stderr is not None
    pid, after = killed_by_its_probe(audit, proc.stderr.read().decode(), spec)
    assert pid == proc.pid
    # the worker may say why it follows its broker before the pipe is read
    assert after in ("", "prguard: worker: the broker died; exiting\n")


@pytest.mark.parametrize("spec", forbidden("worker"))
def test_worker_dies_on_each_forbidden_syscall(sockdir: Path, audit: SeccompAudit,
                                               spec: str) -> None:
    proc = start_with_probe(sockdir, "worker", spec)
    assert proc.wait(20) == 1  # the broker exits non-zero, saying why
    assert proc.stderr is not None
    pid, after = killed_by_its_probe(audit, proc.stderr.read().decode(), spec)
    assert pid != proc.pid
    assert after == (
        "prguard: the worker failed to start (killed by SIGSYS: a system call outside its "
        "seccomp policy); exiting\n")


@pytest.mark.parametrize("spec", forbidden("opener"))
def test_opener_dies_on_each_forbidden_syscall(sockdir: Path, audit: SeccompAudit,
                                               spec: str) -> None:
    proc = start_with_probe(sockdir, "opener", spec)
    assert proc.wait(30) == 1  # the broker exits non-zero, saying why
    assert proc.stderr is not None
    text = proc.stderr.read().decode()
    # --multipath=on where device-mapper is not loaded says so first (this host)
    text = text.partition("restarted\n")[2] if "device-mapper is not loaded" in text else text
    pid, after = killed_by_its_probe(audit, text, spec)
    assert pid != proc.pid
    assert after == (
        "prguard: the path opener failed to start (killed by SIGSYS: a system call outside "
        "its seccomp policy); exiting\n")


def test_probe_of_an_allowed_call_would_be_reported(sockdir: Path) -> None:
    """The death tests can fail: a probe naming no forbid line is a start-up error."""
    proc = start_with_probe(sockdir, "broker", "getpid")
    assert proc.wait(20) == 1
    assert proc.stderr is not None and b"no forbid line 'getpid'" in proc.stderr.read()


@pytest.mark.parametrize("fixture", ["prguard", "nobody"])
def test_broker_credentials_cannot_reach_into_the_worker(fixture: str,
                                                        request: pytest.FixtureRequest) -> None:
    helper: Helper = request.getfixturevalue(fixture)
    (worker,) = children(helper.pid)
    status = proc_status(helper.pid)
    uid, gid = status["Uid"].split()[0], status["Gid"].split()[0]
    attack = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
         sys.executable, str(REPO / "lab" / "attack_worker.py"), str(worker)],
        capture_output=True, text=True, timeout=20, check=True)
    results = json.loads(attack.stdout)
    assert results["ptrace_attach"] == "EPERM"
    assert results["proc_mem"] in ("EACCES", "EPERM")
    assert results["proc_environ"] in ("EACCES", "EPERM")
    assert results["proc_fd"] in ("EACCES", "EPERM")
    assert results["process_vm_readv"] == "EPERM"
    assert results["pidfd_getfd"] == "EPERM"


def test_refuses_to_start_without_cap_setpcap(sockdir: Path) -> None:
    result = subprocess.run(["setpriv", "--bounding-set=-setpcap", "--inh-caps=-all",
                             PRGUARD_SCRIPT, "-k", str(sockdir / "c.sock")],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert result.stderr == "prguard: Failed to drop privileges: Operation not permitted\n"
    assert not (sockdir / "c.sock").exists()


def test_refuses_to_serve_when_seccomp_cannot_be_loaded(sockdir: Path) -> None:
    """An outer filter that denies seccomp(2), as a too-strict unit would."""
    wrapper = ("import errno,os,sys,pyseccomp as s\n"
               "f=s.SyscallFilter(s.ALLOW)\n"
               "f.add_rule(s.ERRNO(errno.EPERM),'seccomp')\n"
               "f.add_rule(s.ERRNO(errno.EPERM),'prctl',s.Arg(0,s.EQ,22))\n"
               "f.load()\n"
               "os.execv(sys.argv[1],sys.argv[1:])\n")
    result = subprocess.run([sys.executable, "-c", wrapper, PRGUARD_SCRIPT, "-k",
                             str(sockdir / "s.sock")], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 1
    assert result.stderr.startswith("prguard: Failed to load the seccomp filter")
    assert result.stderr.count("\n") == 1
    assert not (sockdir / "s.sock").exists()


def test_privilege_drop_refuses_a_second_thread() -> None:
    script = ("import threading,time,sys\n"
              "from shared import privileges\n"
              "t=threading.Thread(target=time.sleep,args=(2,),daemon=True); t.start()\n"
              "try:\n    privileges.drop(None, ('sys_rawio',))\n"
              "except privileges.PrivilegeError as e:\n    print(e); sys.exit(0)\n"
              "sys.exit(1)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=20)
    assert result.returncode == 0
    assert result.stdout == "Failed to drop privileges: more than one thread\n"


def test_print_seccomp_shows_the_compiled_filters() -> None:
    for role, needle in (("worker", "if ($a1.hi32 == 0)\n"), ("broker", "action ALLOW;")):
        out = subprocess.run([PRGUARD_SCRIPT, f"--print-seccomp={role}"], capture_output=True,
                             text=True, check=True).stdout
        assert "# pseudo filter code start" in out
        assert needle in out
        assert "action KILL_PROCESS;" in out
    worker = subprocess.run([PRGUARD_SCRIPT, "--print-seccomp", "worker"],
                            capture_output=True, text=True, check=True).stdout
    assert "8837" in worker  # SG_IO (0x2285) compared in full
    assert subprocess.run([PRGUARD_SCRIPT, "--print-seccomp=qemu"],
                          capture_output=True).returncode == 1


def test_threads_share_the_filter(audit: SeccompAudit) -> None:
    """TSYNC: a thread that existed before the filter is confined too."""
    script = ("import threading,os,time,sys\n"
              "from prguard.shared import sandbox\n"
              "ev=threading.Event()\n"
              "def run():\n    ev.wait(); os.open('/etc/hostname', os.O_WRONLY)\n"
              "t=threading.Thread(target=run); t.start()\n"
              "sandbox.lock_down(sandbox.load_seccomp_policy('worker'), {})\n"
              "ev.set(); t.join()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    assert proc.wait(20) == -signal.SIGSYS
    kill = audit.kill_of(proc.pid)
    assert kill is not None and kill.syscall == pyseccomp.resolve_syscall(
        pyseccomp.Arch.NATIVE, "openat"), kill


def test_worker_alone_serves_with_the_filter(prguard: Helper, fd_zoo: dict[str, int]) -> None:
    """A confined pair still does the work (SG_IO passes the filter)."""
    from prguard.client.session import Client, pr_in_cdb
    with Client(prguard.path) as client:
        assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2
