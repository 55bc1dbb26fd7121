"""A real QEMU (Debian's qemu-system-x86, 7.2) as prguard's client, on the host.

No SCSI device is needed to prove the handshake: `-machine none` with a pr-manager-helper
object connects at object creation (spec 4.1), and QMP `query-pr-managers` reports the
connection (spec 4.4). The end-to-end path with a guest and a real LUN is
tests/test_nested_guest.py (in the lab VM).

Needs: qemu-system-x86 (Debian package), which `make` installs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.nested_qmp import QMP, QMPError
from lab.processes import PRGUARD, Helper, janitor_of, start_helper

QEMU = "qemu-system-x86_64"
START_TIMEOUT_S = 30.0


@dataclass
class Qemu:
    proc: subprocess.Popen[bytes]
    qmp: QMP
    stderr_file: Path

    def quit(self) -> int:
        with contextlib.suppress(QMPError, OSError):
            self.qmp.execute("quit")
        self.qmp.close()
        try:
            return self.proc.wait(START_TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        pytest.fail(f"{QEMU} not found: install the Debian package qemu-system-x86",
                    pytrace=False)
    return path


def qemu_argv(qmp_path: Path, *objects: str) -> list[str]:
    argv = [qemu_binary(), "-machine", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    for obj in objects:
        argv += ["-object", obj]
    return argv


@contextlib.contextmanager
def running_qemu(workdir: Path, *objects: str) -> Iterator[Qemu]:
    stderr_file = workdir / "qemu.stderr"
    qmp_path = workdir / "qmp.sock"
    with open(stderr_file, "wb") as err:
        proc = subprocess.Popen(qemu_argv(qmp_path, *objects), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        try:
            qmp = QMP.connect(str(qmp_path), lambda: proc.poll() is None, START_TIMEOUT_S)
        except (QMPError, OSError) as e:
            pytest.fail(f"QEMU did not come up ({e}): {stderr_file.read_text()}", pytrace=False)
        qemu = Qemu(proc, qmp, stderr_file)
        yield qemu
        assert qemu.quit() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_qemu_to_exit(workdir: Path, *objects: str) -> subprocess.CompletedProcess[str]:
    """QEMU that is expected to refuse to start."""
    try:
        return subprocess.run(qemu_argv(workdir / "qmp.sock", *objects), capture_output=True,
                              text=True, timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("QEMU started although its pr-manager-helper could not connect",
                    pytrace=False)


@pytest.fixture
def verbose_prguard(sockdir: Path) -> Iterator[Helper]:
    helper = start_helper(PRGUARD, str(sockdir / "prguard.sock"), "-vvv")
    yield helper
    helper.stop()


def test_qemu_connects_and_reports_connected(verbose_prguard: Helper, sockdir: Path) -> None:
    with running_qemu(sockdir, f"pr-manager-helper,id=pr0,path={verbose_prguard.path}") as qemu:
        assert qemu.qmp.execute("query-pr-managers") == [{"id": "pr0", "connected": True}]
        pid = qemu.proc.pid
    # the connection prguard served was QEMU's own (SO_PEERCRED), and it ended cleanly
    log = verbose_prguard.stderr_text()
    assert f"client connected: pid {pid} uid 0 gid 0" in log, log
    assert verbose_prguard.proc.poll() is None


def test_qemu_refuses_to_start_when_nothing_listens(sockdir: Path) -> None:
    path = sockdir / "absent.sock"
    r = run_qemu_to_exit(sockdir, f"pr-manager-helper,id=pr0,path={path}")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"{QEMU}: Failed to connect to '{path}': "
                                "No such file or directory"), r.stderr


def test_qemu_refuses_to_start_on_a_stale_socket(sockdir: Path) -> None:
    """A prguard killed with SIGKILL, its janitor too, leaves its socket file: connect is
    refused."""
    helper = start_helper(PRGUARD, str(sockdir / "stale.sock"))
    os.kill(janitor_of(helper.path), signal.SIGKILL)
    helper.stop(signal.SIGKILL)
    assert Path(helper.path).exists()
    r = run_qemu_to_exit(sockdir, f"pr-manager-helper,id=pr0,path={helper.path}")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"{QEMU}: Failed to connect to '{helper.path}': "
                                "Connection refused"), r.stderr


def test_hotplugged_object_connects_and_unplugs(verbose_prguard: Helper, sockdir: Path) -> None:
    """libvirt's hotplug of the first managed-PR disk (spec 6.3): object-add, object-del."""
    with running_qemu(sockdir) as qemu:
        assert qemu.qmp.execute("query-pr-managers") == []
        qemu.qmp.execute("object-add", {"qom-type": "pr-manager-helper", "id": "pr-helper0",
                                        "path": verbose_prguard.path})
        assert qemu.qmp.execute("query-pr-managers") == [{"id": "pr-helper0",
                                                          "connected": True}]
        qemu.qmp.execute("object-del", {"id": "pr-helper0"})
        assert qemu.qmp.execute("query-pr-managers") == []
    assert verbose_prguard.proc.poll() is None


def test_hotplug_fails_when_nothing_listens(sockdir: Path) -> None:
    with running_qemu(sockdir) as qemu:
        with pytest.raises(QMPError, match="Failed to connect"):
            qemu.qmp.execute("object-add", {"qom-type": "pr-manager-helper", "id": "pr0",
                                            "path": str(sockdir / "absent.sock")})
        assert qemu.qmp.execute("query-pr-managers") == []


def test_two_qemus_share_one_prguard(verbose_prguard: Helper, sockdir: Path) -> None:
    """The per-node shape (docs/USAGE.md): one helper, several VMs."""
    first, second = sockdir / "a", sockdir / "b"
    first.mkdir()
    second.mkdir()
    obj = f"pr-manager-helper,id=pr0,path={verbose_prguard.path}"
    with running_qemu(first, obj) as one, running_qemu(second, obj) as two:
        for qemu in (one, two):
            assert qemu.qmp.execute("query-pr-managers") == [{"id": "pr0", "connected": True}]
