"""The SG_IO pool: bounded, and a stuck device holds only its own share of threads."""

from __future__ import annotations

import threading
import time

from shared.messages import SgIoRequest
from worker.handler import Job
from worker.scheduler import Scheduler


def job(rdev: int, rid: int) -> Job:
    return Job(SgIoRequest(rid, b"\x5e" + bytes(15), b""), fd=99, rdev=rdev)


def test_a_stuck_device_cannot_take_every_thread() -> None:
    release = threading.Event()
    done: list[int] = []
    running_stuck = 0
    lock = threading.Lock()

    def execute(j: Job) -> None:
        nonlocal running_stuck
        if j.rdev == 1:
            with lock:
                running_stuck += 1
            release.wait(10)
        with lock:
            done.append(j.request.id)

    scheduler = Scheduler(threads=4, per_device=2, execute=execute)
    scheduler.start()
    for rid in range(10):
        scheduler.submit(job(1, rid))  # a LUN that never answers
    for rid in range(100, 110):
        scheduler.submit(job(2, rid))  # a healthy one
    deadline = time.monotonic() + 5
    while len(done) < 10:
        assert time.monotonic() < deadline, done
        time.sleep(0.01)
    assert sorted(done) == list(range(100, 110))
    assert running_stuck == 2  # at most per_device threads on the stuck LUN
    release.set()
    deadline = time.monotonic() + 5
    while len(done) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sorted(done) == list(range(10)) + list(range(100, 110))
