"""The broker's end of the channel: send a request with its fd, await the matching answer.

Answers may come back in any order; each carries the id of its request. An answer that
names no pending request, or a Malformed answer, means the two processes disagree about
the protocol: that is fatal for the pair (`lost` is set), as is EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket

from prguard.broker.readiness import wake
from prguard.shared import fdpass
from prguard.shared.errors import ChannelError
from prguard.shared.messages import Malformed, Ready, Refused, SgIoRequest, SgIoResult, decode

log = logging.getLogger("prguard.broker")

Answer = SgIoResult | Refused


class WorkerLost(Exception):
    """The worker is gone or broke the channel protocol; `reason` says which."""


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
    def __init__(self, channel: socket.socket) -> None:
        channel.setblocking(False)
        self._channel = channel
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self.lost: asyncio.Future[str] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        loop.add_reader(self._channel.fileno(), self._on_readable)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def sg_io(self, cdb: bytes, data: bytes, fd: int) -> Answer:
        """Forward one validated request. The fd is duplicated into the datagram; the
        caller still owns (and closes) its own."""
        if self.lost is None or self.lost.done():
            raise WorkerLost("worker not running")
        request = SgIoRequest(next(self._ids), cdb, data)
        self._last_id = request.id
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = answer
        try:
            await self._send(request.encode(), fd)
            return await answer
        finally:
            self._pending.pop(request.id, None)
            if answer.done() and not answer.cancelled():
                # Failed while sending: _lose() also failed this future, which nobody
                # will await; unretrieved, it would be reported when collected.
                answer.exception()

    async def _send(self, payload: bytes, fd: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                fdpass.send_message(self._channel, payload, fd)
                return
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._channel.fileno(), wake, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._channel.fileno())
            except OSError as exc:
                self._lose(f"cannot write to the worker: {exc.strerror}")
                raise WorkerLost("worker channel failed") from None

    def _on_readable(self) -> None:
        try:
            got = fdpass.recv_message(self._channel)
        except BlockingIOError:
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
        if isinstance(message, (SgIoResult, Refused)) and message.id in self._pending:
            future = self._pending[message.id]
            if not future.done():
                future.set_result(message)
        elif isinstance(message, (SgIoResult, Refused)) and 0 < message.id <= self._last_id:
            log.debug("late answer %d for a request nobody waits for", message.id)
        elif isinstance(message, Malformed):
            self._lose(f"the worker could not decode a request: {message.reason}")
        else:
            self._lose(f"unexpected {type(message).__name__} from the worker")

    def _lose(self, reason: str) -> None:
        if self.lost is None or self.lost.done():
            return
        asyncio.get_running_loop().remove_reader(self._channel.fileno())
        self.lost.set_result(reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerLost(reason))

    def close(self) -> None:
        """Orderly end: the worker sees EOF with its parent alive and exits 0. shutdown,
        not close: the channel's fd number is pinned (shared/fdpin.py)."""
        if self.lost is not None and not self.lost.done():
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
        with contextlib.suppress(OSError):  # the worker is gone already
            self._channel.shutdown(socket.SHUT_RDWR)
