"""prguard's named trace events and the -T/--trace option that selects them.

Same option forms as QEMU's: `[[enable=]PATTERN][,events=FILE][,file=FILE]`, repeatable;
PATTERN is a glob over event names, a leading '-' disables; an events file has one
pattern per line. `-T help` lists the events. Lines go to stderr or the file= file as
`<event> <unix time> key=value ...`.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

EVENTS: dict[str, str] = {
    "prguard_client_connect": "a QEMU client connected (peer pid, uid, gid)",
    "prguard_client_close": "a client connection ended (reason)",
    "prguard_request": "a complete request arrived (opcode, service action, length)",
    "prguard_refused": "the broker answered a request itself (reason, status, sense)",
    "prguard_forward": "a request went to the worker (request id)",
    "prguard_reply": "a reply went to the client (status, sense, data size)",
    "prguard_worker_lost": "the worker went away (reason)",
}


class TraceOptionError(ValueError):
    """A -T problem. `located` messages already carry their `file:line` prefix."""

    def __init__(self, message: str, located: bool = False) -> None:
        super().__init__(message)
        self.located = located


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass
class TraceSpec:
    """-T options, applied in order as QEMU applies them."""

    enabled: set[str] = field(default_factory=set)
    output: str | None = None
    want_help: bool = False

    def enable(self, pattern: str) -> bool:
        """Apply one pattern; False if it names no event (QEMU then warns)."""
        negate = pattern.startswith("-")
        glob = pattern[1:] if negate else pattern
        matched = {name for name in EVENTS if fnmatch.fnmatchcase(name, glob)}
        if negate:
            self.enabled -= matched
        else:
            self.enabled |= matched
        return bool(matched) or _is_glob(glob)

    def add(self, option: str, warn: Callable[[str], None]) -> None:
        """One -T argument. `warn` gets each warning as the text that follows `<prog>:`."""
        for part in option.split(","):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or key == "enable":
                pattern = value if sep else part
                if pattern == "help":
                    self.want_help = True
                elif not self.enable(pattern):
                    warn(f" warning: trace event '{pattern}' does not exist")
            elif key == "events":
                self._events_file(value, warn)
            elif key == "file":
                self.output = value
            else:
                raise TraceOptionError(f"Invalid parameter '{key}'")

    def _events_file(self, path: str, warn: Callable[[str], None]) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except IsADirectoryError:
            lines = []  # QEMU reads a directory as an empty list
        except OSError as exc:
            raise TraceOptionError(f"{path}: {exc.strerror}", located=True) from None
        for number, line in enumerate(lines, 1):
            pattern = line.strip()
            if not pattern or pattern.startswith("#"):
                continue
            if not self.enable(pattern):
                warn(f"{path}:{number}: warning: trace event '{pattern}' does not exist")


def help_text() -> str:
    return "".join(f"{name}\n" for name in EVENTS)


class Tracer:
    """Writes one line per enabled event: `<event> <unix time> key=value ...`."""

    def __init__(self, enabled: frozenset[str], sink: TextIO | None) -> None:
        self._enabled = enabled
        self._sink = sink

    @classmethod
    def disabled(cls) -> Tracer:
        return cls(frozenset(), None)

    def on(self, name: str) -> bool:
        return name in self._enabled

    def fileno(self) -> int | None:
        """The trace file's fd when it is not stderr (the broker's policy names it)."""
        if self._sink is None or not self._enabled:
            return None
        fd = self._sink.fileno()
        return None if fd == 2 else fd

    def emit(self, name: str, **values: object) -> None:
        if name not in self._enabled or self._sink is None:
            return
        fields = " ".join(f"{k}={v}" for k, v in values.items())
        try:
            self._sink.write(f"{name} {time.time():.6f} {fields}\n")
            self._sink.flush()
        except OSError:
            pass  # a closed trace sink (stderr pipe gone) must not stop service
