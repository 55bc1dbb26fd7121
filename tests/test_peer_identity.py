"""A client's identity as the broker reads it at connect time: two clients in different
cgroups are told apart, and a client whose pid went to another process is not confused
with it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.cgroups import cgroups, path_of
from lab.processes import REPO
from prguard.broker import peer_identity

WEB01 = "machine.slice/machine-qemu\\x2d1\\x2dweb01.scope"
DB02 = "machine.slice/machine-qemu\\x2d2\\x2ddb02.scope/libvirt/emulator"


def connected_client(listener: socket.socket, cgroup: Path) -> tuple[subprocess.Popen[bytes],
                                                                       socket.socket]:
    """A process that moves into `cgroup`, connects, and waits."""
    script = (f"import socket,sys,time; open({str(cgroup / 'cgroup.procs')!r},'w')"
              f".write(str(__import__('os').getpid())); s=socket.socket(socket.AF_UNIX);"
              f"s.connect({listener.getsockname()!r}); print('up', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    conn, _ = listener.accept()
    return proc, conn


def test_two_clients_in_different_cgroups_have_different_identities(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    listener.listen(4)
    proc_fd = peer_identity.open_proc()
    try:
        with cgroups(WEB01, DB02) as (web01, db02):
            procs = []
            try:
                web_proc, web_conn = connected_client(listener, web01)
                procs.append(web_proc)
                db_proc, db_conn = connected_client(listener, db02)
                procs.append(db_proc)
                now = peer_identity.boot_ticks()
                web = peer_identity.identify(web_conn, web_proc.pid, 0, 0, proc_fd, now)
                db = peer_identity.identify(db_conn, db_proc.pid, 0, 0, proc_fd, now)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
            assert (web.cgroup, web.unit, web.domain) == (
                path_of(web01), "machine-qemu\\x2d1\\x2dweb01.scope", "web01")
            assert (db.cgroup, db.unit, db.domain) == (
                path_of(db02), "machine-qemu\\x2d2\\x2ddb02.scope", "db02")
            assert web.pidfd and db.pidfd  # this host's kernel has SO_PEERPIDFD
    finally:
        os.close(proc_fd)
        listener.close()


def test_a_client_that_exited_before_it_was_identified_has_no_cgroup(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    listener.listen(4)
    proc_fd = peer_identity.open_proc()
    try:
        with cgroups(WEB01) as (web01,):
            proc, conn = connected_client(listener, web01)
            now = peer_identity.boot_ticks()
            proc.kill()
            proc.wait()
            identity = peer_identity.identify(conn, proc.pid, 0, 0, proc_fd, now)
            assert identity.cgroup is None and identity.domain is None and identity.pidfd
    finally:
        os.close(proc_fd)
        listener.close()


def test_without_a_pidfd_a_process_started_after_accept_is_not_the_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_identity, "peer_pidfd", lambda sock: None)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    listener.listen(4)
    proc_fd = peer_identity.open_proc()
    try:
        with cgroups(WEB01) as (web01,):
            proc, conn = connected_client(listener, web01)
            try:
                after = peer_identity.boot_ticks()
                time.sleep(0.05)
                accepted_long_before = 0
                early = peer_identity.identify(conn, proc.pid, 0, 0, proc_fd,
                                               accepted_long_before)
                fine = peer_identity.identify(conn, proc.pid, 0, 0, proc_fd, after)
            finally:
                proc.kill()
                proc.wait()
        assert early.cgroup is None and not early.pidfd
        assert fine.cgroup == path_of(web01) and fine.domain == "web01" and not fine.pidfd
    finally:
        os.close(proc_fd)
        listener.close()


@pytest.mark.parametrize(("stat", "ticks"), [
    ("1 (init) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 42 100", 42),
    ("7 (a) b) (c) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 99 100", 99),
    ("", None),
    ("3 (x) S 1 2", None),
])
def test_start_ticks(stat: str, ticks: int | None) -> None:
    assert peer_identity.start_ticks(stat) == ticks


def test_a_reused_pid_is_never_taken_for_the_client() -> None:
    """The real thing, in a pid namespace of its own: client A connects and exits, B is
    forked with A's pid into another cgroup; neither way of identifying the connection
    names B's cgroup."""
    unshare = shutil.which("unshare")
    assert unshare is not None
    with cgroups("prguard-test/vm-a", "prguard-test/vm-b") as (vm_a, vm_b):
        done = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", sys.executable,
                               "-m", "lab.pid_reuse", str(vm_a), str(vm_b)],
                              capture_output=True, text=True, timeout=120, cwd=REPO,
                              check=False)
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
        assert found["b_pid"] == found["a_pid"] == found["peer_pid"]
        assert f"0::{path_of(vm_b)}" in found["b_cgroup"]
        assert found["reused"]["pidfd"] == {"cgroup": None, "pidfd": True}
        assert found["reused"]["start-time"] == {"cgroup": None, "pidfd": False}
        assert found["live"]["pidfd"] == {"cgroup": path_of(vm_a), "pidfd": True}
        assert found["live"]["start-time"] == {"cgroup": path_of(vm_a), "pidfd": False}
