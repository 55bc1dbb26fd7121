"""The watchdog: its decisions on their own, then the running pair, with worker threads
held in their system call as a hung SG_IO holds them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.systemd_like import Service, start
from lab.thread_hold import HeldThreads, threads
from prguard.broker.watchdog import PROBE_PERIOD, Watchdog, tick_period, watchdog_interval
from prguard.client.session import Client, pr_in_cdb
from prguard.shared.scsi import Status


def test_watchdog_enabled_as_sd_watchdog_enabled_says() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    for bad in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "x"},
                {"WATCHDOG_USEC": "5", "WATCHDOG_PID": "x"}):
        assert watchdog_interval(bad, 42) is None
    assert tick_period(None) == PROBE_PERIOD
    assert tick_period(30.0) == PROBE_PERIOD
    assert tick_period(3.0) == 1.0


def test_pings_while_probes_are_answered() -> None:
    dog = Watchdog(patience=35.0)
    verdict = dog.tick(0.0)
    assert (verdict.send_probe, verdict.ping) == (True, True)
    dog.sent(1, 0.0)
    assert dog.answered(1, 0.001) is None
    verdict = dog.tick(5.0)
    assert (verdict.send_probe, verdict.ping, verdict.news) == (True, True, None)


def test_a_probe_outstanding_within_the_worker_deadline_still_pings() -> None:
    """Threads busy with slow SG_IO calls come back within the SG_IO timeout."""
    dog = Watchdog(patience=35.0)
    dog.sent(1, 0.0)
    for now in (5.0, 20.0, 35.0):
        verdict = dog.tick(now)
        assert (verdict.send_probe, verdict.ping) == (False, True)
    assert dog.healthy


def test_no_answer_for_the_worker_deadline_stops_the_pings_once_said() -> None:
    dog = Watchdog(patience=35.0)
    dog.sent(1, 0.0)
    verdict = dog.tick(36.0)
    assert (verdict.send_probe, verdict.ping) == (False, False)
    assert verdict.news == ("the worker has not answered a liveness probe for 36 s: not "
                            "telling systemd it is alive (WatchdogSec= restarts the service)")
    assert not dog.healthy
    later = dog.tick(41.0)
    assert (later.ping, later.news) == (False, None)  # said once
    assert dog.answered(99, 42.0) is None  # not the probe in flight
    assert dog.answered(1, 42.0) == "the worker answers its liveness probe again, after 42 s"
    assert dog.healthy
    assert dog.tick(43.0).ping



# -- the running pair ----------------------------------------------------------------------

def pings(notifications: list[str]) -> int:
    return sum("WATCHDOG=1" in n.split("\n") for n in notifications)


@pytest.fixture
def watched(sockdir: Path, fd_zoo: dict[str, int]) -> Iterator[Service]:
    """WatchdogSec=3 (a report every second) and --sg-timeout=1: a probe unanswered for
    the worker deadline (1 + 5 s) means a worker that serves nobody."""
    service = start(sockdir, ("-u", "nobody", "-g", "nogroup", "--sg-timeout=1"),
                    watchdog_usec=3_000_000)
    yield service
    service.close()


def served(service: Service, fd: int) -> bool:
    with Client(service.socket_path, timeout=3) as client:
        return client.request(pr_in_cdb(), fd).status == Status.CHECK_CONDITION


def test_one_free_worker_thread_keeps_the_service_alive(watched: Service,
                                                         fd_zoo: dict[str, int]) -> None:
    """As when one device hangs the SG_IO of the threads it holds: the other threads
    take the probes, and systemd goes on hearing WATCHDOG=1."""
    assert pings(watched.collect(2.5)) >= 2
    busy = threads(watched.worker())[:-1]
    with HeldThreads(busy):
        during = watched.collect(9)  # longer than the worker deadline
        assert served(watched, fd_zoo["loop"])
    assert pings(during) >= 7
    assert all("WORKER NOT ANSWERING" not in n for n in during)
    assert watched.stop() == 0
    assert watched.stderr_text() == ""


def test_a_worker_none_of_whose_threads_answers_is_reported_and_not_pinged(
        watched: Service, fd_zoo: dict[str, int]) -> None:
    """Every thread held (as stuck in the kernel): WATCHDOG=1 stops once the probe is
    older than the worker deadline, and says so; released, the worker is healthy again."""
    with HeldThreads(threads(watched.worker())):
        before = watched.collect(5)  # within the worker deadline: still pinged
        after = watched.collect(5)  # past it
    assert pings(before) >= 3
    assert pings(after[2:]) == 0, after
    assert any("WORKER NOT ANSWERING" in n for n in after)
    resumed = watched.collect(3)
    assert pings(resumed) >= 2
    assert served(watched, fd_zoo["loop"])
    assert watched.stop() == 0
    assert re.fullmatch(
        r"prguard: the worker has not answered a liveness probe for [67] s: not telling "
        r"systemd it is alive \(WatchdogSec= restarts the service\)\n"
        r"prguard: the worker answers its liveness probe again, after \d+ s\n",
        watched.stderr_text()), watched.stderr_text()


def test_without_a_watchdog_nothing_is_pinged(sockdir: Path) -> None:
    service = start(sockdir)
    try:
        notes = service.collect(6)
        assert pings(notes) == 0 and any(n.startswith("STATUS=serving") for n in notes)
        assert service.stop() == 0
    finally:
        service.close()
