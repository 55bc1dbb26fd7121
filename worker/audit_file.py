"""The audit file: opened before lockdown, appended to with one write per record,
followed across rotation.

- The file is opened O_APPEND, so each record's single write() lands whole at the end,
  after every earlier one.
- The chain continues across restarts: before lockdown the last complete record of the
  file is read (or, when the file is missing or empty because it was rotated while
  prguard was stopped, that of the newest rotated file beside it: `audit.log.1`,
  `audit.log-20261129`, also `.gz`).
- Rotation (logrotate's rename, or any rename or removal): before each record the name
  is opened again in the directory (O_CREAT, so a rotated-away name is created anew);
  when it is another file than the one held, that file replaces it at the same fd
  number (dup3), and the record goes there. No signal is needed and no record is lost:
  a record written between the rename and the check lands at the end of the renamed
  file. (Use logrotate's `delaycompress`, so that the renamed file is not compressed
  while that can happen.) The confined worker may open only this name's directory, and
  only to create or append (docs/AUDIT.md, seccomp/worker.policy).
- A record cut short (disk full in the middle of a write) is ended with a newline before
  the next one, so later records stay lines of their own (verify reports the cut one).
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
from dataclasses import dataclass

from prguard.shared import fdcheck
from prguard.shared.audit_chain import Head, head_of
from prguard.shared.audit_record import NEW_CHAIN, RecordError

#: How the file is opened, before lockdown and at each check for rotation (the seccomp
#: policy allows openat in the audit directory with exactly these flags).
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
MODE = 0o640
#: How much of a file's end is read to find its last record (a record is at most ~17 KiB).
TAIL = 256 * 1024


@dataclass
class Continuation:
    """Where the chain continues from, found before lockdown."""

    head: Head
    #: the file the last record was found in (its name), or NEW_CHAIN
    source: str
    #: the file does not end with a newline (a write was cut short)
    needs_newline: bool = False


def last_record(data: bytes) -> Head | None:
    """The head after the last complete line of `data` that is a record."""
    lines = data.split(b"\n")
    for line in reversed(lines[:-1]):  # the piece after the last newline is incomplete
        if not line:
            continue
        try:
            return head_of(line)
        except RecordError:
            continue
    return None


def _tail(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    start = max(size - TAIL, 0)
    return os.pread(fd, size - start, start)


def _head_of_file(path: str) -> Head | None:
    try:
        if path.endswith(".gz"):
            last = b""
            with gzip.open(path, "rb") as stream:
                for line in stream:
                    if line.endswith(b"\n"):
                        last = line
            return last_record(last)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            return last_record(_tail(fd))
        finally:
            os.close(fd)
    except (OSError, EOFError):
        return None


def rotated_siblings(directory: str, name: str) -> list[str]:
    """Files beside `name` that rotation made of it, newest first (by mtime)."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if not (entry.name.startswith(name + ".") or entry.name.startswith(name + "-")):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        except OSError:
            continue
    return [entry for _, entry in sorted(found, reverse=True)]


def find_continuation(fd: int, directory: str, name: str) -> Continuation:
    data = _tail(fd)
    needs_newline = bool(data) and not data.endswith(b"\n")
    head = last_record(data)
    if head is not None:
        return Continuation(head, name, needs_newline)
    for sibling in rotated_siblings(directory, name):
        head = _head_of_file(os.path.join(directory, sibling))
        if head is not None:
            return Continuation(head, sibling, needs_newline)
    return Continuation(Head(), NEW_CHAIN, needs_newline)


class AuditFile:
    """The open audit file. Not thread-safe: the recorder serialises calls."""

    def __init__(self, path: str) -> None:
        """Open (before lockdown). OSError if the file cannot be opened."""
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.name = os.path.basename(path)
        self.dir_fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = os.open(self.name, OPEN_FLAGS, MODE, dir_fd=self.dir_fd)
            mode = os.fstat(self.fd).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, f"{path} is not a regular file")
            # Read through a second fd: the append fd is write-only.
            reader = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                             dir_fd=self.dir_fd)
            try:
                self.continuation = find_continuation(reader, self.directory, self.name)
            finally:
                os.close(reader)
        except OSError:
            os.close(self.dir_fd)
            raise
        self._needs_newline = self.continuation.needs_newline
        #: a rotation that could not be followed, reported once until it works again
        self.rotation_error: OSError | None = None

    def follow_rotation(self) -> bool:
        """Make the fd the file now at the path; True if it changed. An error is kept in
        `rotation_error` (records then go on into the file held)."""
        try:
            current = os.open(self.name, OPEN_FLAGS, MODE, dir_fd=self.dir_fd)
        except OSError as exc:
            self.rotation_error = exc
            return False
        try:
            now, held = fdcheck.fstat(current), fdcheck.fstat(self.fd)
            self.rotation_error = None
            if (now.dev, now.ino) == (held.dev, held.ino):
                return False
            if not stat.S_ISREG(now.mode):
                self.rotation_error = OSError(errno.EINVAL, f"{self.path} is not a regular "
                                              "file")
                return False
            os.dup2(current, self.fd, inheritable=False)  # dup3(O_CLOEXEC): same number
            self._needs_newline = False
            return True
        finally:
            os.close(current)

    def append(self, line: bytes) -> None:
        """Write one record (with its newline) in one write(); OSError if it did not
        land whole."""
        data = b"\n" + line if self._needs_newline else line
        written = os.write(self.fd, data)
        if written != len(data):
            self._needs_newline = True
            raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")
        self._needs_newline = False

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def fds(self) -> tuple[int, int]:
        """The fds the seccomp policy names: (the file, its directory)."""
        return self.fd, self.dir_fd
