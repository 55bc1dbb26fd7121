"""The broker's accept shell: take QEMU connections as admission allows, and keep what
all connections share (the loop, the deadline queues, the request handling).

Who may connect and who makes room is decided in broker/admission.py; one connection is
broker/connection.py; what a request comes to is broker/requests.py.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
from collections.abc import Hashable

from prguard.broker.admission import Admission, Admitted, Peer, PeerLog, tenant_of
from prguard.broker.connection import Connection
from prguard.broker.limits import Limits
from prguard.broker.loop import EPOLLIN, Loop
from prguard.broker.multipath import Multipath
from prguard.broker.peer_pidfd import PeerGone, peer_pidfd
from prguard.broker.requests import Requests, cdb_text, sense_text
from prguard.broker.stats import Stats
from prguard.broker.trace import Tracer
from prguard.broker.worker_client import Reply, WorkerClient
from prguard.shared import fdcheck
from prguard.shared.errors import QemuProtocolError
from prguard.shared.messages import Identified, Refused, SgIoRequest, SgIoResult, decode
from prguard.shared.qemu_protocol import PrRequest, ServerConnection
from prguard.shared.rules import check_request
from prguard.shared.scsi import PrReply, Sense, Status

log = logging.getLogger("prguard.broker")

UCRED = struct.Struct("3i")
#: How long accepting pauses when the process is out of fds (EMFILE/ENFILE): long enough
#: not to spin, short enough that a client freeing a slot is soon noticed.
ACCEPT_BACKOFF = 0.2


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 UCRED.size))
    return Peer(pid, uid, gid)


def warm_up() -> None:
    """Run the request path once without a client: nothing may be imported or touched for
    the first time once the seccomp filter is loaded (results are not needed)."""
    facts = fdcheck.inspect_fd(2, with_sysfs=False)
    conn = ServerConnection()
    conn.initiate()
    conn.receive_data(bytes(4))
    conn.next_event()
    conn.wanted()
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
    decode(SgIoResult(1, reply).encode())
    decode(Refused(1, 2, bytes(96), "warm-up").encode())
    try:
        raise QemuProtocolError("warm-up", None)
    except QemuProtocolError as exc:
        str(exc)


class Server:
    """Serves QEMU clients on the loop until told to stop."""

    def __init__(self, loop: Loop, worker: WorkerClient, tracer: Tracer, limits: Limits,
                 stats: Stats, multipath: Multipath | None = None) -> None:
        self.loop = loop
        self.tracer = tracer
        self.stats = stats
        self.requests = Requests(worker, tracer, stats, loop.time, multipath)
        self.message_deadlines = loop.deadlines(limits.message_deadline, self._message_overdue)
        self.reply_deadlines = loop.deadlines(limits.reply_deadline, self._reply_overdue)
        self._backoff = loop.deadlines(ACCEPT_BACKOFF, self._backoff_over)
        self._admission = Admission(limits)
        self._peer_log = PeerLog()
        self._connections: set[Connection] = set()
        #: requests between their last byte read and their reply sent
        self.in_flight = 0
        self.stopping = False
        self._listener: socket.socket | None = None
        self._accepting = False
        #: introduce each client to the worker before serving it (audit, policy)
        self.identify_clients = False
        self._client_ids = itertools.count(1)
        self._worker = worker

    # -- accepting -----------------------------------------------------------------------

    def listen(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._sync_accepting()

    def _sync_accepting(self) -> None:
        """Watch the listener unless stopping or backing off after EMFILE. Admission
        lets a newcomer in (by making room) or refuses it at once, so nobody is left
        waiting in the backlog behind a flood."""
        want = (self._listener is not None and not self.stopping
                and "accept" not in self._backoff)
        if want == self._accepting:
            return
        assert self._listener is not None
        if want:
            self.loop.register(self._listener.fileno(), EPOLLIN, self._accept)
        else:
            self.loop.unregister(self._listener.fileno())
        self._accepting = want

    def _accept(self, events: int) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            log.error("accept failed: %s; pausing %.1f s", exc.strerror, ACCEPT_BACKOFF)
            self._backoff.add("accept", self.loop.time())
            self._sync_accepting()
            return
        try:
            peer = peer_of(sock)
        except OSError:
            sock.close()
            return
        connection = Connection(self, sock, peer)
        decision = self._admission.admit(connection, peer)
        if not isinstance(decision, Admitted):
            self.stats.connections_refused[decision.limit] += 1
            self._tell(peer, "%s: connection refused: %s", peer, decision.reason)
            sock.close()
            return
        self.stats.connections_accepted += 1
        if isinstance(decision.evict, Connection):
            self.stats.connections_evicted += 1
            assert decision.evicted_peer is not None
            self._tell(decision.evicted_peer, "%s: closing one of its connections to make "
                       "room for %s (%d open, the limit)", decision.evicted_peer, peer,
                       self._admission.total)
            decision.evict.close("closed by prguard to make room")
        self._connections.add(connection)
        if self.identify_clients:
            self._introduce(connection)
        else:
            connection.start()

    def _tell(self, about: Peer, message: str, *args: object) -> None:
        """A warning about a client's uid, at most one per uid every few seconds (a
        flood must not flood the log either): later ones are counted and told with the
        next."""
        held_back = self._peer_log.allow(tenant_of(about), self.loop.time())
        if held_back is None:
            return
        if held_back:
            message += f" ({held_back} more such lines about its uid held back)"
        log.warning(message, *args)

    def _introduce(self, connection: Connection) -> None:
        """The worker reads who the client is (from a pidfd of it where the kernel gives
        one); the connection is served once it has."""
        connection.client = next(self._client_ids)
        peer = connection.peer
        pid = peer.pid
        try:
            pidfd = peer_pidfd(connection.sock)
        except PeerGone:  # nothing left to read: no pid the worker could be misled by
            pidfd, pid = None, 0
        except OSError as exc:
            log.warning("%s: no pidfd of the client: %s", peer, exc.strerror)
            pidfd = None

        def identified(reply: Reply) -> None:
            if not isinstance(reply, Identified):
                connection.close("the worker could not identify the client")
                return
            if connection.closed:  # it went away meanwhile
                self._worker.forget(connection.client)
                return
            connection.start()

        self._worker.identify(connection.client, pid, peer.uid, peer.gid, pidfd, identified)

    def forget(self, connection: Connection) -> None:
        """The worker may forget a closed connection's client."""
        self._worker.forget(connection.client)

    def _backoff_over(self, key: Hashable) -> None:
        self._sync_accepting()

    def handshake_done(self, connection: Connection) -> None:
        self._admission.handshake_done(connection)

    def busy(self, connection: Connection, busy: bool) -> None:
        """A request was read on the connection (True), or its reply sent (False): an
        idle connection makes room before one with a request in flight."""
        self._admission.busy(connection, busy)

    def release(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._admission.release(connection)

    def _message_overdue(self, key: Hashable) -> None:
        assert isinstance(key, Connection)
        key.message_overdue()

    def _reply_overdue(self, key: Hashable) -> None:
        assert isinstance(key, Connection)
        key.reply_overdue()

    # -- stopping ------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """No new clients or requests; requests already read are finished and answered.
        The listener stays open (its fd is pinned, shared/fdpin.py): connections wait in
        its backlog until the process ends."""
        self.stopping = True
        self._sync_accepting()

    @property
    def clients(self) -> int:
        """Client processes connected."""
        return self._admission.peers

    @property
    def connections(self) -> int:
        return self._admission.total

    def close_all(self) -> None:
        for connection in list(self._connections):
            connection.close("closed by prguard")
