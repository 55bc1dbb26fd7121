"""A bounded pool of SG_IO threads with a per-device cap.

A LUN that stops answering can hold at most `per_device` threads; requests for other
devices still find a free thread. Threads are started before the seccomp filter is
loaded (no clone afterwards) and live as long as the process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from worker.handler import Job


class Scheduler:
    def __init__(self, threads: int, per_device: int,
                 execute: Callable[[Job], None]) -> None:
        if threads < 1 or per_device < 1:
            raise ValueError("need at least one thread and one slot per device")
        self._execute = execute
        self._per_device = per_device
        self._lock = threading.Lock()
        self._ready: deque[Job] = deque()
        self._parked: dict[int, deque[Job]] = {}
        self._running: dict[int, int] = {}
        self._wakeup = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._loop, name=f"sgio-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            busy = self._running.get(job.rdev, 0) + self._count_ready(job.rdev)
            if busy >= self._per_device:
                self._parked.setdefault(job.rdev, deque()).append(job)
            else:
                self._ready.append(job)
                self._wakeup.notify()

    def _count_ready(self, rdev: int) -> int:
        return sum(1 for job in self._ready if job.rdev == rdev)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._ready:
                    self._wakeup.wait()
                job = self._ready.popleft()
                self._running[job.rdev] = self._running.get(job.rdev, 0) + 1
            try:
                self._execute(job)
            finally:
                with self._lock:
                    self._running[job.rdev] -= 1
                    if not self._running[job.rdev]:
                        del self._running[job.rdev]
                    parked = self._parked.get(job.rdev)
                    if parked:
                        self._ready.append(parked.popleft())
                        if not parked:
                            del self._parked[job.rdev]
                        self._wakeup.notify()
