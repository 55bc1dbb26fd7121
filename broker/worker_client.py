"""The broker's end of the channel: send a request with its fd, hand each answer back.

Answers may come back in any order; each carries the id of its request. An answer that
names no pending request, or a Malformed answer, means the two processes disagree about
the protocol: that is fatal for the pair (`lost` is set), as is EOF. A request the
worker has not answered within the worker deadline is given up on (its outcome is
unknown) and its late answer, if one comes, is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from prguard.broker.loop import EPOLLIN, EPOLLOUT, Loop
from prguard.shared import fdpass
from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    Alive,
    Forget,
    Identified,
    Identify,
    Malformed,
    PolicyReloaded,
    Probe,
    Ready,
    Refused,
    ReloadPolicy,
    SgIoRequest,
    SgIoResult,
    decode,
)

log = logging.getLogger("prguard.broker")


@dataclass(frozen=True)
class WorkerLost:
    """No answer will come: the worker is gone or broke the channel protocol."""

    reason: str


@dataclass(frozen=True)
class NoAnswer:
    """The worker did not answer within the deadline."""

    seconds: float


Answer = SgIoResult | Refused | WorkerLost | NoAnswer
OnAnswer = Callable[[Answer], None]
#: The answers to Identify and ReloadPolicy.
Reply = Identified | PolicyReloaded | WorkerLost | NoAnswer
OnReply = Callable[[Reply], None]
#: "no fd with this datagram" in the backlog
NO_FD = -1


def await_ready(channel: socket.socket, timeout: float) -> int | None:
    """Block until the worker reports it has dropped privileges; its pid, or None if it
    exited first (it has then said why on stderr) or sent anything else."""
    channel.settimeout(timeout)
    try:
        got = fdpass.recv_message(channel)
    except (OSError, ChannelError):
        return None
    if got is None or got[1] is not None:
        return None
    try:
        message = decode(got[0])
    except ChannelError:
        return None
    return message.pid if isinstance(message, Ready) else None


class WorkerClient:
    def __init__(self, channel: socket.socket, loop: Loop, deadline: float) -> None:
        channel.setblocking(False)
        self._channel = channel
        self._fd = channel.fileno()
        self._loop = loop
        self._ids = itertools.count(1)
        self._last_id = 0
        #: request id -> (who gets the answer, the message classes that answer it)
        self._pending: dict[int, tuple[Callable[..., None], tuple[type, ...]]] = {}
        self._deadlines = loop.deadlines(deadline, self._expired)
        #: requests the channel had no room for yet: (payload, fd or NO_FD, id, whether
        #: the fd is ours to close once sent)
        self._backlog: list[tuple[bytes, int, int, bool]] = []
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] = lambda reason: None
        #: the id of the last liveness probe sent, and who hears its answer
        self._last_probe = 0
        self.on_alive: Callable[[int], None] = lambda probe_id: None

    def start(self) -> None:
        self._loop.register(self._fd, EPOLLIN, self._on_event)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def forward(self, cdb: bytes, data: bytes, fd: int, on_answer: OnAnswer,
                connection: int = 0, owned: bool = True) -> None:
        """Send one validated request with `fd`, which this call takes over (it is
        closed once it is in the datagram) unless not `owned` (a multipath map's path fd,
        which the broker keeps). `on_answer` is called exactly once, from the loop,
        unless the request is cancelled. `connection` is the client's, as introduced
        with `identify` (0 when clients are not identified)."""
        request_id = next(self._ids)
        self._send(SgIoRequest(request_id, cdb, data, connection).encode(), fd, request_id,
                   on_answer, (SgIoResult, Refused), owned)

    def identify(self, connection: int, pid: int, uid: int, gid: int, pidfd: int | None,
                 on_reply: OnReply) -> None:
        """Introduce a client connection (the worker reads who it is); `pidfd`, if any,
        is taken over. `on_reply` gets Identified once the worker knows the client."""
        request_id = next(self._ids)
        self._send(Identify(request_id, connection, pid, uid, gid).encode(),
                   NO_FD if pidfd is None else pidfd, request_id, on_reply, (Identified,))

    def forget(self, connection: int) -> None:
        """A connection with no request in flight is gone (no answer comes)."""
        if self.lost is None:
            self._send(Forget(connection).encode(), NO_FD, 0, None, ())

    def reload_policy(self, on_reply: OnReply) -> None:
        request_id = next(self._ids)
        self._send(ReloadPolicy(request_id).encode(), NO_FD, request_id, on_reply,
                   (PolicyReloaded,))

    def _send(self, payload: bytes, fd: int, request_id: int,
              on_answer: Callable[..., None] | None, answers: tuple[type, ...],
              owned: bool = True) -> None:
        owned = owned and fd != NO_FD
        if self.lost is not None:
            if owned:
                os.close(fd)
            if on_answer is not None:
                on_answer(WorkerLost(self.lost))
            return
        if on_answer is not None:
            self._last_id = request_id
            self._pending[request_id] = (on_answer, answers)
            self._deadlines.add(request_id, self._loop.time())
        if self._backlog or not self._try_send(payload, fd, owned):
            if not self._backlog:
                self._loop.modify(self._fd, EPOLLIN | EPOLLOUT)
            self._backlog.append((payload, fd, request_id, owned))

    def _try_send(self, payload: bytes, fd: int, owned: bool) -> bool:
        """Send and close our `fd` (if `owned`); False if the channel is full (nothing
        sent, the fd still ours). A failed channel loses the worker."""
        try:
            fdpass.send_message(self._channel, payload, None if fd == NO_FD else fd)
        except BlockingIOError:
            return False
        except OSError as exc:
            if self._backlog and self._backlog[0][1] == fd and self._backlog[0][0] is payload:
                self._backlog.pop(0)
            if owned:
                os.close(fd)
            self._lose(f"cannot write to the worker: {exc.strerror}")
            return True
        if owned:
            os.close(fd)
        return True

    def _flush_backlog(self) -> None:
        while self._backlog and self.lost is None:
            payload, fd, request_id, owned = self._backlog[0]
            if request_id and request_id not in self._pending:  # given up on meanwhile
                if owned:
                    os.close(fd)
            elif not self._try_send(payload, fd, owned):
                return
            if self._backlog and self._backlog[0][0] is payload:
                self._backlog.pop(0)
        if self.lost is None:
            self._loop.modify(self._fd, EPOLLIN)

    def probe(self) -> int | None:
        """Send a liveness probe (no fd); its id, or None if the channel has no room now
        or the worker is lost. Its answer goes to `on_alive`."""
        if self.lost is not None:
            return None
        probe_id = next(self._ids)
        try:
            fdpass.send_message(self._channel, Probe(probe_id).encode())
        except OSError:  # full now; or the worker is gone, which reading sees at once
            return None
        self._last_probe = probe_id
        return probe_id

    def cancel(self, request_id: int) -> None:
        self._pending.pop(request_id, None)
        self._deadlines.discard(request_id)

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
        except ConnectionResetError:  # it closed with datagrams of ours unread (a probe)
            self._lose("the worker exited")
            return
        except (OSError, ChannelError) as exc:
            self._lose(f"worker channel failed: {exc}")
            return
        if got is None:
            self._lose("the worker exited")
            return
        datagram, fd = got
        if fd is not None:
            fdpass.close_all([fd])
            self._lose("the worker sent an fd")
            return
        try:
            message = decode(datagram)
        except ChannelError as exc:
            self._lose(f"undecodable answer from the worker: {exc}")
            return
        if isinstance(message, (SgIoResult, Refused, Identified, PolicyReloaded)):
            waiting = self._pending.pop(message.id, None)
            if waiting is not None:
                on_answer, answers = waiting
                self._deadlines.discard(message.id)
                if not isinstance(message, answers):
                    self._lose(f"{type(message).__name__} answers a request it does not "
                               "belong to")
                    return
                on_answer(message)
            elif 0 < message.id <= self._last_id:
                log.debug("late answer %d for a request nobody waits for", message.id)
            else:
                self._lose(f"unexpected {type(message).__name__} from the worker")
        elif isinstance(message, Alive) and 0 < message.id <= self._last_probe:
            self.on_alive(message.id)
        elif isinstance(message, Malformed):
            self._lose(f"the worker could not decode a request: {message.reason}")
        else:
            self._lose(f"unexpected {type(message).__name__} from the worker")

    def _expired(self, key: Hashable) -> None:
        waiting = self._pending.pop(key, None)  # type: ignore[call-overload]
        if waiting is not None:
            waiting[0](NoAnswer(self._deadlines.duration))

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self._loop.unregister(self._fd)
        for _, fd, _, owned in self._backlog:
            if owned:
                os.close(fd)
        self._backlog.clear()
        pending, self._pending = self._pending, {}
        for request_id, (on_answer, _) in pending.items():
            self._deadlines.discard(request_id)
            on_answer(WorkerLost(reason))
        self.on_lost(reason)

    def close(self) -> None:
        """Orderly end: the worker sees EOF with its parent alive and exits 0. shutdown,
        not close: the channel's fd number is pinned (shared/fdpin.py)."""
        if self.lost is None:
            self._loop.unregister(self._fd)
        with contextlib.suppress(OSError):  # the worker is gone already
            self._channel.shutdown(socket.SHUT_RDWR)

