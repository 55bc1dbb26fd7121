"""A helper that answers what a test scripts: the replies a loop device cannot give (GOOD
with data, RESERVATION CONFLICT, a hang-up, silence), for testing prguard-client. It
speaks the protocol through ServerConnection, one connection, in a thread."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from prguard.shared.fdpass import ANCILLARY_SPACE, close_all, fds_from_ancillary
from prguard.shared.qemu_protocol import NEED_DATA, Closed, PrReply, PrRequest, ServerConnection
from prguard.shared.scsi import ZERO_SENSE, Status


@dataclass(frozen=True)
class Seen:
    """What the scripted helper received: the request, and facts about its fd."""

    cdb: bytes
    parameter_list: bytes
    rdev: int
    access_mode: int


@dataclass
class ScriptedHelper:
    """Serves one connection with ServerConnection; answers `reply` (data cut to the
    allocation length, as the helpers do), hangs up if it is None, or stays silent."""

    path: str
    reply: PrReply | None
    silent: bool = False
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        proto = ServerConnection()
        with conn:
            conn.sendall(proto.initiate())
            try:
                self._requests(conn, proto)
            finally:
                close_all(proto.take_fds())

    def _requests(self, conn: socket.socket, proto: ServerConnection) -> None:
        while True:
            event = proto.next_event()
            if event is NEED_DATA:
                spec = proto.wanted()
                data, ancillary, _, _ = conn.recvmsg(
                    spec.max_bytes, ANCILLARY_SPACE if spec.with_fds else 0)
                proto.receive_data(data, fds_from_ancillary(ancillary))
            elif isinstance(event, PrRequest):
                self.seen.append(Seen(event.cdb, event.parameter_list,
                                      os.fstat(event.fd).st_rdev,
                                      fcntl.fcntl(event.fd, fcntl.F_GETFL) & os.O_ACCMODE))
                os.close(event.fd)
                if self.reply is None:
                    return
                if self.silent:
                    conn.recv(1)  # until the client gives up
                    return
                reply = self.reply
                if reply.data:
                    reply = PrReply(reply.status, reply.sense,
                                    reply.data[:event.transfer_length])
                conn.sendall(proto.send_reply(reply))
            elif isinstance(event, Closed):
                return

    def close(self) -> None:
        """Wait for the connection to end (the client must have connected)."""
        self._thread.join(10)
        self._listener.close()
        assert not self._thread.is_alive()


#: A test's way to start one: serve(reply, silent=False).
Serve = Callable[..., ScriptedHelper]


def good(data: bytes = b"") -> PrReply:
    return PrReply(Status.GOOD, ZERO_SENSE, data)
