"""One-line logs on stderr that survive a closed stderr (libvirt closes its pipe)."""

from __future__ import annotations

import logging
import os
import time

LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


#: Lines per second a flood of per-connection messages may produce, and the burst
#: allowed above that: a hostile client must not fill the journal, nor block the broker
#: on a stderr pipe that is read slowly.
RATE = 50.0
BURST = 200.0


class StderrHandler(logging.Handler):
    """`prog: message` lines; warnings and below are rate-limited, errors never are."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog
        self._tokens = BURST
        self._last = time.monotonic()
        self._suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._last) * RATE)
        self._last = now
        if record.levelno < logging.ERROR:
            if self._tokens < 1:
                self._suppressed += 1
                return
            self._tokens -= 1
        if self._suppressed:
            line(f"{self._prog}: {self._suppressed} log lines suppressed (rate limit)")
            self._suppressed = 0
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
