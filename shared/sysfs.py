"""What sysfs says about a block device number: is it a partition?

Read by path under /sys/dev/block/<major>:<minor>/, which links into /sys/devices. The
worker reads it with openat (read-only flags only) and pread, confined by Landlock to
reading beneath /sys/devices; nothing here is needed by the broker.

A device sysfs does not list (no `dev` attribute: no such device here, or /sys not
mounted), or an attribute that cannot be read for any reason other than its absence,
makes the device one that is refused (fail closed).
"""

from __future__ import annotations

import errno
import os

from prguard.shared.rules import FdKind

SYS_DEV_BLOCK = "/sys/dev/block"
#: Where every block device's sysfs directory lives; the worker's Landlock rule.
SYS_DEVICES = "/sys/devices"


class SysfsError(OSError):
    """An attribute exists but could not be read."""


def _path(rdev: int, attribute: str) -> str:
    return f"{SYS_DEV_BLOCK}/{os.major(rdev)}:{os.minor(rdev)}/{attribute}"


def exists(rdev: int, attribute: str) -> bool:
    """Whether the attribute file exists (opened read-only, then closed)."""
    try:
        fd = os.open(_path(rdev, attribute), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise SysfsError(exc.errno, f"{_path(rdev, attribute)}: {exc.strerror}") from None
    os.close(fd)
    return True


def block_kind(rdev: int) -> FdKind:
    """The kind of a block device: a partition, a whole disk, or unknown."""
    try:
        if not exists(rdev, "dev"):
            return FdKind.UNKNOWN_BLOCK
        if exists(rdev, "partition"):
            return FdKind.PARTITION
    except SysfsError:
        return FdKind.UNKNOWN_BLOCK
    return FdKind.BLOCK_DISK
