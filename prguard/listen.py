"""The listening socket: inherited through socket activation, or created at -k's path.

A created socket is bound under a temporary name in the same directory, put in the
listening state, and only then renamed to its path: libvirt decides the helper is ready
when the path exists, so the path must never exist before connect() can succeed. rename
also replaces a stale node at the path atomically, where the C helper unlinks and then
binds. Binding happens relative to the directory, so a path of exactly 108 bytes (a
full sun_path without NUL, which the C helper accepts) works too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from prguard.broker.main import CreatedSocket

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
    #: What this process created and must remove at exit; None when activated.
    created: CreatedSocket | None


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


@contextlib.contextmanager
def _in_directory(directory: str) -> Iterator[int]:
    """chdir into `directory` for the duration (the process is still single-threaded)."""
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(directory)
        dirfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield dirfd
        finally:
            os.close(dirfd)
    finally:
        os.fchdir(here)
        os.close(here)


def create(path: str) -> Listener:
    if len(path.encode()) > SUN_PATH_SIZE:
        raise ListenError(f"UNIX socket path '{path}' is too long\n"
                          f"Path must be less than {SUN_PATH_SIZE} bytes")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise ListenError(f"Failed to unlink socket {path}: Is a directory")
    directory, name = os.path.split(path)
    temporary = f".prguard-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _in_directory(directory or "/") as dirfd:
            sock.bind(temporary)
            try:
                sock.listen(BACKLOG)
                os.rename(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except OSError:
                os.unlink(temporary, dir_fd=dirfd)
                raise
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            kept_dir_fd = os.dup(dirfd)
    except OSError as exc:
        sock.close()
        raise ListenError(f"Failed to bind socket to {path}: {exc.strerror}") from None
    os.set_inheritable(kept_dir_fd, False)
    return Listener(sock, CreatedSocket(path, kept_dir_fd, name, (st.st_dev, st.st_ino)))
