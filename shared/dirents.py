"""A directory's entries, read from an open directory fd with getdents64(2) alone.

os.listdir and os.scandir on an fd duplicate it (fcntl F_DUPFD) and fstat it through
newfstatat, neither of which a confined process may do; this reads the fd it is given,
from its start (lseek), and nothing else.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator

#: getdents64's number here (looked up at import: uname is no call for a confined process)
SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(os.uname().machine, -1)
_HEADER = struct.Struct("=QqHB")  # d_ino, d_off, d_reclen, d_type; then the name
_BUFFER = 32768
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def entries(dir_fd: int) -> Iterator[tuple[str, int]]:
    """(name, inode number) of every entry but `.` and `..`. Raises OSError."""
    if SYS_GETDENTS64 < 0:
        raise OSError(0, f"getdents64 unknown on {os.uname().machine}")
    os.lseek(dir_fd, 0, os.SEEK_SET)
    buf = ctypes.create_string_buffer(_BUFFER)
    while True:
        size = _libc.syscall(ctypes.c_long(SYS_GETDENTS64), ctypes.c_int(dir_fd), buf,
                             ctypes.c_size_t(_BUFFER))
        if size < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if size == 0:
            return
        data = buf.raw[:size]
        at = 0
        while at < size:
            ino, _, reclen, _ = _HEADER.unpack_from(data, at)
            raw = data[at + _HEADER.size:at + reclen]
            name = os.fsdecode(raw[:raw.index(b"\0")])
            at += reclen
            if name not in (".", ".."):
                yield name, ino
