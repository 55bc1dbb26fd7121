"""Every error and exit path a confined process can take, run under its real seccomp
filter (lab/confined_paths.py): each ends as one line per report, with the expected
status, never killed by its own filter."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import prctl
import pytest

from lab.processes import REPO, Helper, children
from prguard.client.session import Client, pr_in_cdb
from prguard.shared import confined

AT = r" at confined_paths\.py:\d+ in \w+"
SURVIVABLE = [
    ("traceback-logged", r"prguard: handled with a traceback"),
    ("unraisable", rf"prguard: Exception ignored: Boom: in a finalizer{AT}"),
    ("warning", r"prguard: RuntimeWarning: a warning once confined \(confined_paths\.py:\d+\)"),
    ("bad-log-call", r"prguard: unformattable log line '%d requests' % \('not a number',\): "
                     r"%d format: a real number is required, not str"),
]
FATAL = [
    ("uncaught", rf"prguard: internal error: Boom: nobody caught this{AT}; exiting"),
    ("interrupt", rf"prguard: internal error: KeyboardInterrupt{AT}; exiting"),
]
#: The broker's event loop does not go on after a bug in one of its handlers.
BROKER_FATAL = [
    ("event-loop", rf"prguard: internal error: Boom: in a loop handler{AT}; exiting"),
]
BROKER_ONLY = [
    # An unclosed socket's ResourceWarning formats the socket's repr, which asks for
    # its peer's address, shown here with warnings enabled (as PYTHONWARNINGS would).
    ("leaked-socket", "\n".join(
        [r"prguard: ResourceWarning: unclosed <socket\.socket fd=\d+, family=1, type=1, "
         r"proto=0> \(confined_paths\.py:\d+\)"] * 2)),
]


def run_path(role: str, path: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.confined_paths", role, path], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env=None if env is None else dict(os.environ, **env))


@pytest.mark.parametrize("role", ["broker", "worker"])
@pytest.mark.parametrize(("path", "expected"), SURVIVABLE)
def test_survivable_paths_log_one_line_and_go_on(role: str, path: str, expected: str) -> None:
    result = run_path(role, path)
    assert result.returncode == 0, result
    assert re.fullmatch(expected + "\n", result.stderr), result.stderr


@pytest.mark.parametrize("role", ["broker", "worker"])
@pytest.mark.parametrize(("path", "expected"), FATAL)
def test_uncaught_exceptions_end_the_process_with_one_line(role: str, path: str,
                                                           expected: str) -> None:
    """...and exit 70 by os._exit: atexit handlers (one opening a file is registered)
    and the interpreter's finalisation never run."""
    result = run_path(role, path)
    assert result.returncode == confined.INTERNAL_ERROR, result
    assert re.fullmatch(expected + "\n", result.stderr), result.stderr


@pytest.mark.parametrize(("path", "expected"), BROKER_FATAL)
def test_a_bug_in_a_broker_loop_handler_ends_the_broker_with_one_line(
        path: str, expected: str) -> None:
    result = run_path("broker", path)
    assert result.returncode == confined.INTERNAL_ERROR, result
    assert re.fullmatch(expected + "\n", result.stderr), result.stderr


@pytest.mark.parametrize(("path", "expected"), BROKER_ONLY)
def test_broker_event_loop_and_socket_paths(path: str, expected: str) -> None:
    result = run_path("broker", path)
    assert result.returncode == 0, result
    assert re.fullmatch(expected + "\n", result.stderr), result.stderr


def test_the_metrics_file_is_rewritten_under_the_broker_filter(tmp_path: Path) -> None:
    """prometheus-client renders and the file is swapped into place, once confined."""
    path = tmp_path / "prguard.prom"
    result = run_path("broker", "metrics", {"PRGUARD_TEST_METRICS_FILE": str(path)})
    assert (result.returncode, result.stderr) == (0, "")
    text = path.read_text()
    assert text.endswith("# 2\n")
    assert ('prguard_requests_total{command="pr_in",outcome="good",sense_key="",'
            'service_action="read_keys"} 3.0\n') in text


def test_a_worker_thread_that_dies_ends_the_worker_with_one_line() -> None:
    result = run_path("worker", "thread")
    assert result.returncode == confined.INTERNAL_ERROR, result
    assert re.fullmatch(rf"prguard: internal error in thread sgio-0: Boom: in a worker "
                        rf"thread{AT}; exiting\n", result.stderr), result.stderr


@pytest.mark.parametrize("role", ["broker", "worker"])
def test_all_survivable_paths_in_one_process(role: str) -> None:
    result = run_path(role, "all-survivable")
    assert result.returncode == 0, result
    assert len(result.stderr.splitlines()) == len(SURVIVABLE) + (
        sum(e.count("\n") + 1 for _, e in BROKER_ONLY) if role == "broker" else 0)


def test_without_the_confined_hooks_a_traceback_kills_the_process() -> None:
    """The paths above can fail: the same traceback, with CPython's own linecache, dies
    of the filter (SIGSYS) while reading the source file."""
    script = ("import sys, linecache, traceback\n"
              "from prguard.shared import sandbox, confined\n"
              "saved = linecache.updatecache\n"
              "sandbox.lock_down(sandbox.load_seccomp_policy('worker'), {})\n"
              "linecache.updatecache = saved\n"
              "try:\n    raise ValueError('x')\n"
              "except ValueError:\n    traceback.format_exc()\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            timeout=60)
    assert result.returncode == -signal.SIGSYS


# -- the same, in the running pair --------------------------------------------------------

def subreaper_wait(pid: int, timeout: float = 10.0) -> int:
    """Exit status of an orphan reparented to this process (PR_SET_CHILD_SUBREAPER)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    raise TimeoutError(f"{pid} did not exit")


@pytest.fixture
def subreaper() -> Iterator[None]:
    prctl.set_child_subreaper(1)
    yield
    prctl.set_child_subreaper(0)


def test_worker_whose_broker_is_killed_exits_one_with_a_line(
        subreaper: None, prguard: Helper) -> None:
    """Broker gone: the worker (now this test's child) ends itself, exit 1, never SIGSYS."""
    (worker,) = children(prguard.pid)
    prguard.proc.kill()
    prguard.proc.wait(5)
    assert subreaper_wait(worker) == 1
    assert prguard.stderr_text() == "prguard: worker: the broker died; exiting\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_worker_ignores_stop_signals_while_its_broker_lives(prguard: Helper,
                                                            fd_zoo: dict[str, int],
                                                            sig: int) -> None:
    (worker,) = children(prguard.pid)
    os.kill(worker, sig)
    with Client(prguard.path) as client:
        assert client.request(pr_in_cdb(), fd_zoo["loop"]).status == 2  # still served
    assert children(prguard.pid) == [worker]
    assert prguard.stop() == 0
    assert prguard.stderr_text() == ""


def test_a_stop_signal_storm_during_shutdown_still_exits_zero(prguard: Helper) -> None:
    """Signals keep arriving while the broker closes its event loop (which restores
    the default actions): they are blocked by then, the exit status stays 0."""
    pid = prguard.pid
    for _ in range(200):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
    assert prguard.proc.wait(10) == 0
    assert prguard.stderr_text() == ""


def test_an_exception_is_described_in_one_line() -> None:
    try:
        raise ValueError("x\ny")
    except ValueError as exc:
        text = confined.describe(exc)
    assert re.fullmatch(r"ValueError: x y at test_confined\.py:\d+ in "
                        r"test_an_exception_is_described_in_one_line", text)
    assert confined.describe(None) == "unknown error"
