"""The broker's socket shell: accept QEMU clients and drive one ServerConnection each.

All parsing is in shared.qemu_protocol and all decisions in shared.rules; this file
only moves bytes, fds and replies. One request at a time per connection; any number of
connections at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from dataclasses import dataclass

from prguard.broker.limits import Admission, Limits
from prguard.broker.readiness import wake
from prguard.broker.trace import Tracer
from prguard.broker.worker_client import WorkerClient, WorkerLost
from prguard.shared import fdcheck, fdpass
from prguard.shared.errors import QemuProtocolError
from prguard.shared.messages import Refused, SgIoRequest, SgIoResult, decode
from prguard.shared.qemu_protocol import (
    NEED_DATA,
    Closed,
    FeaturesAgreed,
    PrReply,
    PrRequest,
    ReadSpec,
    ServerConnection,
)
from prguard.shared.rules import FdFacts, FdKind, check_request
from prguard.shared.scsi import Opcode, Sense, Status, service_action

log = logging.getLogger("prguard.broker")

#: QEMU's own reader takes up to 16 fds per message; more means MSG_CTRUNC.
CLIENT_MAX_FDS = 16
CLIENT_ANCILLARY = socket.CMSG_SPACE(CLIENT_MAX_FDS * 4)
UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """SO_PEERCRED of a client: who opened the connection."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 UCRED.size))
    return Peer(pid, uid, gid)


def cdb_text(cdb: bytes) -> str:
    name = "PR IN" if cdb[0] == Opcode.PERSISTENT_RESERVE_IN else "PR OUT"
    return f"{name} sa {service_action(cdb):#04x} len {int.from_bytes(cdb[7:9], 'big')}"


def sense_text(reply: PrReply) -> str:
    if reply.status != Status.CHECK_CONDITION:
        return "-"
    return f"{reply.sense[2] & 0xF:02x}/{reply.sense[12]:02x}/{reply.sense[13]:02x}"


def warm_up(sysfs_block_fd: int) -> None:
    """Run the request path once without a client: nothing may be imported or touched for
    the first time once the seccomp filter is loaded (results are not needed)."""
    facts = fdcheck.inspect_fd(2, sysfs_block_fd)
    conn = ServerConnection()
    conn.initiate()
    conn.receive_data(bytes(4))
    conn.next_event()
    cdb = b"\x5e" + bytes(6) + b"\x00\x18" + bytes(7)
    conn.receive_data(cdb, [2])
    request = conn.next_event()
    assert isinstance(request, PrRequest)
    check_request(cdb, facts)
    reply = PrReply(Status.CHECK_CONDITION, Sense.IO_ERROR.fixed_format())
    conn.send_reply(reply)
    cdb_text(cdb)
    sense_text(reply)
    decode(SgIoRequest(1, cdb, b"").encode())
    decode(SgIoResult(1, 0, bytes(96), b"").encode())
    try:
        raise QemuProtocolError("warm-up", None)
    except QemuProtocolError as exc:
        str(exc)


class ReplyTimeout(Exception):
    """A client left its reply unread past the deadline."""


class ClientStream:
    """Non-blocking reads sized by the protocol, with or without a control buffer."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def read(self, spec: ReadSpec) -> tuple[bytes, list[int], bool]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not spec.with_fds:
                    # No control buffer: the kernel discards any fds sent with these bytes.
                    return self.sock.recv(spec.max_bytes), [], False
                data, anc, flags, _ = self.sock.recvmsg(spec.max_bytes, CLIENT_ANCILLARY,
                                                        socket.MSG_CMSG_CLOEXEC)
                return data, fdpass.fds_from_ancillary(anc), bool(flags & socket.MSG_CTRUNC)
            except (BlockingIOError, InterruptedError):
                readable: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self.sock.fileno(), wake, readable)
                try:
                    await readable
                finally:
                    loop.remove_reader(self.sock.fileno())

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)


#: How long accepting pauses when the process is out of fds (EMFILE/ENFILE): long enough
#: not to spin, short enough that a client freeing a slot is soon noticed.
ACCEPT_BACKOFF = 0.2


class Broker:
    """Serves QEMU clients until told to stop or until the worker is lost."""

    def __init__(self, worker: WorkerClient, sysfs_block_fd: int, tracer: Tracer,
                 limits: Limits) -> None:
        self._worker = worker
        self._sysfs_block_fd = sysfs_block_fd
        self._tracer = tracer
        self._limits = limits
        self._admission = Admission(limits)
        self._clients: set[asyncio.Task[None]] = set()
        self._active_requests = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._listener: socket.socket | None = None
        self._accepting = False
        #: connections that have not completed their handshake, oldest first
        self._handshaking: dict[asyncio.Task[None], Peer] = {}
        #: connections closed to make room, whose slot is already released
        self._evicted: set[asyncio.Task[None]] = set()

    # -- accepting ---------------------------------------------------------------------

    def listen(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._resume_accepting()

    def _resume_accepting(self) -> None:
        if self._listener is not None and not self._accepting and not self._stopping:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        """Connections wait in the backlog (then get EAGAIN) instead of being spun on."""
        if self._listener is not None and self._accepting:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._accepting = False

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            log.error("accept failed: %s; pausing %.1f s", exc.strerror, ACCEPT_BACKOFF)
            self._pause_accepting()
            asyncio.get_running_loop().call_later(ACCEPT_BACKOFF, self._resume_accepting)
            return
        try:
            peer = peer_of(sock)
        except OSError:
            sock.close()
            return
        if self._admission.full and not self._admission.at_peer_limit(peer.pid):
            self._evict_one_handshaking()
        refusal = self._admission.admit(peer.pid)
        if refusal is not None:
            log.warning("%s: connection refused: %s", peer, refusal)
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve_client(sock, peer))
        self._clients.add(task)
        self._handshaking[task] = peer
        task.add_done_callback(self._clients.discard)
        # A task cancelled before its first step never enters _serve_client's `finally`.
        task.add_done_callback(lambda _: sock.close())
        task.add_done_callback(self._evicted.discard)
        if self._admission.full and not self._handshaking:
            log.warning("%d connections open: not accepting until one closes",
                        self._admission.total)
            self._pause_accepting()

    def _evict_one_handshaking(self) -> None:
        """All slots taken: the oldest connection that has not even answered the
        handshake makes room (QEMU answers at once; a flood of silent connections must
        not lock a real client out until their deadlines pass)."""
        for task, peer in self._handshaking.items():
            del self._handshaking[task]
            self._evicted.add(task)
            self._admission.release(peer.pid)
            task.cancel()
            log.info("%s: closing a connection still in its handshake to make room", peer)
            return

    def _handshake_done(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handshaking.pop(task, None)
        if self._admission.full and not self._handshaking:
            self._pause_accepting()

    def _release(self, peer: Peer) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handshaking.pop(task, None)
            if task in self._evicted:
                self._evicted.discard(task)
                return
        self._admission.release(peer.pid)
        if not self._admission.full:
            self._resume_accepting()

    def stop_accepting(self) -> None:
        """No new clients; requests already read are finished and answered. The
        listener stays open (its fd is pinned): connections wait in its backlog until the
        process ends."""
        self._pause_accepting()
        self._stopping = True

    async def drain(self) -> None:
        """Wait until no request is between its last byte read and its reply sent."""
        await self._idle.wait()

    async def cancel_clients(self) -> None:
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    # -- one client --------------------------------------------------------------------

    async def _serve_client(self, sock: socket.socket, peer: Peer) -> None:
        stream = ClientStream(sock)
        conn = ServerConnection()
        reason = "closed by the client"
        loop = asyncio.get_running_loop()
        started: float | None = None  # when the message now in progress began
        self._tracer.emit("prguard_client_connect", pid=peer.pid, uid=peer.uid, gid=peer.gid)
        log.debug("client connected: %s", peer)
        try:
            await self._write(stream, conn.initiate())
            while not self._stopping:
                event = conn.next_event()
                if event is NEED_DATA:
                    if not conn.mid_message:
                        started = None
                    elif started is None:
                        started = loop.time()
                    deadline = None if started is None else (
                        started + self._limits.message_deadline)
                    try:
                        if deadline is None:  # between messages: no deadline to keep
                            data, fds, truncated = await stream.read(conn.wanted())
                        else:
                            async with asyncio.timeout_at(deadline):
                                data, fds, truncated = await stream.read(conn.wanted())
                    except TimeoutError:
                        raise QemuProtocolError(
                            f"message not completed within {self._limits.message_deadline:g} s"
                        ) from None
                    conn.receive_data(data, fds, truncated)
                elif isinstance(event, FeaturesAgreed):
                    self._handshake_done()
                elif isinstance(event, Closed):
                    break
                elif isinstance(event, PrRequest):
                    await self._serve_request(stream, conn, event, peer)
        except QemuProtocolError as exc:
            reason = exc.reason
            if exc.message:
                log.warning("%s: %s", peer, exc.message)
            log.info("%s: closing connection: %s", peer, exc.reason)
        except asyncio.CancelledError:
            reason = "closed by prguard"
            raise
        except (OSError, ReplyTimeout) as exc:
            reason = str(exc) if isinstance(exc, ReplyTimeout) else f"socket error: {exc.strerror}"
            log.info("%s: closing connection: %s", peer, reason)
        finally:
            fdpass.close_all(conn.take_fds())
            sock.close()
            self._release(peer)
            self._tracer.emit("prguard_client_close", pid=peer.pid, reason=repr(reason))

    async def _write(self, stream: ClientStream, data: bytes) -> None:
        try:  # the common case: the whole reply fits in the socket buffer at once
            sent = stream.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
        try:
            async with asyncio.timeout(self._limits.reply_deadline):
                await stream.write(data)
        except TimeoutError:
            raise ReplyTimeout(f"reply not read within {self._limits.reply_deadline:g} s"
                               ) from None

    async def _serve_request(self, stream: ClientStream, conn: ServerConnection,
                             request: PrRequest, peer: Peer) -> None:
        self._active_requests += 1
        self._idle.clear()
        try:
            try:
                if self._tracer.on("prguard_request"):
                    self._tracer.emit("prguard_request", pid=peer.pid,
                                      opcode=hex(request.cdb[0]),
                                      sa=hex(service_action(request.cdb)),
                                      length=request.transfer_length)
                reply = await self._answer(request, peer)
            finally:
                os.close(request.fd)
            if self._tracer.on("prguard_reply"):
                self._tracer.emit("prguard_reply", pid=peer.pid, status=hex(reply.status),
                                  sense=sense_text(reply), size=len(reply.data))
            await self._write(stream, conn.send_reply(reply))
        finally:
            self._active_requests -= 1
            if not self._active_requests:
                self._idle.set()

    async def _answer(self, request: PrRequest, peer: Peer) -> PrReply:
        try:
            facts = fdcheck.inspect_fd(request.fd, self._sysfs_block_fd)
        except OSError:
            facts = FdFacts(FdKind.OTHER, read_only=True)
        verdict = check_request(request.cdb, facts)
        if verdict is not None:
            reply = PrReply(verdict.status, verdict.sense_bytes)
            if self._tracer.on("prguard_refused"):
                self._tracer.emit("prguard_refused", pid=peer.pid, reason=repr(verdict.reason),
                                  status=hex(reply.status), sense=str(verdict.sense))
            if log.isEnabledFor(logging.INFO):  # the request path: format only if shown
                log.info("%s: %s -> %s (%s)", peer, cdb_text(request.cdb), verdict.sense,
                         verdict.reason)
            return reply
        try:
            async with asyncio.timeout(self._limits.worker_deadline):
                answer = await self._worker.sg_io(request.cdb, request.parameter_list,
                                                  request.fd)
        except WorkerLost as exc:
            log.error("%s: %s: outcome unknown, worker lost (%s)", peer,
                      cdb_text(request.cdb), exc)
            return PrReply(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE.fixed_format())
        except TimeoutError:
            log.error("%s: %s: no answer from the worker within %g s; outcome unknown", peer,
                      cdb_text(request.cdb), self._limits.worker_deadline)
            return PrReply(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE.fixed_format())
        if isinstance(answer, Refused):
            log.warning("%s: %s refused by the worker: %s", peer, cdb_text(request.cdb),
                        answer.reason)
            return PrReply(answer.status, answer.sense)
        pr_in = request.opcode is Opcode.PERSISTENT_RESERVE_IN
        if answer.data and (not pr_in or len(answer.data) > request.transfer_length
                            or answer.status != Status.GOOD):
            log.error("%s: worker answered %d data bytes for %s; not passed on", peer,
                      len(answer.data), cdb_text(request.cdb))
            return PrReply(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE.fixed_format())
        reply = PrReply(answer.status, answer.sense, answer.data)
        if log.isEnabledFor(logging.INFO):
            log.info("%s: %s -> status %#04x sense %s, %d bytes", peer, cdb_text(request.cdb),
                     reply.status, sense_text(reply), len(reply.data))
        return reply
