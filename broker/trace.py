"""Writing prguard's trace events (shared/trace_events.py) at run time, one line each:
`<event> <unix time> key=value ...`, to stderr or the -T file= file.
"""

from __future__ import annotations

import time
from typing import TextIO


class Tracer:
    """Writes one line per enabled event: `<event> <unix time> key=value ...`."""

    def __init__(self, enabled: frozenset[str], sink: TextIO | None) -> None:
        self._enabled = enabled
        self._sink = sink

    def on(self, name: str) -> bool:
        return name in self._enabled

    def fileno(self) -> int | None:
        """The trace file's fd when it is not stderr (the broker's seccomp policy names it)."""
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
