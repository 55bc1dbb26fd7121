"""One-line logs on stderr that survive a closed stderr (libvirt closes its pipe)."""

from __future__ import annotations

import logging
import sys

LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class StderrHandler(logging.Handler):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{self._prog}: {record.getMessage()}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # EPIPE or a closed stream: logging must never stop the service


def setup(prog: str, level: int) -> None:
    root = logging.getLogger("prguard")
    root.handlers[:] = [StderrHandler(prog)]
    root.setLevel(LEVELS[level])
    root.propagate = False


def error(prog: str, message: str) -> None:
    """A start-up error line (printed whatever the verbosity)."""
    try:
        sys.stderr.write(f"{prog}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
