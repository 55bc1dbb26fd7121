"""-d and -f: detach like daemon(0, 0), and the locked pidfile qemu_write_pidfile writes."""

from __future__ import annotations

import errno
import fcntl
import os
import stat


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


#: Never through a symbolic link at the path; never blocking on a FIFO put there.
PIDFILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def write_pidfile(path: str) -> int:
    """Create `path` 0600, lock it for the life of this process, write "<pid>\\n".

    Returns the fd, which must stay open (closing it drops the lock). The file is never
    removed, as with the C helper. Unlike the C helper, which follows a symbolic link at
    the path (and truncates whatever it names), only a regular file with no other link
    is opened and written: a link planted there by whoever can write to the directory
    is refused.
    """
    try:
        fd = os.open(path, PIDFILE_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PidfileError(f"Could not create '{path}': it is a symbolic link") from None
        raise PidfileError(f"Could not create '{path}': {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise PidfileError(f"Could not create '{path}': not a regular file with one link")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise PidfileError(f"Cannot lock pid file: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
