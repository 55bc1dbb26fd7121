"""The broker's event loop: one epoll set, level-triggered, registrations that stay.

Each watched fd has one handler, called with the epoll event mask. A socket stays
registered for as long as it is open: no registration per read (the connection shell
stops watching a client only while its request is in flight, and only if that client
sends something meanwhile). Deadlines come in queues of one duration each, so a queue's
oldest entry is always the next to expire: adding, removing and finding the next
deadline cost O(1), with no heap and no timer object per request.

No fd is created here after start-up: the epoll fd and the signal wake-up socket exist
before the seccomp filter is loaded.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import time
from collections.abc import Callable, Hashable

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
Handler = Callable[[int], None]
#: Events taken from the kernel per epoll_wait (more wait for the next turn).
MAX_EVENTS = 64


class Deadlines:
    """Entries that all expire `duration` seconds after they were added (or at a time
    given when adding, never earlier than the ones before it)."""

    def __init__(self, duration: float, on_expiry: Callable[[Hashable], None]) -> None:
        self.duration = duration
        self._on_expiry = on_expiry
        self._due: dict[Hashable, float] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Hashable, start: float) -> None:
        """Due `duration` after `start` (now, or the moment the thing began)."""
        self._due.pop(key, None)
        self._due[key] = start + self.duration

    def discard(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def expire(self, now: float) -> None:
        while self._due:
            key, due = next(iter(self._due.items()))
            if due > now:
                return
            del self._due[key]
            self._on_expiry(key)


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._deadlines: list[Deadlines] = []
        #: each queue's dict, oldest first: the nearest deadline is read from these
        #: directly (no method call per queue per turn)
        self._due_maps: list[dict[Hashable, float]] = []
        self._stopped = False
        self._signal_r, self._signal_w = socket.socketpair()
        self._signals: list[int] = []
        self.time = time.monotonic

    # -- fds -----------------------------------------------------------------------------

    def register(self, fd: int, events: int, handler: Handler) -> None:
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def deadlines(self, duration: float, on_expiry: Callable[[Hashable], None]) -> Deadlines:
        queue = Deadlines(duration, on_expiry)
        self._deadlines.append(queue)
        self._due_maps.append(queue._due)
        return queue

    # -- signals -------------------------------------------------------------------------

    def catch_signals(self, signals: tuple[int, ...], on_signal: Callable[[int], None]
                      ) -> None:
        """Signals become calls from the loop. The C handler writes the signal number to
        the wake-up socket (so a signal during epoll_wait ends the wait); the Python
        handler only notes it."""
        for sock in (self._signal_r, self._signal_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._signal_w.fileno())
        for sig in signals:
            signal.signal(sig, lambda signum, frame: self._signals.append(signum))

        def on_wakeup(events: int) -> None:
            with contextlib.suppress(BlockingIOError):  # another turn took the bytes
                self._signal_r.recv(64)
            while self._signals:
                on_signal(self._signals.pop(0))

        self.register(self._signal_r.fileno(), EPOLLIN, on_wakeup)

    def wakeup_fd(self) -> int:
        """The fd the C signal handler writes to (the broker's policy names it)."""
        return self._signal_w.fileno()

    # -- running -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped = True

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve events until stop() is called or `until()` holds after a turn."""
        self._stopped = False
        epoll_poll = self._epoll.poll
        handlers = self._handlers
        queues = self._deadlines
        due_maps = self._due_maps
        clock = self.time
        while not self._stopped and (until is None or not until()):
            nearest: float | None = None
            for due_map in due_maps:
                if due_map:  # its first entry is its oldest (Deadlines.add)
                    due = next(iter(due_map.values()))
                    if nearest is None or due < nearest:
                        nearest = due
            timeout = -1.0 if nearest is None else max(nearest - clock(), 0.0)
            for fd, events in epoll_poll(timeout, MAX_EVENTS):
                handler = handlers.get(fd)
                if handler is not None:  # unregistered by an earlier handler this turn
                    handler(events)
            if nearest is not None and clock() >= nearest:
                now = clock()
                for queue in queues:
                    queue.expire(now)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._epoll.close()
        self._signal_r.close()
        self._signal_w.close()
