"""One-line logs on stderr that survive a closed stderr (libvirt closes its pipe)."""

from __future__ import annotations

import logging
import os

LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class StderrHandler(logging.Handler):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        line(f"{self._prog}: {record.getMessage()}")


def setup(prog: str, level: int) -> None:
    root = logging.getLogger("prguard")
    root.handlers[:] = [StderrHandler(prog)]
    root.setLevel(LEVELS[level])
    root.propagate = False


def _write(fd: int, data: bytes) -> None:
    """Unbuffered, so a closed or full stream fails here and never again at exit."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # EPIPE, EBADF, ENOSPC: nobody left to tell


def line(text: str) -> None:
    """One whole line on stderr, whatever the verbosity (start-up errors)."""
    _write(2, f"{text}\n".encode(errors="replace"))


def out(text: str) -> None:
    """--help and friends on stdout; write errors are ignored as the C helper does."""
    _write(1, text.encode(errors="replace"))
