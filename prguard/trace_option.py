"""The -T/--trace option: which of prguard's trace events to write, and where.

Same option forms as QEMU's: `[[enable=]PATTERN][,events=FILE][,file=FILE]`, repeatable;
PATTERN is a glob over event names, a leading '-' disables; an events file has one
pattern per line. `-T help` lists the events.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from prguard.shared.trace_events import EVENTS


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
