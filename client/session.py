"""The QEMU side of the helper protocol over a real socket: the one client that
prguard-client, the tests and the lab use.

Framing and every check on what the helper sends are `ClientConnection`'s (sans-I/O, in
shared/qemu_protocol.py); this file only moves bytes and the device fd. Like QEMU's
pr-manager-helper it connects, answers the 4-byte handshake asking for no feature, then
sends one request at a time: the 16-byte CDB with the fd attached (SCM_RIGHTS), then
for PR OUT the parameter list in a write of its own.

Failures are exceptions, each meaning one thing: `ConnectError` (an OSError) when
connect() fails, `TimeoutError` when the helper is silent for longer than the timeout,
another `OSError` when the socket fails under us (a helper that hangs up on a request
is seen as EPIPE or ECONNRESET), and `QemuProtocolError` when the helper closes the
connection without a complete answer or sends something that is not one.
"""

from __future__ import annotations

import array
import contextlib
import socket
from collections.abc import Sequence

from prguard.client import encode
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import (
    NEED_DATA,
    ClientConnection,
    Event,
    FeaturesOffered,
    PrReply,
)

#: Bytes asked of recv() at a time: a whole reply (104 + 8192) fits.
_RECV_SIZE = 16384


def pr_in_cdb(action: int = 0, alloc: int = 24) -> bytes:
    """A PR IN CDB with any service action and allocation length that fit their fields,
    valid or not: what a guest may send, for probing a helper."""
    return encode.pr_in_cdb_bytes(action, alloc)


def pr_out_cdb(action: int = 0, length: int = 24, scope_type: int = 0) -> bytes:
    """A PR OUT CDB with any service action, parameter list length (bytes 7-8, where
    qemu-pr-helper reads it) and scope/type byte that fit their fields."""
    return encode.pr_out_cdb_bytes(action, length, scope_type)


def send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> int:
    """One sendmsg() of `data` with `fds` attached; returns the bytes sent."""
    ancillary = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                 if fds else [])
    return sock.sendmsg([data], ancillary)


class ConnectError(OSError):
    """connect() to the helper's socket failed; errno and strerror are connect()'s."""


class Client:
    """A connection to a helper, handshake done: `features` is what the helper offered.

    `timeout` bounds each wait for the helper once connected. `connect_timeout` bounds
    connect() itself; None waits as QEMU does, for room in a full listen backlog.
    """

    def __init__(self, path: str, timeout: float = 10.0, *,
                 connect_timeout: float | None = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self.sock.close)
            self.sock.settimeout(connect_timeout)
            try:
                self.sock.connect(path)
            except TimeoutError:
                raise
            except OSError as err:
                raise ConnectError(err.errno, err.strerror, path) from err
            self.sock.settimeout(timeout)
            self._conn = ClientConnection()
            offered = self._next_event()
            if not isinstance(offered, FeaturesOffered):
                raise QemuProtocolError(f"expected the helper's features, got {offered}")
            self.features = offered.features
            self.sock.sendall(self._conn.send_features())
            on_failure.pop_all()

    def send(self, cdb: bytes, fd: int, parameter_list: bytes = b"") -> tuple[bytes, bytes]:
        """Send one request; returns the (CDB, parameter list) bytes that went out."""
        cdb, params = self._conn.send_request(cdb, parameter_list)
        sent = send_with_fds(self.sock, cdb, [fd])
        # The fd went with the first byte; what a short send left goes without it.
        if sent < len(cdb):
            self.sock.sendall(cdb[sent:])
        if params:
            self.sock.sendall(params)
        return cdb, params

    def receive(self) -> PrReply:
        """The reply to the request sent."""
        reply = self._next_event()
        if not isinstance(reply, PrReply):
            raise QemuProtocolError("helper closed the connection without replying")
        return reply

    def request(self, cdb: bytes, fd: int, parameter_list: bytes = b"") -> PrReply:
        """One request with `fd` attached, and its reply."""
        self.send(cdb, fd, parameter_list)
        return self.receive()

    def _next_event(self) -> Event | PrReply:
        while True:
            event = self._conn.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, (Event, PrReply))
                return event
            self._conn.receive_data(self.sock.recv(_RECV_SIZE))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
