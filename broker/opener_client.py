"""The broker's end of the path opener's channel: send a map's fd, get its paths back.

The opener answers requests in order, each with MapRefused, or MapPaths followed by as
many PathFd datagrams (one fd each) as it says. Every fd it sends is checked before the
broker keeps it: a block device, open write-only, whose device number is one of the live
paths the MapPaths listed, each at most once. Anything else (an fd that is not what it
claims, a datagram out of turn, an undecodable one, EOF) means the opener cannot be
trusted: it is lost, as a worker is, and the broker stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import socket
import stat
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from prguard.broker.loop import EPOLLIN, EPOLLOUT, Loop
from prguard.shared import fdcheck, fdpass
from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    Malformed,
    MapPaths,
    MapRefused,
    MapRequest,
    PathFd,
    PathState,
    decode,
)

log = logging.getLogger("prguard.broker")


@dataclass(frozen=True)
class OpenedMap:
    """A map prguard serves: its uuid, its paths, and the fds newly opened (now ours)."""

    uuid: str
    paths: tuple[PathState, ...]
    fds: dict[int, int] = field(default_factory=dict)  #: rdev -> fd


@dataclass(frozen=True)
class NotAMap:
    reason: str
    #: certainly no device-mapper device: served as any other disk
    not_device_mapper: bool = False


@dataclass(frozen=True)
class OpenerFailed:
    """No answer will come: the opener is lost, or did not answer in time."""

    reason: str


MapAnswer = OpenedMap | NotAMap | OpenerFailed
OnMapAnswer = Callable[[MapAnswer], None]


@dataclass
class _Collecting:
    request_id: int
    paths: MapPaths
    on_answer: OnMapAnswer | None  #: None: nobody waits any more (fds are closed)
    fds: dict[int, int] = field(default_factory=dict)


def check_path_fd(fd: int, rdev: int, paths: MapPaths, have: dict[int, int]) -> str | None:
    """Why the opener's fd for path `rdev` is not acceptable, or None."""
    live = {p.rdev for p in paths.paths if p.live}
    if rdev not in live:
        return f"an fd for {os.major(rdev)}:{os.minor(rdev)}, not a live path of the map"
    if rdev in have:
        return "two fds for one path"
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        st = fdcheck.fstat(fd)  # fstat(2) itself: os.fstat takes a path (newfstatat)
    except OSError as exc:
        return f"an fd that cannot be inspected ({exc.strerror})"
    if not stat.S_ISBLK(st.mode) or st.rdev != rdev:
        return f"an fd that is not block device {os.major(rdev)}:{os.minor(rdev)}"
    if flags & os.O_PATH or flags & os.O_ACCMODE != os.O_WRONLY:
        return "a path fd not open write-only"
    return None


class OpenerClient:
    def __init__(self, channel: socket.socket, loop: Loop, deadline: float) -> None:
        channel.setblocking(False)
        self._channel = channel
        self._fd = channel.fileno()
        self._loop = loop
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, OnMapAnswer] = {}
        self._deadlines = loop.deadlines(deadline, self._expired)
        #: requests the channel had no room for yet: (payload, map fd (not ours), id)
        self._backlog: list[tuple[bytes, int, int]] = []
        self._collecting: _Collecting | None = None
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] = lambda reason: None

    def start(self) -> None:
        self._loop.register(self._fd, EPOLLIN, self._on_event)

    def ask(self, map_fd: int, have: tuple[int, ...], on_answer: OnMapAnswer) -> None:
        """Send the map's fd (which stays the caller's) with the paths already held.
        `on_answer` is called exactly once, from the loop or from this call."""
        if self.lost is not None:
            on_answer(OpenerFailed(self.lost))
            return
        request_id = next(self._ids)
        self._last_id = request_id
        payload = MapRequest(request_id, have).encode()
        self._pending[request_id] = on_answer
        self._deadlines.add(request_id, self._loop.time())
        if self._backlog or not self._try_send(payload, map_fd):
            if not self._backlog:
                self._loop.modify(self._fd, EPOLLIN | EPOLLOUT)
            self._backlog.append((payload, map_fd, request_id))

    def _try_send(self, payload: bytes, map_fd: int) -> bool:
        try:
            fdpass.send_message(self._channel, payload, map_fd)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._lose(f"cannot write to the path opener: {exc.strerror}")
        return True

    def _flush_backlog(self) -> None:
        while self._backlog and self.lost is None:
            payload, map_fd, request_id = self._backlog[0]
            # Given up on meanwhile: its fd may be closed, its number another file's.
            if request_id in self._pending and not self._try_send(payload, map_fd):
                return
            if self._backlog:
                self._backlog.pop(0)
        if self.lost is None:
            self._loop.modify(self._fd, EPOLLIN)

    def _on_event(self, events: int) -> None:
        if events & EPOLLOUT:
            self._flush_backlog()
        if events & ~EPOLLOUT:
            self._receive()

    def _receive(self) -> None:
        try:
            got = fdpass.recv_message(self._channel)
        except BlockingIOError:
            return
        except (OSError, ChannelError) as exc:
            self._lose(f"path opener channel failed: {exc}")
            return
        if got is None:
            self._lose("the path opener exited")
            return
        datagram, fd = got
        try:
            message = decode(datagram)
        except ChannelError as exc:
            if fd is not None:
                os.close(fd)
            self._lose(f"undecodable answer from the path opener: {exc}")
            return
        if isinstance(message, PathFd) and fd is not None:
            self._path_fd(message, fd)
            return
        if fd is not None:
            os.close(fd)
            self._lose(f"the path opener sent an fd with {type(message).__name__}")
            return
        if self._collecting is not None:
            self._lose(f"the path opener sent {type(message).__name__} among path fds")
        elif isinstance(message, MapPaths):
            self._map_paths(message)
        elif isinstance(message, MapRefused):
            on_answer = self._take(message.id)
            if on_answer is not None:
                on_answer(NotAMap(message.reason, message.not_device_mapper))
        elif isinstance(message, Malformed):
            self._lose(f"the path opener could not decode a request: {message.reason}")
        else:
            self._lose(f"unexpected {type(message).__name__} from the path opener")

    def _take(self, request_id: int) -> OnMapAnswer | None:
        """The waiting callback of an answer; None for a late one. An answer to nothing
        ever asked loses the opener."""
        on_answer = self._pending.pop(request_id, None)
        if on_answer is not None:
            self._deadlines.discard(request_id)
        elif not 0 < request_id <= self._last_id:
            self._lose(f"an answer to request {request_id}, never asked")
        return on_answer

    def _map_paths(self, message: MapPaths) -> None:
        on_answer = self._take(message.id)
        if self.lost is not None:
            return
        collecting = _Collecting(message.id, message, on_answer)
        if message.fds == 0:
            self._deliver(collecting)
        else:
            self._collecting = collecting

    def _path_fd(self, message: PathFd, fd: int) -> None:
        collecting = self._collecting
        if collecting is None or message.id != collecting.request_id:
            os.close(fd)
            self._lose("the path opener sent a path fd out of turn")
            return
        problem = check_path_fd(fd, message.rdev, collecting.paths, collecting.fds)
        if problem is not None:
            os.close(fd)
            self._lose(f"the path opener sent {problem}")
            return
        collecting.fds[message.rdev] = fd
        if len(collecting.fds) == collecting.paths.fds:
            self._collecting = None
            self._deliver(collecting)

    def _deliver(self, collecting: _Collecting) -> None:
        if collecting.on_answer is None:
            log.debug("late answer %d from the path opener", collecting.request_id)
            fdpass.close_all(list(collecting.fds.values()))
            return
        paths = collecting.paths
        collecting.on_answer(OpenedMap(paths.uuid, paths.paths, collecting.fds))

    def _expired(self, key: Hashable) -> None:
        on_answer = self._pending.pop(key, None)  # type: ignore[call-overload]
        if on_answer is not None:
            on_answer(OpenerFailed(f"no answer from the path opener within "
                                   f"{self._deadlines.duration:g} s"))

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self._loop.unregister(self._fd)
        self._backlog.clear()
        if self._collecting is not None:
            fdpass.close_all(list(self._collecting.fds.values()))
            if self._collecting.on_answer is not None:
                self._collecting.on_answer(OpenerFailed(reason))
            self._collecting = None
        pending, self._pending = self._pending, {}
        for request_id, on_answer in pending.items():
            self._deadlines.discard(request_id)
            on_answer(OpenerFailed(reason))
        self.on_lost(reason)

    def close(self) -> None:
        """Orderly end: the opener sees EOF with its parent alive and exits 0. shutdown,
        not close: the channel's fd number is pinned."""
        if self.lost is None:
            self._loop.unregister(self._fd)
        with contextlib.suppress(OSError):  # the opener is gone already
            self._channel.shutdown(socket.SHUT_RDWR)
