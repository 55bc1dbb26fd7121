"""The socket file at -k's path: the launcher creates it, the broker removes it at exit.

Created under a temporary name in the same directory, put in the listening state, and
only then renamed to its path: libvirt decides the helper is ready when the path exists,
so the path must never exist before connect() can succeed. rename also replaces a stale
node at the path atomically, where the C helper unlinks and then binds. Binding happens
relative to the directory, so a path of exactly 108 bytes (a full sun_path without NUL,
which the C helper accepts) works too.

Removed through the directory's fd, and only if the name still refers to the file this
instance created: its inode is looked up in the directory's entries (getdents64 on that
fd), not by stat() of a path. Once the broker is confined, the removal is done by its
janitor (broker/janitor.py), the one process that keeps the directory's fd.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from prguard.shared import dirents, fdcheck

log = logging.getLogger("prguard.broker")


@dataclass(frozen=True)
class SocketFile:
    """A socket file this instance created, and must remove at exit."""

    path: str
    dir_fd: int
    name: str
    #: the directory's st_dev and the name's inode number in the directory's entries
    #: (d_ino), as created: another instance may have replaced it. Both are read the way
    #: remove() reads them: on overlayfs a file's st_dev and st_ino need not be its
    #: directory's st_dev and its d_ino.
    identity: tuple[int, int]

    def remove(self) -> None:
        """Remove the socket file, unless another instance has since taken the path over
        (the C helper removes whatever is there, cutting the newer instance off). A new
        instance renaming its socket over the path between the check and the unlink would
        still lose it: Linux has no "unlink if this inode"."""
        try:
            identity = _identity(self.dir_fd, self.name)
            if identity is None:
                return
            if identity != self.identity:
                log.info("%s now belongs to another instance: left in place", self.path)
                return
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("Failed to unlink socket %s: %s", self.path, exc.strerror)


def _identity(dir_fd: int, name: str) -> tuple[int, int] | None:
    """(the directory's st_dev, the name's d_ino), or None if there is no such name."""
    inode = dict(dirents.entries(dir_fd)).get(name)
    return None if inode is None else (fdcheck.fstat(dir_fd).dev, inode)


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


def create(path: str, backlog: int) -> tuple[socket.socket, SocketFile]:
    """A listening unix stream socket at `path`; OSError if it cannot be made."""
    directory, name = os.path.split(path)
    temporary = f".prguard-{os.urandom(4).hex()}"  # not secrets: it loads libcrypto
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _in_directory(directory or "/") as dirfd:
            sock.bind(temporary)
            try:
                sock.listen(backlog)
                os.rename(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except OSError:
                os.unlink(temporary, dir_fd=dirfd)
                raise
            identity = _identity(dirfd, name)
            if identity is None:
                raise FileNotFoundError(errno.ENOENT, "renamed away")
            kept_dir_fd = os.dup(dirfd)
    except OSError:
        sock.close()
        raise
    os.set_inheritable(kept_dir_fd, False)
    return sock, SocketFile(path, kept_dir_fd, name, identity)
