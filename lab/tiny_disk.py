"""A tiny tmpfs, to fill up: the disk-full case of the audit log."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tiny_tmpfs(size: str = "64k") -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted on a fresh directory; unmounted and removed after."""
    with tempfile.TemporaryDirectory(prefix="prguard-full-") as directory:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        directory], check=True)
        try:
            yield Path(directory)
        finally:
            subprocess.run(["umount", "-l", directory], check=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of `directory` up (leaving about `leave` bytes); the filler
    file, to remove to make room again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                if os.write(fd, chunk) < len(chunk):
                    chunk = chunk[:1]
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[:1]  # the last block's bytes one at a time
        if leave:
            os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    finally:
        os.close(fd)
    return filler
