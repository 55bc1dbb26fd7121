"""Scripted conversations with a helper, for the differential tests: what it sent back,
byte for byte, and whether (and where) it closed the connection."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prguard.client.session import send_with_fds


@dataclass(frozen=True)
class Send:
    """Send `data`, with the fds named in `fds` attached."""

    data: bytes
    fds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recv:
    """Read up to `size` bytes (until that many, EOF, or a quiet period)."""

    size: int


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Shutdown:
    """Half-close: the helper reads EOF, we can still read its answer."""


@dataclass
class Transcript:
    """What a helper did in answer to a script: bytes per Recv, and whether it closed."""

    received: list[bytes] = field(default_factory=list)
    closed: bool = False
    closed_at_step: int | None = None


def _recv_some(sock: socket.socket, size: int, quiet: float) -> tuple[bytes, bool]:
    got = bytearray()
    while len(got) < size:
        ready, _, _ = select.select([sock], [], [], quiet)
        if not ready:
            break
        try:
            chunk = sock.recv(size - len(got))
        except ConnectionResetError:
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


Step = Send | Recv | Pause | Shutdown


def run_script(path: str, steps: Sequence[Step], fds: dict[str, int],
               quiet: float = 1.0, eof_wait: float = 1.0) -> Transcript:
    """Connect, run the steps, then wait `eof_wait` seconds to see whether it closes."""
    t = Transcript()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        for index, step in enumerate(steps):
            if isinstance(step, Pause):
                time.sleep(step.seconds)
            elif isinstance(step, Shutdown):
                sock.shutdown(socket.SHUT_WR)
            elif isinstance(step, Send):
                try:
                    send_with_fds(sock, step.data, [fds[n] for n in step.fds])
                except (BrokenPipeError, ConnectionResetError):
                    t.closed, t.closed_at_step = True, index
                    return t
            else:
                data, closed = _recv_some(sock, step.size, quiet)
                t.received.append(data)
                if closed:
                    t.closed, t.closed_at_step = True, index
                    return t
        data, closed = _recv_some(sock, 1 << 16, eof_wait)
        if data:
            t.received.append(data)
        if closed:
            t.closed, t.closed_at_step = True, len(steps)
    return t
