"""Who a client is, read once when it connects: SO_PEERCRED, and the cgroup the host put
the process in (/proc/<pid>/cgroup), from which broker/cgroup_names.py derives the
systemd unit and the libvirt domain.

The pid is only a name: the client may exit and its pid be given to another process
before the broker reads /proc. So:

- where the kernel has SO_PEERPIDFD (Linux 6.5), the broker takes a pidfd of the very
  process that connected, reads /proc/<pid>/cgroup, then checks through the pidfd that
  the process still lives: while it lives its pid is its own, so the file read was its
  own. A client that exited first gets no cgroup (`pidfd` true, `cgroup` None).
- elsewhere (Debian 12's 6.1) the broker compares the process's start time in
  /proc/<pid>/stat with the moment it accepted the connection: a process started after
  that cannot be the one that connected. A pid reused between the client's connect()
  and the broker's accept() (a client that connects and exits at once, and a new
  process given its pid in that instant) is not caught; the record says `pidfd` false.

Nothing the client chooses (argv, comm, environment) is part of its identity.

Confined, the broker reads /proc through openat relative to a directory fd of /proc
opened before lockdown (Landlock allows reading files beneath /proc; docs/SECURITY.md
has what that leaves a compromised broker).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from prguard.broker import cgroup_names
from prguard.shared.audit_record import ClientIdentity

SO_PEERPIDFD = 77  #: <asm-generic/socket.h>, Linux 6.5
PROC = "/proc"
#: /proc/<pid>/cgroup is a few lines; /proc/<pid>/stat one.
READ_SIZE = 8192
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def open_proc() -> int:
    """The directory fd of /proc the broker reads clients' files through."""
    return os.open(PROC, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


#: peer_pidfd's answer when the process that connected is already gone (kernels before
#: 6.17 hand out no pidfd for a reaped process).
GONE = -1


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd of the process that connected, GONE if it no longer exists, or None where
    the kernel has no SO_PEERPIDFD."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            return None
        if exc.errno in (errno.EINVAL, errno.ESRCH):
            return GONE
        raise
    return int.from_bytes(raw, "little", signed=True)


def exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def read_proc(proc_fd: int, pid: int, name: str) -> str | None:
    try:
        fd = os.open(f"{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except OSError:
        return None
    try:
        return os.read(fd, READ_SIZE).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def start_ticks(stat_text: str) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); the command
    name in parentheses may hold spaces and parentheses itself."""
    fields = stat_text[stat_text.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_ticks() -> int:
    """Now, in /proc/<pid>/stat's unit (ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS)


def identify(sock: socket.socket, pid: int, uid: int, gid: int, proc_fd: int,
             accepted_ticks: int) -> ClientIdentity:
    """The identity of an accepted client (SO_PEERCRED already read by the caller)."""
    pidfd = peer_pidfd(sock)
    try:
        text = read_proc(proc_fd, pid, "cgroup") if pidfd != GONE else None
        if pidfd is not None:
            if pidfd != GONE and exited(pidfd):
                text = None
        else:
            started = start_ticks(read_proc(proc_fd, pid, "stat") or "")
            # /proc's start time is rounded down to a tick: one tick of slack.
            if started is None or started > accepted_ticks + 1:
                text = None
    finally:
        if pidfd is not None and pidfd != GONE:
            os.close(pidfd)
    path = cgroup_names.cgroup_path(text) if text is not None else None
    return ClientIdentity(
        pid=pid, uid=uid, gid=gid, cgroup=path,
        unit=cgroup_names.unit_of(path) if path else None,
        domain=cgroup_names.domain_of(path) if path else None,
        pidfd=pidfd is not None)
