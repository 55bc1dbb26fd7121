"""The listening socket: inherited through socket activation, or created at -k's path
(shared/socket_file.py makes the file, and removes it at exit).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass

from prguard.shared import socket_file
from prguard.shared.socket_file import SocketFile

#: sizeof(sun_path): the C helper refuses longer paths.
SUN_PATH_SIZE = 108
#: A larger backlog than the C helper's 1: a burst of QEMU connections queues instead of
#: failing with EAGAIN.
BACKLOG = 64
SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    """A start-up error about the socket: the message, exit 1."""


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    #: What this instance created and must remove at exit; None when activated.
    socket_file: SocketFile | None


def activation_fd_count(environ: dict[str, str], pid: int) -> int:
    """LISTEN_FDS when LISTEN_PID names this process, else 0 (sd_listen_fds semantics).

    Unparsable or negative values mean no activation (the C helper aborts on negative).
    """
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return 0
        return max(int(environ.get("LISTEN_FDS", "")), 0)
    except ValueError:
        return 0


def from_activation(count: int, socket_given: bool, prog: str) -> Listener:
    """Checks in the C helper's order: fds valid, no -k, exactly one fd, a socket."""
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise ListenError(f"Socket activation failed: invalid file descriptor fd = {fd}: "
                              f"{exc.strerror}") from None
    if socket_given:
        raise ListenError("Unix socket can't be set when using socket activation")
    if count > 1:
        raise ListenError(f"{prog} does not support socket activation with LISTEN_FDS > 1")
    if not stat.S_ISSOCK(os.fstat(SD_LISTEN_FDS_START).st_mode):
        raise ListenError("Failed to use socket activation: Unable to query remote socket "
                          "address: Socket operation on non-socket")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        sock.detach()
        raise ListenError("Failed to use socket activation: fd 3 is not a listening "
                          "unix stream socket")
    return Listener(sock, None)


def create(path: str) -> Listener:
    if len(path.encode()) > SUN_PATH_SIZE:
        raise ListenError(f"UNIX socket path '{path}' is too long\n"
                          f"Path must be less than {SUN_PATH_SIZE} bytes")
    # A stale socket is replaced (by the rename in socket_file.create); anything else at
    # the path is left alone, where the C helper unlinks whatever is not a directory: a
    # mistyped -k must not cost a file. A file put there after this check would still be
    # replaced, its name only: rename never writes into a file or follows a link.
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ListenError(f"Failed to unlink socket {path}: Is a directory")
        if not stat.S_ISSOCK(mode):
            raise ListenError(f"{path} exists and is not a socket: not replacing it")
    try:
        sock, created = socket_file.create(path, BACKLOG)
    except OSError as exc:
        raise ListenError(f"Failed to bind socket to {path}: {exc.strerror}") from None
    return Listener(sock, created)
