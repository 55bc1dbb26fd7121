"""A client's identity as prguard reads it when it connects (the broker's pidfd of the
peer, the worker's reading of /proc): two clients in different cgroups are told apart,
and a client whose pid went to another process is not confused with it."""

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
from prguard.broker.peer_pidfd import PeerGone, peer_pidfd
from prguard.shared.audit_record import ClientIdentity
from prguard.worker.client_identity import boot_ticks, identify, pid_of_pidfd, start_ticks

WEB01 = "machine.slice/machine-qemu\\x2d1\\x2dweb01.scope"
DB02 = "machine.slice/machine-qemu\\x2d2\\x2ddb02.scope/libvirt/emulator"


def connected_client(listener: socket.socket, cgroup: Path) -> tuple[subprocess.Popen[bytes],
                                                                       socket.socket]:
    """A process that moves into `cgroup`, connects, and waits."""
    script = (f"import os,socket,time; open({str(cgroup / 'cgroup.procs')!r},'w')"
              f".write(str(os.getpid())); s=socket.socket(socket.AF_UNIX);"
              f"s.connect({listener.getsockname()!r}); print('up', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    conn, _ = listener.accept()
    return proc, conn


@pytest.fixture
def listener(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.listen(4)
    return sock


def identify_connection(conn: socket.socket, pid: int) -> ClientIdentity:
    """As prguard does: the broker's pidfd of the peer, the worker's reading."""
    asked = boot_ticks()
    pidfd = peer_pidfd(conn)
    try:
        return identify(pid, 4242, 4242, pidfd, asked)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def test_two_clients_in_different_cgroups_have_different_identities(
        listener: socket.socket) -> None:
    with cgroups(WEB01, DB02) as (web01, db02):
        procs = []
        try:
            web_proc, web_conn = connected_client(listener, web01)
            procs.append(web_proc)
            db_proc, db_conn = connected_client(listener, db02)
            procs.append(db_proc)
            web = identify_connection(web_conn, web_proc.pid)
            db = identify_connection(db_conn, db_proc.pid)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        assert (web.cgroup, web.unit, web.domain) == (
            path_of(web01), "machine-qemu\\x2d1\\x2dweb01.scope", "web01")
        assert (db.cgroup, db.unit, db.domain) == (
            path_of(db02), "machine-qemu\\x2d2\\x2ddb02.scope", "db02")
        # with a pidfd (this host's kernel), the ids are the process's, not the broker's
        assert web.pidfd and (web.pid, web.uid, web.gid) == (web_proc.pid, 0, 0)


def test_a_client_that_exited_before_it_was_identified_has_no_cgroup(
        listener: socket.socket) -> None:
    with cgroups(WEB01) as (web01,):
        proc, conn = connected_client(listener, web01)
        proc.kill()
        proc.wait()
        try:
            identity = identify_connection(conn, proc.pid)
        except PeerGone:  # kernels before 6.17: no pidfd for a reaped process at all
            return
        assert identity.cgroup is None and identity.domain is None and identity.pidfd


def test_an_fd_that_is_no_pidfd_vouches_for_nothing(listener: socket.socket) -> None:
    with cgroups(WEB01) as (web01,):
        proc, conn = connected_client(listener, web01)
        try:
            assert pid_of_pidfd(conn.fileno()) is None
            identity = identify(proc.pid, 1, 1, conn.fileno(), boot_ticks())
        finally:
            proc.kill()
            proc.wait()
    assert identity.cgroup is None and not identity.pidfd


def test_without_a_pidfd_a_process_started_after_the_introduction_is_not_the_client(
        listener: socket.socket) -> None:
    with cgroups(WEB01) as (web01,):
        proc, _ = connected_client(listener, web01)
        try:
            time.sleep(0.05)
            now = boot_ticks()
            early = identify(proc.pid, 7, 8, None, 0)  # asked long before it started
            fine = identify(proc.pid, 7, 8, None, now)
        finally:
            proc.kill()
            proc.wait()
    assert early.cgroup is None and not early.pidfd
    assert (fine.cgroup, fine.domain, fine.pidfd) == (path_of(web01), "web01", False)
    assert (fine.uid, fine.gid) == (7, 8)  # without a pidfd, SO_PEERCRED's ids


@pytest.mark.parametrize(("stat", "ticks"), [
    ("1 (init) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 42 100", 42),
    ("7 (a) b) (c) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 99 100", 99),
    ("", None),
    ("3 (x) S 1 2", None),
])
def test_start_ticks(stat: str, ticks: int | None) -> None:
    assert start_ticks(stat) == ticks


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
