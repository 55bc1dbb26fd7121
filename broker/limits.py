"""How much one client, one peer and everyone together may hold: pure bookkeeping.

A peer is a client process (SO_PEERCRED pid): one QEMU is one VM, so a compromised QEMU
cannot take the slots of the others. The socket's own permissions decide who may
connect at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PER_PEER = 32
#: Seconds a client may take to complete a message once it has started one (the
#: handshake counts from connect). Idle time between requests is not limited: QEMU keeps
#: its connection for the VM's lifetime.
DEFAULT_MESSAGE_DEADLINE = 5.0
#: Seconds a reply may wait for a client that does not read.
DEFAULT_REPLY_DEADLINE = 5.0
#: Added to the SG_IO timeout before the broker gives up on the worker for a request.
WORKER_GRACE = 5.0


@dataclass(frozen=True)
class Limits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_peer: int = DEFAULT_MAX_PER_PEER
    message_deadline: float = DEFAULT_MESSAGE_DEADLINE
    reply_deadline: float = DEFAULT_REPLY_DEADLINE
    worker_deadline: float = 30.0 + WORKER_GRACE

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_per_peer < 1:
            raise ValueError("connection limits must be at least 1")
        if min(self.message_deadline, self.reply_deadline, self.worker_deadline) <= 0:
            raise ValueError("deadlines must be positive")


class Admission:
    """Open connections, per peer and in all."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._per_peer: Counter[int] = Counter()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    @property
    def full(self) -> bool:
        return self._total >= self._limits.max_connections

    def at_peer_limit(self, peer: int) -> bool:
        return self._per_peer[peer] >= self._limits.max_per_peer

    def admit(self, peer: int) -> str | None:
        """Count the connection in, or say why it is refused."""
        if self.full:
            return f"{self._total} connections open, the limit"
        if self._per_peer[peer] >= self._limits.max_per_peer:
            return f"peer already holds {self._per_peer[peer]} connections, the limit"
        self._per_peer[peer] += 1
        self._total += 1
        return None

    def release(self, peer: int) -> None:
        if self._per_peer[peer] <= 0:
            raise ValueError(f"release of peer {peer} that holds no connection")
        self._per_peer[peer] -= 1
        if not self._per_peer[peer]:
            del self._per_peer[peer]
        self._total -= 1
