"""sd_notify(3) for Type=notify units: READY=1 once serving, STOPPING=1 on the way out.

The socket is created and connected before the seccomp filter is loaded (the policy
has no socket/connect); afterwards sending is a plain send on a connected socket, and
the policy allows no send with a destination address (a datagram socket would send
there instead of to its peer, fds included with sendmsg).
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock

    @classmethod
    def from_environ(cls) -> Notifier:
        """Consume NOTIFY_SOCKET (so no child inherits it); a no-op without it."""
        address = os.environ.pop("NOTIFY_SOCKET", "")
        if not address or address[0] not in "/@":
            return cls(None)
        if address[0] == "@":
            address = "\0" + address[1:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            return cls(None)
        return cls(sock)

    def send(self, state: str) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # the manager went away: nothing to tell
            self._sock.send(state.encode())

    def close(self) -> None:
        """Before lock-down only (once confined its fd is pinned: stop sending instead).
        Close explicitly: a socket left to the garbage collector is described in a
        ResourceWarning, which asks the kernel for addresses the policy does not allow."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
