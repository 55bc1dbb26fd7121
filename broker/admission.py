"""Who may hold a connection: admission, eviction and whether to accept at all.

Pure bookkeeping over opaque connection keys (the socket shell uses its connection
objects); no sockets, no clock. The shell asks `admit` for every accepted connection,
closes the connection it is told to evict, reports the end of each handshake and each
close, and accepts only while `accepting` holds.

A peer is a client process (SO_PEERCRED pid): one QEMU is one VM, so a compromised
QEMU cannot take the slots of the others. The socket's own permissions decide who may
connect at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from prguard.broker.limits import Limits


@dataclass(frozen=True)
class Peer:
    """SO_PEERCRED of a client: who opened the connection."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


@dataclass(frozen=True)
class Admitted:
    """Serve the connection; first close `evict` (already released here), if any."""

    evict: Hashable | None = None
    evicted_peer: Peer | None = None


@dataclass(frozen=True)
class Refused:
    """Close the connection at once, for this reason."""

    reason: str
    #: which limit: "max_connections" or "max_per_peer" (the metrics' label)
    limit: str


class Admission:
    """Open connections, per peer and in all, and which of them are still in their
    handshake (the candidates for eviction, oldest first)."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._peers: dict[Hashable, Peer] = {}
        self._per_peer: Counter[int] = Counter()
        #: connections that have not completed their handshake, oldest first
        self._handshaking: dict[Hashable, None] = {}

    @property
    def total(self) -> int:
        return len(self._peers)

    @property
    def peers(self) -> int:
        """Client processes holding a connection."""
        return len(self._per_peer)

    @property
    def full(self) -> bool:
        return len(self._peers) >= self._limits.max_connections

    @property
    def accepting(self) -> bool:
        """Whether to accept now. With every slot taken and no handshaking connection
        to evict, connections wait in the backlog (then get EAGAIN) rather than being
        accepted only to be closed."""
        return not self.full or bool(self._handshaking)

    def admit(self, key: Hashable, peer: Peer) -> Admitted | Refused:
        """Count a new connection in, making room if needed, or say why it is refused.

        All slots taken: the oldest connection that has not even answered the handshake
        makes room (QEMU answers at once; a flood of silent connections must not lock a
        real client out until their deadlines pass), unless the newcomer's own peer is
        at its limit, which no eviction would change.
        """
        victim: Hashable | None = None
        victim_peer: Peer | None = None
        if self.full and self._per_peer[peer.pid] < self._limits.max_per_peer:
            for victim in self._handshaking:
                victim_peer = self._peers[victim]
                self.release(victim)
                break
        if self.full:
            return Refused(f"{self.total} connections open, the limit", "max_connections")
        if self._per_peer[peer.pid] >= self._limits.max_per_peer:
            return Refused(f"peer already holds {self._per_peer[peer.pid]} connections, "
                           "the limit", "max_per_peer")
        self._peers[key] = peer
        self._per_peer[peer.pid] += 1
        self._handshaking[key] = None
        return Admitted(victim, victim_peer)

    def handshake_done(self, key: Hashable) -> None:
        self._handshaking.pop(key, None)

    def release(self, key: Hashable) -> None:
        """The connection is closed (or was evicted): its slot is free. Releasing a key
        that holds no slot (already evicted) does nothing."""
        peer = self._peers.pop(key, None)
        if peer is None:
            return
        self._handshaking.pop(key, None)
        self._per_peer[peer.pid] -= 1
        if not self._per_peer[peer.pid]:
            del self._per_peer[peer.pid]
