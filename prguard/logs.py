"""One-line logs on stderr that survive a closed stderr (libvirt closes its pipe).

Under systemd, stderr is a stream to journald: then each line starts with its syslog
priority, `<3>` for an error, `<4>` a warning, `<6>` info, `<7>` debug (sd-daemon(3)),
so `journalctl -p warning` shows what matters, and the `prog:` prefix is left out
(journald names the unit and the pid). stderr is the journal when JOURNAL_STREAM names
its device and inode (systemd.exec(5)); anything else gets plain `prog: message` lines.

Warnings and below are rate-limited (errors never are); when lines flow again, or at
the next periodic flush, one warning says how many lines of which kinds were dropped.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter

LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
#: syslog priorities of the logging levels.
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
              logging.DEBUG: 7}

#: Lines per second a flood of per-connection messages may produce, and the burst
#: allowed above that: a hostile client must not fill the journal, nor block the broker
#: on a stderr pipe that is read slowly.
RATE = 50.0
BURST = 200.0
#: Kinds named in a suppression report; the rest are counted together.
REPORTED_KINDS = 5


def stderr_is_journal(environ: dict[str, str] | os._Environ[str], fd: int = 2) -> bool:
    """JOURNAL_STREAM is "DEV:INO" of the stream systemd connected to journald; it is
    inherited by children whose stderr may be something else, hence the comparison."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


_CONVERSION = re.compile(r"%[#0 +\-]*[0-9]*(?:\.[0-9]+)?[sdirfgeExXo]")


def kind(record: logging.LogRecord) -> str:
    """What sort of line this is, without what varies: its format with the arguments
    left out ("…: connection refused: …")."""
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    return _CONVERSION.sub("…", template)


_journal: bool | None = None


def journal() -> bool:
    """Whether this process's stderr is the journal (decided once, before lock-down)."""
    global _journal
    if _journal is None:
        _journal = stderr_is_journal(os.environ)
    return _journal


def with_priority(level: int, text: str) -> str:
    """`text` for stderr: each of its lines with its `<N>` priority if that is the
    journal."""
    if not journal():
        return text
    return "\n".join(f"<{PRIORITIES.get(level, 6)}>{part}" for part in text.split("\n"))


class StderrHandler(logging.Handler):
    """One line per record; warnings and below are rate-limited, errors never are."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prefix = "" if journal() else f"{prog}: "
        self._tokens = BURST
        self._last = time.monotonic()
        self._suppressed: Counter[str] = Counter()
        self._suppressed_since = 0.0

    def format_line(self, level: int, text: str) -> str:
        text = text.replace("\n", " / ")  # one record is one line, whatever it says
        return with_priority(level, f"{self._prefix}{text}")

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._last) * RATE)
        self._last = now
        if record.levelno < logging.ERROR:
            if self._tokens < 1:
                if not self._suppressed:
                    self._suppressed_since = now
                self._suppressed[kind(record)] += 1
                return
            self._tokens -= 1
        self.flush_suppressed(now)
        try:
            text = record.getMessage()
        except (TypeError, ValueError) as exc:  # a bad call must not fail its caller
            text = f"unformattable log line {record.msg!r} % {record.args!r}: {exc}"
        _stderr(self.format_line(record.levelno, text))

    def flush_suppressed(self, now: float | None = None) -> None:
        """Report what the rate limit dropped, if anything (called when a line gets
        through, and periodically by the broker so a flood that stopped is reported)."""
        if not self._suppressed:
            return
        now = time.monotonic() if now is None else now
        total = sum(self._suppressed.values())
        kinds = self._suppressed.most_common()
        named = ", ".join(f"{count} × {text!r}" for text, count in kinds[:REPORTED_KINDS])
        if len(kinds) > REPORTED_KINDS:
            rest = sum(count for _, count in kinds[REPORTED_KINDS:])
            named += f", {rest} of {len(kinds) - REPORTED_KINDS} other kinds"
        seconds = now - self._suppressed_since
        self._suppressed.clear()
        text = f"rate limit: {total} log lines suppressed in {seconds:.1f} s: {named}"
        _stderr(self.format_line(logging.WARNING, text))


def setup(prog: str, level: int) -> StderrHandler:
    """prguard's loggers and the root logger (asyncio's records, anything a library
    logs) all write through one handler."""
    handler = StderrHandler(prog)
    root = logging.getLogger("prguard")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
    logging.root.handlers[:] = [handler]
    logging.root.setLevel(logging.WARNING)
    return handler


def flush_suppressed() -> None:
    """Report lines the rate limit has dropped so far (the broker's periodic tick)."""
    for handler in logging.getLogger("prguard").handlers:
        if isinstance(handler, StderrHandler):
            handler.flush_suppressed()


def _write(fd: int, data: bytes) -> None:
    """Unbuffered, so a closed or full stream fails here and never again at exit."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # EPIPE, EBADF, ENOSPC: nobody left to tell


def _stderr(text: str) -> None:
    _write(2, f"{text}\n".encode(errors="replace"))


def line(text: str, level: int = logging.ERROR) -> None:
    """One whole line on stderr, whatever the verbosity (start-up errors)."""
    _stderr(with_priority(level, text))


def out(text: str) -> None:
    """--help and friends on stdout; write errors are ignored as the C helper does."""
    _write(1, text.encode(errors="replace"))
