"""What the path opener does with one datagram: decode, check the map, open its paths.

Pure decisions; the system calls are injected (`Io`) so the tests can play sysfs and the
device nodes. The answer to a MapRequest is either MapRefused, or MapPaths followed by one
PathFd per path opened (each with its fd). The map's own fd is never sent back.

A path is opened only when the map fd is open for writing (PR OUT needs a writable fd,
and a read-only map fd must not yield a writable path fd), only when its SCSI device is
running, and only when the broker does not hold it already. A node that cannot be opened
because its device went away (ENXIO, ENODEV, ENOENT) is reported as not live; any other
failure (EACCES: the opener's group is not the nodes' group) refuses the map, saying so.
The node's fd must be the path's device: a block device with that very number.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from prguard.shared import fdcheck, sysfs
from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    Malformed,
    MapPaths,
    MapRefused,
    MapRequest,
    Message,
    PathFd,
    PathState,
    decode,
)
from prguard.shared.rules import read_only

#: The one way a path node is opened (seccomp/opener.policy allows exactly these flags).
PATH_FLAGS = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
DEV = "/dev"
#: errnos of a node whose device is gone or going: the path is down, not the map wrong.
GONE = (errno.ENXIO, errno.ENODEV, errno.ENOENT)

Answer = list[tuple[Message, int | None]]


@dataclass(frozen=True)
class Io:
    """The system calls the decisions need, injectable for tests."""

    read_map: Callable[[int], sysfs.MapInfo] = sysfs.multipath_map
    #: (flags from F_GETFL, st_mode, st_rdev) of an fd
    inspect: Callable[[int], tuple[int, int, int]] = lambda fd: _inspect(fd)
    open_node: Callable[[str], int] = lambda name: os.open(f"{DEV}/{name}", PATH_FLAGS)
    close: Callable[[int], None] = os.close


def _inspect(fd: int) -> tuple[int, int, int]:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    st = fdcheck.fstat(fd)  # fstat(2) itself: os.fstat takes a path (newfstatat)
    return flags, st.mode, st.rdev


def devname(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def answer(datagram: bytes, fd: int | None, io: Io) -> Answer:
    """The datagrams to send for one received datagram. Closes `fd` (the map's)."""
    try:
        try:
            message = decode(datagram)
        except ChannelError as exc:
            return [(Malformed(str(exc)[:200]), None)]
        if not isinstance(message, MapRequest):
            return [(Malformed(f"{type(message).__name__} is not a map request"), None)]
        if fd is None:
            return [(MapRefused(message.id, "no fd with the request"), None)]
        return _map_request(message, fd, io)
    finally:
        if fd is not None:
            io.close(fd)


def _map_request(request: MapRequest, fd: int, io: Io) -> Answer:
    try:
        flags, mode, rdev = io.inspect(fd)
    except OSError as exc:
        return [(MapRefused(request.id, f"cannot inspect the fd ({exc.strerror})"), None)]
    if flags & os.O_PATH or not stat.S_ISBLK(mode):
        return [(MapRefused(request.id, "not a block device"), None)]
    try:
        info = io.read_map(rdev)
    except sysfs.MapProblem as exc:
        return [(MapRefused(request.id, str(exc)[:200],
                            isinstance(exc, sysfs.NotDeviceMapper)), None)]
    if len(info.slaves) > len(set(s.rdev for s in info.slaves)) or not info.slaves:
        return [(MapRefused(request.id, f"{devname(rdev)}: inconsistent paths"), None)]
    writable = not read_only(flags)
    opened: list[tuple[int, int]] = []
    states: list[PathState] = []
    try:
        for slave in info.slaves:
            live = slave.running
            if live and writable and slave.rdev not in request.have:
                path_fd = _open_path(slave, io)
                if path_fd is None:
                    live = False
                else:
                    opened.append((slave.rdev, path_fd))
            states.append(PathState(slave.rdev, slave.name, live))
        paths = MapPaths(request.id, info.uuid[:128], tuple(states), len(opened))
    except (_Refusal, ChannelError) as exc:
        for _, path_fd in opened:
            io.close(path_fd)
        return [(MapRefused(request.id, str(exc)[:200]), None)]
    return [(paths, None), *((PathFd(request.id, r), f) for r, f in opened)]


class _Refusal(Exception):
    pass


def _open_path(slave: sysfs.Slave, io: Io) -> int | None:
    """The path's fd; None if its device is gone; _Refusal for anything else."""
    try:
        path_fd = io.open_node(slave.name)
    except OSError as exc:
        if exc.errno in GONE:
            return None
        hint = (" (the opener's group, --multipath-group, must be the nodes' group)"
                if exc.errno in (errno.EACCES, errno.EPERM) else "")
        raise _Refusal(f"cannot open {DEV}/{slave.name}: {exc.strerror}{hint}") from None
    try:
        _, mode, rdev = io.inspect(path_fd)
    except OSError as exc:
        io.close(path_fd)
        raise _Refusal(f"cannot inspect {DEV}/{slave.name}: {exc.strerror}") from None
    if not stat.S_ISBLK(mode) or rdev != slave.rdev:
        io.close(path_fd)
        raise _Refusal(f"{DEV}/{slave.name} is not the block device "
                       f"{devname(slave.rdev)}")
    return path_fd
