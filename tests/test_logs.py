"""Logging: one line each, journald priorities when stderr is the journal, rate-limited
floods reported by kind, and every per-client line naming the client."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.processes import Helper
from lab.systemd_like import start
from prguard import logs
from prguard.client.session import Client, send_with_fds


def record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("prguard.broker", level, __file__, 1, msg, args, None)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], list[float]]]:
    lines: list[str] = []
    now = [1000.0]
    monkeypatch.setattr(logs, "_stderr", lines.append)
    monkeypatch.setattr("prguard.logs.time.monotonic", lambda: now[0])
    monkeypatch.setattr(logs, "_journal", False)
    yield lines, now


def test_a_flood_of_warnings_is_limited_and_reported_by_kind(
        captured: tuple[list[str], list[float]]) -> None:
    lines, now = captured
    handler = logs.StderrHandler("prguard")
    for i in range(700):
        handler.emit(record(logging.WARNING, "%s: connection refused: %s", f"pid {i}", "full"))
    for i in range(300):
        handler.emit(record(logging.INFO, "%s: closing connection: %s", f"pid {i}", "EOF"))
    assert len(lines) == logs.BURST
    now[0] += 2.0
    handler.emit(record(logging.ERROR, "the worker exited"))  # errors always get through
    assert lines[-2:] == [
        "prguard: rate limit: 800 log lines suppressed in 2.0 s: "
        "500 × '…: connection refused: …', 300 × '…: closing connection: …'",
        "prguard: the worker exited"]
    now[0] += 1.0  # three seconds since the bucket ran dry: 3 × RATE more lines
    for _ in range(300):
        handler.emit(record(logging.WARNING, "again"))
    assert lines.count("prguard: again") == int(3 * logs.RATE)


def test_a_flood_that_stopped_is_reported_by_the_periodic_flush(
        captured: tuple[list[str], list[float]]) -> None:
    lines, now = captured
    handler = logs.StderrHandler("prguard")
    for i in range(int(logs.BURST) + 7):
        handler.emit(record(logging.WARNING, "%s: Invalid CDB, closing socket.", i))
    now[0] += 0.5
    handler.flush_suppressed()
    assert lines[-1] == ("prguard: rate limit: 7 log lines suppressed in 0.5 s: "
                         "7 × '…: Invalid CDB, closing socket.'")
    handler.flush_suppressed()  # nothing new: nothing said
    assert len(lines) == logs.BURST + 1


def test_many_kinds_are_summed_after_the_first_few(
        captured: tuple[list[str], list[float]]) -> None:
    lines, _ = captured
    handler = logs.StderrHandler("prguard")
    for _ in range(int(logs.BURST)):
        handler.emit(record(logging.WARNING, "filler"))
    for n in range(8):
        for _ in range(10 - n):
            handler.emit(record(logging.WARNING, f"kind {n} %d", n))
    handler.flush_suppressed()
    assert lines[-1].endswith("6 × 'kind 4 …', 12 of 3 other kinds")


def test_journal_lines_carry_syslog_priorities(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setattr(logs, "_stderr", lines.append)
    monkeypatch.setattr(logs, "_journal", True)
    handler = logs.StderrHandler("prguard")
    for level in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG):
        handler.emit(record(level, "two\nlines"))
    assert lines == ["<3>two / lines", "<4>two / lines", "<6>two / lines", "<7>two / lines"]
    logs.line("prguard: Failed to bind socket")
    assert lines[-1] == "<3>prguard: Failed to bind socket"
    logs.line("prguard: UNIX socket path 'x' is too long\nPath must be less than 108 bytes")
    assert lines[-1] == ("<3>prguard: UNIX socket path 'x' is too long\n"
                         "<3>Path must be less than 108 bytes")


def test_journal_stream_must_match_stderr_itself(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    try:
        st = os.fstat(a.fileno())
        assert logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                                      a.fileno())
        # Inherited by a child whose stderr is something else: plain lines.
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                                          b.fileno())
        for value in ("", "x:y", f"{st.st_dev}", f"{st.st_dev}:{st.st_ino}:0"):
            assert not logs.stderr_is_journal({"JOURNAL_STREAM": value}, a.fileno())
        assert not logs.stderr_is_journal({}, a.fileno())
    finally:
        a.close()
        b.close()


def test_under_systemd_lines_reach_the_journal_with_priorities(
        sockdir: Path, fd_zoo: dict[str, int]) -> None:
    """Started like a unit whose stderr is journald's stream: a protocol error of a
    client is a warning naming the client, a lost worker an error."""
    service = start(sockdir, journal=True)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(service.socket_path)
            sock.recv(4)
            sock.sendall(bytes(4))
            send_with_fds(sock, b"\x12" + bytes(15), [fd_zoo["loop"]])  # INQUIRY
            assert sock.recv(200) == b""
        os.kill(service.worker(), signal.SIGKILL)
        assert service.proc.wait(10) == 1
        lines = service.stderr_text().splitlines()
        pid = os.getpid()
        assert lines == [f"<4>pid {pid} uid 0 gid 0: Invalid CDB, closing socket.",
                         "<3>the worker exited (killed by SIGKILL); exiting"]
    finally:
        service.close()


def test_per_client_lines_name_the_client(prguard: Helper, fd_zoo: dict[str, int]) -> None:
    """Plain lines otherwise, and the protocol warnings say which client they are about."""
    for fds in ([fd_zoo["loop"]], []):
        with Client(prguard.path) as client:
            send_with_fds(client.sock, b"\x12" + bytes(15), fds)
            assert client.sock.recv(200) == b""
    prguard.stop()
    assert prguard.stderr_text().splitlines() == [
        f"prguard: pid {os.getpid()} uid 0 gid 0: Invalid CDB, closing socket.",
        f"prguard: pid {os.getpid()} uid 0 gid 0: No file descriptor in request."]
