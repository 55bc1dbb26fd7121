"""The per-device cap on SG_IO calls, for threads that each receive and run requests.

Every worker thread receives from the channel itself and runs what it receives: no
hand-off between threads on the common path. A device already running `per_device`
calls gets further jobs parked; the thread that finishes one of its calls runs the next
parked job, so a LUN that stops answering holds at most `per_device` threads and the
other threads go on receiving and serving other devices.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from prguard.worker.handler import Job


class DeviceGate:
    def __init__(self, per_device: int, execute: Callable[[Job], None]) -> None:
        if per_device < 1:
            raise ValueError("need at least one slot per device")
        self._per_device = per_device
        self._execute = execute
        self._lock = threading.Lock()
        self._running: dict[int, int] = {}
        self._parked: dict[int, deque[Job]] = {}

    def run(self, job: Job) -> None:
        """Run `job` now, then whatever got parked for its device meanwhile; or park it
        and return at once if its device is at its cap."""
        with self._lock:
            if self._running.get(job.rdev, 0) >= self._per_device:
                self._parked.setdefault(job.rdev, deque()).append(job)
                return
            self._running[job.rdev] = self._running.get(job.rdev, 0) + 1
        while True:
            self._execute(job)
            with self._lock:
                waiting = self._parked.get(job.rdev)
                if waiting:
                    job = waiting.popleft()
                    if not waiting:
                        del self._parked[job.rdev]
                    continue
                self._running[job.rdev] -= 1
                if not self._running[job.rdev]:
                    del self._running[job.rdev]
                return
