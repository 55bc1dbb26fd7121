"""Who a client is, read by the worker when the broker introduces a new connection: the
cgroup the host put the process in (/proc/<pid>/cgroup), from which
shared/cgroup_names.py derives the systemd unit and the libvirt domain, and its uid and
gid.

The broker sends what it has: SO_PEERCRED's pid, uid and gid, and where the kernel has
SO_PEERPIDFD (Linux 6.5) a pidfd of the very process that connected. The worker then
reads for itself rather than take the broker's word:

- with a pidfd: the pid is the pidfd's own (/proc/self/fdinfo), the uid and gid the
  process's effective ones (/proc/<pid>/status), the cgroup its; and once read, the
  pidfd says whether the process still lives: while it lives its pid is its own, so the
  files read were its own. A client that exited first gets no cgroup (`pidfd` true,
  `cgroup` None). A compromised broker can only hand over pidfds of processes that
  connected to it (it cannot make pidfds otherwise).
- without one (Debian 12's 6.1), the pid, uid and gid are the broker's, and the
  process's start time (/proc/<pid>/stat) must come before the moment the worker was
  asked: a process started later cannot be the one that connected. A pid reused between
  the client's connect() and that moment is not caught; the record says `pidfd` false.

Nothing the client chooses (argv, comm, environment) is part of its identity. The
worker reads /proc with openat (read-only) and pread, which Landlock allows beneath /proc.
"""

from __future__ import annotations

import os
import select
import time

from prguard.shared import cgroup_names
from prguard.shared.audit_record import ClientIdentity

PROC = "/proc"
READ_SIZE = 8192
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_proc(relative: str, proc: str = PROC) -> str | None:
    try:
        fd = os.open(f"{proc}/{relative}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, READ_SIZE, 0).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _field(text: str | None, name: str) -> list[str]:
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.split()
    return []


def pid_of_pidfd(pidfd: int, proc: str = PROC) -> int | None:
    """The pid a pidfd refers to (-1 once the process has exited), None if the fd is no
    pidfd."""
    values = _field(read_proc(f"self/fdinfo/{pidfd}", proc), "Pid")
    try:
        return int(values[0])
    except (IndexError, ValueError):
        return None


def exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


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


def _identity(pid: int, uid: int, gid: int, cgroup_text: str | None,
              pidfd: bool) -> ClientIdentity:
    path = cgroup_names.cgroup_path(cgroup_text) if cgroup_text is not None else None
    return ClientIdentity(
        pid=pid, uid=uid, gid=gid, cgroup=path,
        unit=cgroup_names.unit_of(path) if path else None,
        domain=cgroup_names.domain_of(path) if path else None, pidfd=pidfd)


def identify(pid: int, uid: int, gid: int, pidfd: int | None, asked_ticks: int,
             proc: str = PROC) -> ClientIdentity:
    """The identity of a client the broker introduces (`pidfd` is the caller's to close).
    `asked_ticks` is boot_ticks() when the worker received the introduction."""
    if pidfd is not None:
        own = pid_of_pidfd(pidfd, proc)
        if own is None:  # not a pidfd: nothing the worker can vouch for
            return _identity(pid, uid, gid, None, pidfd=False)
        if own <= 0:
            return _identity(pid, uid, gid, None, pidfd=True)
        cgroup = read_proc(f"{own}/cgroup", proc)
        status = read_proc(f"{own}/status", proc)
        if exited(pidfd):
            return _identity(own, uid, gid, None, pidfd=True)
        uids, gids = _field(status, "Uid"), _field(status, "Gid")
        if len(uids) > 1 and len(gids) > 1 and uids[1].isdigit() and gids[1].isdigit():
            uid, gid = int(uids[1]), int(gids[1])  # effective ids, as SO_PEERCRED has
        return _identity(own, uid, gid, cgroup, pidfd=True)
    cgroup = read_proc(f"{pid}/cgroup", proc)
    started = start_ticks(read_proc(f"{pid}/stat", proc) or "")
    # /proc's start time is rounded down to a tick: one tick of slack.
    if started is None or started > asked_ticks + 1:
        cgroup = None
    return _identity(pid, uid, gid, cgroup, pidfd=False)
