"""A pidfd of the process at the other end of a connection (SO_PEERPIDFD, Linux 6.5).

The broker hands it to the worker with each new connection, so that the worker reads
the client's identity from the very process that connected, not from a pid that may
have been given to another process since (worker/client_identity.py).
"""

from __future__ import annotations

import errno
import socket

SO_PEERPIDFD = 77  #: <asm-generic/socket.h>


class PeerGone(Exception):
    """The process that connected no longer exists (kernels before 6.17 hand out no
    pidfd for a reaped process)."""


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd of the process that connected, or None where the kernel has none.
    Raises PeerGone when the process is gone."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            return None
        if exc.errno in (errno.EINVAL, errno.ESRCH):
            raise PeerGone from None
        raise
    return int.from_bytes(raw, "little", signed=True)
