"""A tiny QMP client: greeting, qmp_capabilities, execute, events. Used on the host
(tests/test_qemu_interop.py) and inside the lab guest (lab/nested_outer.py)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from typing import Any

Json = dict[str, Any]


class QMPError(RuntimeError):
    """QEMU answered a command with an error, closed the monitor, or did not answer."""


class QMP:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.timeout = timeout
        self.buf = b""
        self.events: list[Json] = []
        self.greeting = self._read_message(timeout)
        if "QMP" not in self.greeting:
            raise QMPError(f"not a QMP greeting: {self.greeting}")
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: str, proc_alive: Callable[[], bool], timeout: float = 30.0) -> QMP:
        """Connect once QEMU has created its monitor socket (retrying until `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return cls(path, timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                if not proc_alive():
                    raise QMPError("QEMU exited before its QMP socket answered") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _read_message(self, timeout: float) -> Json:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError("no message from QEMU in time")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError("QEMU closed the QMP connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        message: Json = json.loads(line)
        return message

    def execute(self, command: str, arguments: Json | None = None) -> Any:
        request: Json = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message(self.timeout)
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise QMPError(f"{command}: {message['error']}")
            elif "return" in message:
                return message["return"]

    def poll_events(self, wait: float = 0.0) -> list[Json]:
        """Collect the events that arrive within `wait` s (and those already buffered)."""
        end = time.monotonic() + wait
        while True:
            if b"\n" not in self.buf:
                ready, _, _ = select.select([self.sock], [], [],
                                            max(0.0, end - time.monotonic()))
                if not ready:
                    return self.events
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise QMPError("QEMU closed the QMP connection")
                self.buf += chunk
                continue
            line, self.buf = self.buf.split(b"\n", 1)
            message: Json = json.loads(line)
            if "event" in message:
                self.events.append(message)

    def wait_event(self, name: str, timeout: float, start: int = 0,
                   match: Callable[[Json], bool] = lambda e: True) -> Json:
        """The first event `name` at index >= `start` of self.events matching `match`."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[start:]:
                if event["event"] == name and match(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"no {name} event within {timeout} s; got {self.events[start:]}")
            self.poll_events(min(left, 0.5))

    def close(self) -> None:
        self.sock.close()
