"""The pair's life: either process dying ends the other; signals stop it in order;
a closed stderr (libvirt closes its pipe) never stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.processes import (
    PRGUARD,
    REPO,
    Helper,
    children,
    janitor_of,
    start_helper,
    wait_for_path,
    wait_for_service,
)
from prguard.client.session import Client, pr_in_cdb, pr_out_cdb
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import Sense, Status

LUN_COMM_FAILURE = Sense.LUN_COMM_FAILURE.fixed_format()


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if "State:\tZ" in f.read():
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_worker_killed_broker_exits_nonzero_with_one_line(prguard: Helper) -> None:
    (worker,) = children(prguard.pid)
    os.kill(worker, signal.SIGKILL)
    assert prguard.proc.wait(5) == 1
    lines = prguard.stderr_text().splitlines()
    assert lines == ["prguard: the worker exited (killed by SIGKILL); exiting"]
    assert not os.path.exists(prguard.path)


def test_in_flight_request_gets_lun_communication_failure_when_the_worker_dies(
        prguard: Helper, fd_zoo: dict[str, int]) -> None:
    (worker,) = children(prguard.pid)
    os.kill(worker, signal.SIGSTOP)  # the request will be in flight, unanswered
    with Client(prguard.path) as client:
        import threading
        result: list[PrReply] = []
        t = threading.Thread(target=lambda: result.append(
            client.request(pr_out_cdb(0, 24), fd_zoo["loop"], bytes(24))))
        t.start()
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        t.join(5)
    assert result == [PrReply(Status.CHECK_CONDITION, LUN_COMM_FAILURE, b"")]
    assert prguard.proc.wait(5) == 1


def test_broker_killed_worker_exits(prguard: Helper) -> None:
    (worker,) = children(prguard.pid)
    prguard.proc.kill()
    prguard.proc.wait(5)
    assert gone(worker)


def test_sigterm_finishes_the_request_in_flight_then_exits_zero(
        prguard: Helper, fd_zoo: dict[str, int]) -> None:
    (worker,) = children(prguard.pid)
    os.kill(worker, signal.SIGSTOP)
    with Client(prguard.path) as client:
        import threading
        result: list[PrReply] = []
        t = threading.Thread(target=lambda: result.append(
            client.request(pr_in_cdb(), fd_zoo["loop"])))
        t.start()
        time.sleep(0.3)
        prguard.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert prguard.proc.poll() is None  # still waiting for the request
        assert not os.path.exists(prguard.path)  # but no longer accepting
        os.kill(worker, signal.SIGCONT)
        t.join(5)
    assert result == [PrReply(Status.CHECK_CONDITION, Sense.INVALID_FIELD.fixed_format(), b"")]
    assert prguard.proc.wait(5) == 0
    assert gone(worker)


def test_libvirt_managed_start_survives_a_closed_stderr(sockdir: Path,
                                                        fd_zoo: dict[str, int]) -> None:
    """libvirt: argv [binary, -k, path] as root, stderr a pipe it closes once the socket
    path exists. prguard must go on serving and logging (-v here) into nothing."""
    path = str(sockdir / "pr-helper0.sock")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([*PRGUARD, "-k", path, "-vvv"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=write_end, cwd=REPO)
    os.close(write_end)
    wait_for_path(path, proc)
    os.close(read_end)  # libvirt closes its end of the stderr pipe
    for _ in range(3):
        with Client(path) as client:
            assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == Status.CHECK_CONDITION
            assert client.request(pr_in_cdb(), fd_zoo["file"]).sense == \
                Sense.IO_ERROR.fixed_format()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # ... and it can be started again on the same path.
    again = start_helper(PRGUARD, path)
    assert again.stop() == 0


def test_restart_on_the_same_path_replaces_a_stale_socket(sockdir: Path) -> None:
    path = str(sockdir / "s.sock")
    first = start_helper(PRGUARD, path)
    os.kill(janitor_of(path), signal.SIGKILL)  # as a SIGKILL of the whole group would:
    first.stop(signal.SIGKILL)  # then nobody removes its socket file
    assert os.path.exists(path)
    second = start_helper(PRGUARD, path)
    wait_for_service(path)
    assert second.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_stop_both_processes(prguard: Helper, sig: int) -> None:
    (worker,) = children(prguard.pid)
    prguard.proc.send_signal(sig)
    assert prguard.proc.wait(5) == 0
    assert gone(worker)
