"""-d and -f: detach like daemon(0, 0), and the locked pidfile qemu_write_pidfile writes."""

from __future__ import annotations

import fcntl
import os


class PidfileError(Exception):
    pass


def daemonize() -> None:
    """fork; the parent exits 0; the child starts a session, cwd /, stdio on /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def write_pidfile(path: str) -> int:
    """Create `path` 0600, lock it for the life of this process, write "<pid>\\n".

    Returns the fd, which must stay open (closing it drops the lock). The file is never
    removed, as with the C helper.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PidfileError(f"Could not create '{path}': {exc.strerror}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise PidfileError(f"Cannot lock pid file: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
