"""Hostile clients: odd fds, floods of connections and requests, a stuck or killed
process, users without access (docs/HOSTILE.md maps every hostile case to its test)."""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.hostile import EXPECTED, KINDS, hostile_connection
from lab.processes import (
    PRGUARD,
    REPO,
    Helper,
    children,
    cpu_seconds,
    fd_count,
    proc_status,
    start_helper,
)
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import Sense, Status

IO_ERROR = Sense.IO_ERROR.fixed_format()


@pytest.fixture
def odd_fds() -> Iterator[dict[str, int]]:
    """Kinds of fd a guest-controlled QEMU could pass that are not SCSI devices."""
    fds = {"eventfd": os.eventfd(0), "memfd": os.memfd_create("x"),
           "zero": os.open("/dev/zero", os.O_RDWR), "urandom": os.open("/dev/urandom",
                                                                       os.O_RDWR)}
    epoll = select.epoll()
    fds["epoll"] = os.dup(epoll.fileno())
    epoll.close()
    fds["pty"], fds["tty"] = os.openpty()
    yield fds
    for fd in fds.values():
        os.close(fd)


@pytest.mark.parametrize("kind", ["eventfd", "memfd", "epoll", "zero", "urandom", "pty", "tty"])
def test_odd_fds_are_refused_before_any_ioctl(prguard: Helper, odd_fds: dict[str, int],
                                              kind: str) -> None:
    with Client(prguard.path) as client:
        assert client.request(pr_in_cdb(), odd_fds[kind]) == PrReply(Status.CHECK_CONDITION,
                                                                     IO_ERROR, b"")
        assert client.request(pr_out_cdb(0, 24), odd_fds[kind], bytes(24)).sense == IO_ERROR


def test_thousand_hostile_connections_leave_no_fd_behind(prguard: Helper,
                                                         fd_zoo: dict[str, int]) -> None:
    (worker,) = children(prguard.pid)
    with Client(prguard.path) as client:
        client.request(pr_in_cdb(), fd_zoo["loop"])
    time.sleep(0.2)
    baseline = (fd_count(prguard.pid), fd_count(worker))
    rng = random.Random(1234)
    unexpected: list[tuple[int, str]] = []
    for _ in range(1000):
        kind = rng.randrange(KINDS)
        outcome = hostile_connection(prguard.path, kind, fd_zoo)
        if outcome != EXPECTED[kind]:
            unexpected.append((kind, outcome))
    assert unexpected == []  # each connection got its answer: closed, or served until left
    deadline = time.monotonic() + 10
    while (fd_count(prguard.pid), fd_count(worker)) != baseline:
        assert time.monotonic() < deadline, (baseline, fd_count(prguard.pid), fd_count(worker))
        time.sleep(0.05)
    # A legitimate client is still served (once the hostile ones, all from this same
    # peer, are gone: the per-peer limit would otherwise count them).
    with Client(prguard.path) as client:
        assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == Status.CHECK_CONDITION
    assert prguard.proc.poll() is None
    assert os.path.exists(f"/proc/{worker}")


def test_ten_thousand_requests_leave_fds_rss_and_threads_constant(
        prguard: Helper, fd_zoo: dict[str, int]) -> None:
    (worker,) = children(prguard.pid)

    def state() -> tuple[int, int, int, int, int, int]:
        b, w = proc_status(prguard.pid), proc_status(worker)
        return (fd_count(prguard.pid), fd_count(worker), int(b["Threads"]),
                int(w["Threads"]), int(b["VmRSS"].split()[0]), int(w["VmRSS"].split()[0]))

    with Client(prguard.path) as client:
        for _ in range(500):  # warm-up: allocator and caches settle
            client.request(pr_in_cdb(), fd_zoo["loop"])
        before = state()
        for _ in range(10_000):
            client.request(pr_in_cdb(), fd_zoo["loop"])
        after = state()
    assert after[:4] == before[:4]
    assert after[4] - before[4] < 2048 and after[5] - before[5] < 2048  # KiB


def test_two_thousand_idle_connections_stay_bounded(sockdir: Path, fd_zoo: dict[str, int]
                                                    ) -> None:
    helper = start_helper(PRGUARD, str(sockdir / "i.sock"), "--max-connections=100",
                          "--max-connections-per-peer=5000")
    try:
        held = []
        for _ in range(2000):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(helper.path)
            except BlockingIOError:
                s.close()
                continue
            held.append(s)
        time.sleep(1)
        pids = [helper.pid, *children(helper.pid)]
        start = cpu_seconds(pids)
        time.sleep(2)
        assert cpu_seconds(pids) - start < 0.2  # those past the limit refused, not spun on
        assert fd_count(helper.pid) <= 100 + 32
        assert int(proc_status(helper.pid)["VmRSS"].split()[0]) < 64 * 1024
        for s in held:
            s.close()
    finally:
        helper.stop()


def test_broker_killed_worker_gone_within_a_second(prguard: Helper) -> None:
    (worker,) = children(prguard.pid)
    prguard.proc.kill()
    prguard.proc.wait(5)
    deadline = time.monotonic() + 1.0
    while os.path.exists(f"/proc/{worker}") and "State:\tZ" not in Path(
            f"/proc/{worker}/status").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_stopped_worker_gets_the_request_answered_at_the_deadline(
        sockdir: Path, fd_zoo: dict[str, int]) -> None:
    """A LUN (or worker) that never answers: the request is answered 0b/08/00 once the
    SG_IO timeout and a grace period have passed; the broker stays responsive."""
    helper = start_helper(PRGUARD, str(sockdir / "d.sock"), "--sg-timeout=1")
    (worker,) = children(helper.pid)
    try:
        os.kill(worker, signal.SIGSTOP)
        result: list[PrReply] = []
        started = time.monotonic()
        with Client(helper.path, timeout=20) as stuck:
            t = threading.Thread(target=lambda: result.append(
                stuck.request(pr_in_cdb(), fd_zoo["loop"])))
            t.start()
            time.sleep(0.5)
            with Client(helper.path) as other:  # requests the broker answers itself
                assert other.request(pr_in_cdb(), fd_zoo["file"]).sense == IO_ERROR
            t.join(15)
        assert result == [PrReply(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE.fixed_format(),
                                  b"")]
        assert 5 < time.monotonic() - started < 10  # 1 s SG_IO timeout + 5 s grace
    finally:
        os.kill(worker, signal.SIGCONT)
        helper.stop()


def test_user_zero_is_accepted_as_by_the_c_helper(sockdir: Path) -> None:
    """Decision: -u 0 -g 0 runs (QEMU's helper accepts it); capabilities are still
    reduced, securebits keep root from regaining any, and seccomp is loaded."""
    helper = start_helper(PRGUARD, str(sockdir / "z.sock"), "-u", "0", "-g", "0")
    try:
        (worker,) = children(helper.pid)
        for pid, caps in ((helper.pid, 0), (worker, 1 << 17)):
            status = proc_status(pid)
            assert int(status["CapEff"], 16) == caps and status["Seccomp"] == "2"
    finally:
        helper.stop()


def test_users_without_write_access_to_the_socket_cannot_connect(prguard: Helper) -> None:
    os.chmod(os.path.dirname(prguard.path), 0o755)  # the directory is not the barrier
    os.chmod(prguard.path, 0o755)  # the socket is: what bind gives under umask 022
    script = ("import socket,sys\n"
              "s=socket.socket(socket.AF_UNIX)\n"
              "try:\n    s.connect(sys.argv[1]); print('connected')\n"
              "except PermissionError: print('EACCES')\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", script, prguard.path], capture_output=True,
                         text=True, cwd=REPO, timeout=20)
    assert out.stdout.strip() == "EACCES"
    os.chmod(prguard.path, 0o757)  # and the control: with write access it connects
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", script, prguard.path], capture_output=True,
                         text=True, cwd=REPO, timeout=20)
    assert out.stdout.strip() == "connected"
