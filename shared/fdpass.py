"""Datagrams with at most one fd over the internal SOCK_SEQPACKET channel.

The only place that builds or parses SCM_RIGHTS for the channel. A datagram that was cut
(MSG_TRUNC) or whose control data was cut (MSG_CTRUNC), or that carries more than one fd,
is refused, and every fd that did arrive is closed before raising.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket

from prguard.shared.errors import ChannelError
from prguard.shared.messages import MAX_MESSAGE_SIZE

# Plain ints: socket's IntFlag operators run Python code on every datagram.
_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)
#: Control buffer room: more than we accept, so a surplus is seen (and closed), not cut.
_ANCILLARY_FDS = 4
ANCILLARY_SPACE = socket.CMSG_SPACE(_ANCILLARY_FDS * array.array("i").itemsize)


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """All SCM_RIGHTS fds in recvmsg's ancillary data (shared with the QEMU-side shell)."""
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % array.array("i").itemsize
            fds.extend(array.array("i", payload[:usable]))
    return fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # already closed: nothing left to release
            os.close(fd)


def send_message(sock: socket.socket, payload: bytes, fd: int | None = None) -> None:
    """Send one datagram, with `fd` attached if given. Raises OSError as sendmsg does."""
    if len(payload) > MAX_MESSAGE_SIZE:
        raise ChannelError("message too large to send")
    ancillary = []
    if fd is not None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    sent = sock.sendmsg([payload], ancillary)
    if sent != len(payload):
        raise ChannelError("short datagram send")


def peer_gone(sock: socket.socket) -> bool:
    """After a 0-byte read: EOF (peer closed) rather than an empty datagram?"""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP) for _, ev in poller.poll(0))


def recv_message(sock: socket.socket) -> tuple[bytes, int | None] | None:
    """Receive one datagram and its fd (or None); None for EOF.

    An empty datagram is returned as b"" (a SEQPACKET read of 0 bytes is EOF only when
    the peer has hung up).
    """
    payload, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE_SIZE + 1, ANCILLARY_SPACE,
                                              _CMSG_CLOEXEC)
    fds = fds_from_ancillary(ancdata)
    if not payload and not fds and peer_gone(sock):
        return None
    if flags & _TRUNCATED or len(payload) > MAX_MESSAGE_SIZE:
        close_all(fds)
        raise ChannelError("datagram or its control data was truncated")
    if len(fds) > 1:
        close_all(fds)
        raise ChannelError(f"{len(fds)} fds in one datagram")
    return payload, (fds[0] if fds else None)
