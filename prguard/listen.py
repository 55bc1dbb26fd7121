"""The listening socket: inherited through socket activation, or created at -k's path.

A created socket is bound under a temporary name in the same directory, put in the
listening state, and only then renamed to its path: libvirt decides the helper is ready
when the path exists, so the path must never exist before connect() can succeed. rename
also replaces a stale node at the path atomically, as the C helper's unlink-then-bind
does non-atomically.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
from dataclasses import dataclass

UNIX_PATH_MAX = 107
#: A larger backlog than the C helper's 1: a burst of QEMU connections queues instead of
#: failing with EAGAIN.
BACKLOG = 64
SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    """A start-up error about the socket: one line, exit 1."""


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    #: The path this process created and must unlink at exit; None when activated.
    created_path: str | None


def activation_fd_count(environ: dict[str, str], pid: int) -> int:
    """LISTEN_FDS when LISTEN_PID names this process, else 0 (sd_listen_fds semantics)."""
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return 0
        return max(int(environ.get("LISTEN_FDS", "")), 0)
    except ValueError:
        return 0


def from_activation(count: int, socket_given: bool, prog: str) -> Listener:
    if socket_given:
        raise ListenError("Unix socket can't be set when using socket activation")
    if count > 1:
        raise ListenError(f"{prog} does not support socket activation with LISTEN_FDS > 1")
    try:
        mode = os.fstat(SD_LISTEN_FDS_START).st_mode
        if not stat.S_ISSOCK(mode):
            raise OSError(88, os.strerror(88))  # ENOTSOCK
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise ListenError(f"Failed to use socket activation: {exc.strerror}") from None
    os.set_inheritable(sock.fileno(), False)
    return Listener(sock, None)


def create(path: str) -> Listener:
    if len(path.encode()) > UNIX_PATH_MAX:
        raise ListenError(f"UNIX socket path '{path}' is too long")
    directory = os.path.dirname(path) or "/"
    temporary = os.path.join(directory, f".prguard-{secrets.token_hex(4)}")
    staged = len(temporary.encode()) <= UNIX_PATH_MAX
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if staged:
            sock.bind(temporary)
            try:
                sock.listen(BACKLOG)
                os.rename(temporary, path)
            except OSError:
                os.unlink(temporary)
                raise
        else:
            # No room for a temporary name: fall back to the C helper's unlink + bind.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock.bind(path)
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"Failed to bind socket to {path}: {exc.strerror}") from None
    return Listener(sock, path)
