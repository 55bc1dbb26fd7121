"""How much one client, one peer and everyone together may hold, and for how long.

The numbers only; broker/admission.py applies the connection limits.
"""

from __future__ import annotations

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
