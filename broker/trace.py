"""prguard's named trace events and the -T/--trace option that selects them.

Same option forms as QEMU's: `[[enable=]PATTERN][,events=FILE][,file=FILE]`, repeatable;
PATTERN is a glob over event names, a leading '-' disables. `-T help` lists the events.
"""

from __future__ import annotations

import fnmatch
import time
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
    pass


@dataclass
class TraceSpec:
    """Accumulated -T options."""

    patterns: list[str] = field(default_factory=list)
    events_files: list[str] = field(default_factory=list)
    output: str | None = None
    want_help: bool = False

    def add(self, option: str) -> None:
        for part in option.split(","):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep:
                if part == "help":
                    self.want_help = True
                else:
                    self.patterns.append(part)
            elif key == "enable":
                self.patterns.append(value)
            elif key == "events":
                self.events_files.append(value)
            elif key == "file":
                self.output = value
            else:
                raise TraceOptionError(f"Invalid parameter '{key}'")


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

    def emit(self, name: str, **values: object) -> None:
        if name not in self._enabled or self._sink is None:
            return
        fields = " ".join(f"{k}={v}" for k, v in values.items())
        try:
            self._sink.write(f"{name} {time.time():.6f} {fields}\n")
            self._sink.flush()
        except OSError:
            pass  # a closed trace sink (stderr pipe gone) must not stop service


def resolve(patterns: list[str], warn: list[str]) -> frozenset[str]:
    """Event names the patterns enable; unknown literal names are reported in `warn`."""
    enabled: set[str] = set()
    for pattern in patterns:
        negate = pattern.startswith("-")
        glob = pattern[1:] if negate else pattern
        matched = {name for name in EVENTS if fnmatch.fnmatchcase(name, glob)}
        if not matched and not any(c in glob for c in "*?["):
            warn.append(f"trace event '{glob}' does not exist")
        enabled = enabled - matched if negate else enabled | matched
    return frozenset(enabled)
