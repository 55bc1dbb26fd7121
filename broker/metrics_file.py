"""Publishing a text file atomically from a confined process that may open nothing.

The file and a spare live side by side in one directory (`NAME` and `.NAME.next`), both
opened before lock-down, as root, then handed to the -u/-g user. Each publication
rewrites the spare through its fd (pwrite, ftruncate), then swaps the two names with
renameat2(RENAME_EXCHANGE): a reader opening NAME gets the old text or the new one,
whole, never a mix (node_exporter's textfile collector reads a file that may be replaced
at any time). The spare's name does not end in `.prom`, so the collector skips it.

So the process needs no open, no creat, no unlink once confined: write access to two fds
it holds and one exchange within one directory (seccomp allows exactly those: see
seccomp/broker.policy). The exchange takes names, which seccomp cannot look at; Landlock
confines them to that directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass

from prguard.shared import fdcheck
from prguard.shared.privileges import Identity

RENAME_EXCHANGE = 1 << 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
_renameat2.restype = ctypes.c_int


class MetricsFileError(Exception):
    """The file cannot be published; the message says why (one line). `lasting`: it
    cannot be until prguard starts again (someone removed the file or its spare, which
    a confined process cannot create again)."""

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


def spare_name(name: str) -> str:
    return f".{name}.next"


@dataclass
class MetricsFile:
    path: str
    dir_fd: int
    #: fd of the file now named `name` (the published one), and of the spare
    published_fd: int
    spare_fd: int
    name: str

    @classmethod
    def create(cls, path: str, owner: Identity | None) -> MetricsFile:
        """Open (creating if needed) the file and its spare; start-up, as root."""
        directory, name = os.path.split(os.path.abspath(path))
        if not name or name.startswith("."):
            raise MetricsFileError(f"--metrics-file {path}: not a usable file name")
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fds: list[int] = []
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(dir_fd)
            for each in (name, spare_name(name)):
                fd = os.open(each, flags, 0o644, dir_fd=dir_fd)
                fds.append(fd)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(0, "not a regular file")
                os.fchmod(fd, 0o644)  # readable by the unprivileged status client
                if owner is not None:
                    os.fchown(fd, owner.uid, owner.gid)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise MetricsFileError(f"--metrics-file {path}: {exc.strerror}") from None
        return cls(path, fds[0], fds[1], fds[2], name)

    def publish(self, text: bytes) -> None:
        """Make `text` the file's content in one step. Raises MetricsFileError."""
        try:
            # fstat(2) itself: os.fstat is newfstatat, which the broker may not call
            if not fdcheck.fstat(self.spare_fd).nlink or not fdcheck.fstat(
                    self.published_fd).nlink:
                raise MetricsFileError(f"cannot replace {self.path}: it or its spare "
                                       f"{spare_name(self.name)} was removed", lasting=True)
            os.pwrite(self.spare_fd, text, 0)
            os.ftruncate(self.spare_fd, len(text))
        except OSError as exc:
            raise MetricsFileError(f"cannot write {self.path}: {exc.strerror}") from None
        if _renameat2(self.dir_fd, spare_name(self.name).encode(), self.dir_fd,
                      self.name.encode(), RENAME_EXCHANGE) != 0:
            err = ctypes.get_errno()
            raise MetricsFileError(f"cannot replace {self.path}: {os.strerror(err)}",
                                   lasting=err == errno.ENOENT)
        self.published_fd, self.spare_fd = self.spare_fd, self.published_fd

    def previous(self, limit: int = 1 << 20) -> bytes:
        """What the file held when it was opened (a previous instance's last numbers)."""
        try:
            return os.pread(self.published_fd, limit, 0)
        except OSError:
            return b""

    def fds(self) -> tuple[int, int, int]:
        return self.dir_fd, self.published_fd, self.spare_fd
