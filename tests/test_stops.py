"""Stops as systemd does them: whatever process gets the SIGTERM, in whatever order,
the pair finishes and answers the requests in flight and exits 0."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.systemd_like import start, unit_setting
from prguard.client.session import Client, pr_in_cdb
from prguard.shared.errors import QemuProtocolError
from prguard.shared.scsi import Sense, Status

#: What SG_IO on a loop device answers (EINVAL from the loop driver): the device was
#: reached. LUN COMMUNICATION FAILURE instead would mean the request was lost.
REACHED = (Status.CHECK_CONDITION, Sense.INVALID_FIELD.fixed_format())
#: Stops to run in the race test (make soak runs more).
ROUNDS = int(os.environ.get("PRGUARD_STOP_ROUNDS", "200"))

#: (KillMode=, who gets SIGTERM in which order)
STOPS = [
    ("control-group", ("group",)),
    ("control-group", ("main", "worker")),
    ("control-group", ("worker", "main")),
    ("mixed", ("main",)),
]


@pytest.fixture
def device(loop_disk: str) -> Iterator[int]:
    fd = os.open(loop_disk, os.O_RDWR)
    yield fd
    os.close(fd)


def test_the_unit_ships_kill_mode_mixed() -> None:
    """SIGTERM to the broker only; the worker ends when the broker closes the channel
    (and whatever would be left gets SIGKILL once the broker has exited)."""
    assert unit_setting("KillMode") == "mixed"


class Hammer:
    """Clients sending PR IN requests back to back until the connection closes."""

    def __init__(self, path: str, device: int, clients: int = 4) -> None:
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(path, device))
                         for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, path: str, device: int) -> None:
        try:
            with Client(path) as client:
                while True:
                    reply = client.request(pr_in_cdb(), device)
                    self._count("reached" if (reply.status, reply.sense) == REACHED
                                else f"status {reply.status} sense {reply.sense[:16].hex()}")
        except (QemuProtocolError, OSError):
            self._count("closed")

    def _count(self, what: str) -> None:
        with self._lock:
            self.answers[what] += 1

    def join(self) -> Counter[str]:
        for thread in self._threads:
            thread.join(20)
        return self.answers


@pytest.mark.parametrize(("kill_mode", "order"), STOPS)
def test_requests_held_in_flight_are_answered_then_exit_zero(
        sockdir: Path, device: int, kill_mode: str, order: tuple[str, ...]) -> None:
    """The worker is held (SIGSTOP) with requests of several clients inside it while the
    stop signals arrive; released, it answers them all, and both processes exit 0."""
    service = start(sockdir)
    try:
        worker = service.worker()
        os.kill(worker, signal.SIGSTOP)
        results: list[tuple[int, bytes]] = []

        def one_request() -> None:
            with Client(service.socket_path) as client:
                reply = client.request(pr_in_cdb(), device)
                results.append((reply.status, reply.sense))

        clients = [threading.Thread(target=one_request) for _ in range(6)]
        for thread in clients:
            thread.start()
        time.sleep(0.5)  # all six read by the broker and forwarded to the held worker

        def release() -> None:
            time.sleep(0.3)  # the signals have landed; the requests are still inside
            os.kill(worker, signal.SIGCONT)

        code = service.stop(kill_mode, order, between=release)
        for thread in clients:
            thread.join(10)
        assert code == 0, service.stderr_text()
        assert results == [REACHED] * 6
        assert "STOPPING=1" in service.wait_notification("STOPPING=1")
        assert service.stderr_text() == ""
    finally:
        service.close()


def test_hundreds_of_stops_under_load_all_end_cleanly(sockdir: Path, device: int) -> None:
    """Clients hammering while the stop signals land, in every order and KillMode:
    every stop exits 0, and no request is answered as lost (LUN COMMUNICATION FAILURE)."""
    outcomes: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for _, (kill_mode, order) in zip(range(ROUNDS), itertools.cycle(STOPS), strict=False):
        service = start(sockdir)
        try:
            hammer = Hammer(service.socket_path, device)
            time.sleep(0.02)
            code = service.stop(kill_mode, order)
            answers += hammer.join()
            errors = service.stderr_text()
            outcomes[f"{kill_mode} {'+'.join(order)}: exit {code}"
                     + (f", stderr {errors!r}" if errors else "")] += 1
        finally:
            service.close()
    assert set(outcomes) == {f"{mode} {'+'.join(order)}: exit 0" for mode, order in STOPS}, \
        outcomes
    assert set(answers) <= {"reached", "closed"}, answers
    assert answers["reached"] > ROUNDS  # requests were in flight all along
