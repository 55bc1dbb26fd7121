"""A blocking QEMU-side client of the helper protocol and CDB builders."""

from __future__ import annotations

import array
import socket
from collections.abc import Sequence


def pr_in_cdb(action: int = 0, alloc: int = 24) -> bytes:
    return bytes([0x5E, action, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + bytes(7)


def pr_out_cdb(action: int = 0, length: int = 24, scope_type: int = 0) -> bytes:
    return bytes([0x5F, action, scope_type, 0, 0, 0, 0]) + length.to_bytes(2, "big") + bytes(7)


def send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], anc)


class Client:
    """A blocking QEMU-like client: handshake, then one request at a time."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)  # blocking, as QEMU's: waits for room in a full backlog
        self.sock.settimeout(timeout)
        self.features = int.from_bytes(self._exact(4), "big")
        self.sock.sendall(bytes(4))

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def request(self, cdb: bytes, fd: int, data: bytes = b"") -> tuple[int, bytes, bytes]:
        """(status, 96-byte sense, payload)."""
        send_with_fds(self.sock, cdb, [fd])
        if data:
            self.sock.sendall(data)
        header = self._exact(104)
        status = int.from_bytes(header[:4], "big", signed=True)
        size = int.from_bytes(header[4:8], "big")
        return status, header[8:], self._exact(size)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
