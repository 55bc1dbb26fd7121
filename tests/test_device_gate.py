"""The per-device gate: a stuck device holds only its own share of the worker's threads."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from prguard.shared.messages import SgIoRequest
from prguard.worker.device_gate import DeviceGate
from prguard.worker.handler import Job


def job(rdev: int, rid: int) -> Job:
    return Job(SgIoRequest(rid, b"\x5e" + bytes(15), b""), fd=99, rdev=rdev)


def test_a_stuck_device_cannot_take_every_thread() -> None:
    release = threading.Event()
    done: list[int] = []
    stuck_running = 0
    lock = threading.Lock()

    def execute(j: Job) -> None:
        nonlocal stuck_running
        if j.rdev == 1:
            with lock:
                stuck_running += 1
            release.wait(10)
        with lock:
            done.append(j.request.id)

    gate = DeviceGate(per_device=2, execute=execute)
    inbox: queue.Queue[Job] = queue.Queue()

    def receiver() -> None:  # as the worker's threads: take the next request, run it
        while True:
            gate.run(inbox.get())

    for _ in range(4):
        threading.Thread(target=receiver, daemon=True).start()
    for rid in range(10):
        inbox.put(job(1, rid))  # a LUN that never answers
    for rid in range(100, 110):
        inbox.put(job(2, rid))  # a healthy one
    deadline = time.monotonic() + 5
    while len(done) < 10:
        assert time.monotonic() < deadline, done
        time.sleep(0.01)
    assert sorted(done) == list(range(100, 110))
    assert stuck_running == 2  # at most per_device threads on the stuck LUN
    release.set()
    deadline = time.monotonic() + 5
    while len(done) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sorted(done) == list(range(10)) + list(range(100, 110))


def test_parked_jobs_run_in_order_on_the_freeing_thread() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[tuple[int, int]] = []  # (request id, thread)

    def execute(j: Job) -> None:
        if j.request.id == 1:
            started.set()
            release.wait(10)
        ran.append((j.request.id, threading.get_ident()))

    gate = DeviceGate(per_device=1, execute=execute)
    first = threading.Thread(target=gate.run, args=(job(5, 1),))
    first.start()
    assert started.wait(5)  # job 1 holds device 5's only slot
    for rid in (2, 3, 4):
        gate.run(job(5, rid))  # parked: returns at once, runs nothing here
    gate.run(job(6, 10))  # another device is not held up
    assert ran == [(10, threading.get_ident())]
    release.set()
    first.join(5)
    assert ran[1:] == [(rid, first.ident) for rid in (1, 2, 3, 4)]
    gate.run(job(5, 5))  # the device is free again: runs on the caller's thread
    assert ran[-1] == (5, threading.get_ident())


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        DeviceGate(per_device=0, execute=lambda j: None)
