"""Facts about a received fd: its kind and access mode from fcntl(F_GETFL) and fstat(2),
never from a path; for a block device, what sysfs says of its device number (a
partition? a device-mapper map?), in the processes allowed to read sysfs.

fstat is the fstat system call itself, through ctypes: glibc (2.33+) implements
os.fstat as newfstatat(fd, "", AT_EMPTY_PATH), and a policy that allows newfstatat
allows stat() of any path, which no Landlock rule can confine.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import stat
import struct
import threading
from typing import NamedTuple

from prguard.shared import sysfs
from prguard.shared.rules import FdFacts, FdKind, read_only

#: Character major of the SCSI generic driver (Documentation/admin-guide/devices.txt).
SCSI_GENERIC_MAJOR = 21

# machine -> (fstat's number, sizeof(struct stat), its layout up to st_rdev, and where
# st_mode, st_nlink and st_rdev are in it)
_FSTAT_ABI = {
    # unsigned long dev, ino, nlink; unsigned int mode, uid, gid; int pad; ulong rdev
    "x86_64": (5, 144, struct.Struct("=QQQIIIiQ"), 3, 2, 7),
    # asm-generic: ulong dev, ino; uint mode, nlink, uid, gid; ulong rdev
    "aarch64": (80, 128, struct.Struct("=QQIIIIQ"), 2, 3, 6),
}
#: this machine's entry (looked up at import: uname is no call for a confined process)
_ABI = _FSTAT_ABI.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_FSTAT_NUMBER = ctypes.c_long(_ABI[0] if _ABI else 0)
#: one stat buffer per thread (the worker's threads fstat at once), made on first use
_buffers = threading.local()


class FileStatus(NamedTuple):
    mode: int
    rdev: int
    dev: int
    ino: int
    nlink: int


def fstat(fd: int) -> FileStatus:
    """fstat(2) of an open fd. Raises OSError as os.fstat does."""
    if _ABI is None:
        raise OSError(0, f"fstat layout unknown on {platform.machine()}")
    _, size, layout, mode_at, nlink_at, rdev_at = _ABI
    buf = getattr(_buffers, "stat", None)
    if buf is None:
        buf = _buffers.stat = ctypes.create_string_buffer(size)
    if _libc.syscall(_FSTAT_NUMBER, ctypes.c_int(fd), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    fields = layout.unpack_from(buf)
    return FileStatus(fields[mode_at], fields[rdev_at], fields[0], fields[1],
                      fields[nlink_at])


def inspect_fd(fd: int, with_sysfs: bool) -> FdFacts:
    """Classify `fd`. With `with_sysfs`, a block device is looked up in sysfs (the worker,
    which Landlock lets read beneath /sys/devices): a partition or a device-mapper map
    other than a multipath one is refused there. Without, every block device is taken for
    a whole disk as far as fstat can tell (the broker, which reads no file once confined:
    a device number alone tells neither a partition nor which kind of map it is, so the
    worker, the one process whose SG_IO could reach the LU, decides; with multipath on,
    the path opener is asked first). OSError from fcntl/fstat propagates (a bad fd is
    the caller's bug)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    st = fstat(fd)
    if flags & os.O_PATH:
        kind = FdKind.OTHER
    elif stat.S_ISBLK(st.mode):
        kind = sysfs.block_kind(st.rdev) if with_sysfs else FdKind.BLOCK_DISK
    elif stat.S_ISCHR(st.mode) and os.major(st.rdev) == SCSI_GENERIC_MAJOR:
        kind = FdKind.SCSI_GENERIC
    else:
        kind = FdKind.OTHER
    return FdFacts(kind, read_only(flags), st.rdev)
