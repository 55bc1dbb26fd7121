"""One QEMU connection: reads sized by the protocol, a deadline per message and per
reply, one request at a time.

All parsing is in shared.qemu_protocol and all decisions in broker/requests.py; this
file only moves bytes and fds. The socket stays registered with the loop for reading
from accept to close; only a client that sends while its request is in flight (QEMU
never does) is unwatched until its reply is out, so that level-triggered epoll does not
spin on it.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING

from prguard.broker.admission import Peer
from prguard.broker.loop import EPOLLIN, EPOLLOUT
from prguard.shared import fdpass
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import (
    NEED_DATA,
    Closed,
    FeaturesAgreed,
    PrRequest,
    ServerConnection,
)

if TYPE_CHECKING:
    from prguard.broker.server import Server

log = logging.getLogger("prguard.broker")

#: QEMU's own reader takes up to 16 fds per message; more means MSG_CTRUNC.
CLIENT_MAX_FDS = 16
CLIENT_ANCILLARY = socket.CMSG_SPACE(CLIENT_MAX_FDS * 4)
# Plain ints: socket's flags are IntFlag members, whose operators run Python code on
# every request.
_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_CTRUNC = int(socket.MSG_CTRUNC)
_GONE = int(select.EPOLLHUP | select.EPOLLERR)


class Connection:
    __slots__ = (
        "awaiting",
        "busy",
        "client",
        "closed",
        "fd",
        "forget_pending",
        "parked",
        "peer",
        "protocol",
        "server",
        "sock",
        "started",
        "unsent",
    )

    def __init__(self, server: Server, sock: socket.socket, peer: Peer) -> None:
        sock.setblocking(False)
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.protocol = ServerConnection()
        #: a request is between its last byte read and its reply sent
        self.busy = False
        #: not watched for reading until the reply is out
        self.parked = False
        #: reply bytes the socket had no room for yet
        self.unsent = b""
        self.closed = False
        #: registered with the loop (identified, when clients are)
        self.started = False
        #: the connection as the worker knows it (0: clients are not identified)
        self.client = 0
        #: a request is with the worker (its answer not back yet)
        self.awaiting = False
        #: closed while a request was with the worker: forgotten once the answer is back
        self.forget_pending = False

    def start(self) -> None:
        self.started = True
        server = self.server
        server.tracer.emit("prguard_client_connect", pid=self.peer.pid, uid=self.peer.uid,
                           gid=self.peer.gid)
        log.debug("client connected: %s", self.peer)
        server.loop.register(self.fd, EPOLLIN, self.on_event)
        server.message_deadlines.add(self, server.loop.time())  # the handshake counts from connect
        self._write(self.protocol.initiate())

    # -- events --------------------------------------------------------------------------

    def on_event(self, events: int) -> None:
        if self.unsent:
            if events & EPOLLOUT or events & ~EPOLLIN:  # room again, or an error to see
                self._write(self.unsent)
            return
        if self.busy:  # sent something while its request is in flight: later
            if events & _GONE:  # reported even when unwatched: the client is gone
                self.close("closed by the client")
                return
            self.server.loop.modify(self.fd, 0)
            self.parked = True
            return
        if self.server.stopping:
            self.close("closed by prguard")
            return
        self._read()

    def _read(self) -> None:
        protocol = self.protocol
        sock = self.sock
        try:
            while True:
                spec = protocol.wanted()
                if spec.with_fds:
                    data, ancillary, flags, _ = sock.recvmsg(spec.max_bytes, CLIENT_ANCILLARY,
                                                             _CMSG_CLOEXEC)
                    protocol.receive_data(data, fdpass.fds_from_ancillary(ancillary)
                                          if ancillary else (), bool(flags & _CTRUNC))
                else:
                    # No control buffer: the kernel discards any fds sent with these bytes.
                    protocol.receive_data(sock.recv(spec.max_bytes))
                event = protocol.next_event()
                while event is not NEED_DATA:
                    if isinstance(event, PrRequest):
                        self.server.message_deadlines.discard(self)
                        self._request(event)
                        return
                    if isinstance(event, FeaturesAgreed):
                        self.server.handshake_done(self)
                    elif isinstance(event, Closed):
                        self.close("closed by the client")
                        return
                    event = protocol.next_event()
                if not protocol.mid_message:  # between messages: wait, with no deadline
                    self.server.message_deadlines.discard(self)
                    return
                if self not in self.server.message_deadlines:
                    self.server.message_deadlines.add(self, self.server.loop.time())
        except (BlockingIOError, InterruptedError):
            if protocol.mid_message and self not in self.server.message_deadlines:
                self.server.message_deadlines.add(self, self.server.loop.time())
        except QemuProtocolError as exc:
            self.server.stats.protocol_closes += 1
            if exc.message:
                log.warning("%s: %s", self.peer, exc.message)
            self._close_logged(exc.reason)
        except OSError as exc:
            self._close_logged(f"socket error: {exc.strerror}")

    def _request(self, request: PrRequest) -> None:
        self.busy = True
        self.awaiting = True
        self.server.in_flight += 1
        self.server.busy(self, True)
        self.server.requests.answer(self.protocol, request, self.peer, self._on_reply,
                                    self.client)

    def _on_reply(self, wire: bytes) -> None:
        self.awaiting = False
        if self.closed:
            if self.forget_pending:
                self.forget_pending = False
                self.server.forget(self)
            return
        self._write(wire)

    # -- writing -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:  # the common case: the whole reply fits in the socket buffer at once
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._close_logged(f"socket error: {exc.strerror}")
            return
        server = self.server
        if sent == len(data):
            if self.unsent:
                self.unsent = b""
                server.reply_deadlines.discard(self)
                server.loop.modify(self.fd, 0 if self.parked else EPOLLIN)
            if self.busy:
                self._reply_done()
            return
        if not self.unsent:
            server.reply_deadlines.add(self, server.loop.time())
            server.loop.modify(self.fd, EPOLLOUT)
        self.unsent = data[sent:]

    def _reply_done(self) -> None:
        self.busy = False
        self.server.in_flight -= 1
        self.server.busy(self, False)
        if self.parked:
            self.parked = False
            self.server.loop.modify(self.fd, EPOLLIN)

    # -- closing -------------------------------------------------------------------------

    def message_overdue(self) -> None:
        self.server.stats.deadline_closes["message"] += 1
        self._close_logged("message not completed within "
                           f"{self.server.message_deadlines.duration:g} s")

    def reply_overdue(self) -> None:
        self.server.stats.deadline_closes["reply"] += 1
        self._close_logged(f"reply not read within {self.server.reply_deadlines.duration:g} s")

    def _close_logged(self, reason: str) -> None:
        log.info("%s: closing connection: %s", self.peer, reason)
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        server = self.server
        server.loop.unregister(self.fd)
        server.message_deadlines.discard(self)
        server.reply_deadlines.discard(self)
        if self.busy:
            self.busy = False
            server.in_flight -= 1
        if self.client and self.started:
            if self.awaiting:  # the worker still uses the client's identity
                self.forget_pending = True
            else:
                server.forget(self)
        fdpass.close_all(self.protocol.take_fds())
        self.sock.close()
        server.release(self)
        server.tracer.emit("prguard_client_close", pid=self.peer.pid, reason=repr(reason))
