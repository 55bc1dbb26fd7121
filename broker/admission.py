"""Who may hold a connection, and who gives one up when every slot is taken.

Pure bookkeeping over opaque connection keys (the socket shell uses its connection
objects); no sockets, no clock. The shell asks `admit` for every accepted connection,
closes the connection it is told to evict, reports the end of each handshake, each
request taken and answered, and each close. It accepts all the time: a newcomer is let in
by making room, or refused at once, never left waiting in the backlog behind a flood.

Who holds a connection is a tenant and a process. The tenant is what one party may hold
across all its processes: its uid (SO_PEERCRED) for now, decided in one place
(`tenant_of`); a client identity that names the VM (its cgroup) can take its place
without changing the rules. One QEMU is one process.

- A process holds at most `max_per_peer` connections (a QEMU needs one per pr-manager
  object); past that it is refused: it is the one asking too much.
- Everyone together holds at most `max_connections`. A newcomer is not refused because
  all are taken: room is made by closing a connection of the tenant that holds the most,
  if that is more than the newcomer's tenant holds; if the newcomer's own tenant holds the
  most, of its process that holds the most, if that is more than the newcomer's process
  holds. A client that holds nothing is therefore always let in, and a party that floods,
  from one process or many, from one uid or many, only ever displaces its own
  connections once it holds the most.
- Of that process, a connection still in its handshake goes first, then an idle one,
  then one with a request in flight (its client sees the connection close, as when a
  helper restarts: QEMU reconnects and retries); the newest first among equals, so a
  party that keeps opening connections closes its own.
- Connections are never closed for being idle: QEMU keeps its connection for the VM's
  life, and idle connections cost nothing until someone needs the room.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field

from prguard.broker.limits import Limits


@dataclass(frozen=True)
class Peer:
    """SO_PEERCRED of a client: who opened the connection."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def tenant_of(peer: Peer) -> Hashable:
    """The party a connection counts against beside its process: the client's uid (the
    seam for a client identity that names the VM, such as its cgroup)."""
    return ("uid", peer.uid)


class Phase(enum.IntEnum):
    """What a connection is doing; the lower, the sooner it makes room."""

    HANDSHAKE = 0
    IDLE = 1
    BUSY = 2  #: a request between its last byte read and its reply sent


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


@dataclass
class _Process:
    peer: Peer
    #: its connections in order of arrival, and what each is doing
    connections: dict[Hashable, Phase] = field(default_factory=dict)


@dataclass
class _Tenant:
    #: its processes in the order they came
    processes: dict[int, _Process] = field(default_factory=dict)
    count: int = 0


class Admission:
    """Open connections, by tenant and process, and in all."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        #: tenants in the order they came
        self._tenants: dict[Hashable, _Tenant] = {}
        self._held: dict[Hashable, tuple[Hashable, int]] = {}  # key -> (tenant, pid)

    @property
    def total(self) -> int:
        return len(self._held)

    @property
    def peers(self) -> int:
        """Client processes holding a connection."""
        return sum(len(t.processes) for t in self._tenants.values())

    @property
    def full(self) -> bool:
        return self.total >= self._limits.max_connections

    def held_by(self, peer: Peer) -> tuple[int, int]:
        """(connections its tenant holds, connections its process holds)."""
        tenant = self._tenants.get(tenant_of(peer))
        if tenant is None:
            return 0, 0
        process = tenant.processes.get(peer.pid)
        return tenant.count, len(process.connections) if process else 0

    def admit(self, key: Hashable, peer: Peer) -> Admitted | Refused:
        """Count a new connection in, making room if needed, or say why it is refused."""
        if key in self._held:
            raise ValueError(f"connection {key!r} admitted twice")
        in_tenant, in_process = self.held_by(peer)
        if in_process >= self._limits.max_per_peer:
            return Refused(f"its process already holds {in_process} connections, the limit "
                           f"per client process", "max_per_peer")
        evicted: tuple[Hashable, Peer] | None = None
        if self.full:
            evicted = self._victim(peer, in_tenant, in_process)
            if evicted is None:
                return Refused(f"{self.total} connections open, the limit, and its uid and "
                               f"process hold as many as any other", "max_connections")
            self.release(evicted[0])
        tenant = self._tenants.setdefault(tenant_of(peer), _Tenant())
        tenant.processes.setdefault(peer.pid, _Process(peer)).connections[key] = \
            Phase.HANDSHAKE
        tenant.count += 1
        self._held[key] = (tenant_of(peer), peer.pid)
        return Admitted(*evicted) if evicted else Admitted()

    def handshake_done(self, key: Hashable) -> None:
        self._set(key, Phase.IDLE)

    def busy(self, key: Hashable, busy: bool) -> None:
        """A request was taken on the connection (True) or its reply sent (False)."""
        self._set(key, Phase.BUSY if busy else Phase.IDLE)

    def release(self, key: Hashable) -> None:
        """The connection is closed (or was evicted): its slot is free. Releasing a key
        that holds no slot (already evicted) does nothing."""
        where = self._held.pop(key, None)
        if where is None:
            return
        tenant = self._tenants[where[0]]
        process = tenant.processes[where[1]]
        del process.connections[key]
        tenant.count -= 1
        if not process.connections:
            del tenant.processes[where[1]]
        if not tenant.count:
            del self._tenants[where[0]]

    def _set(self, key: Hashable, phase: Phase) -> None:
        where = self._held.get(key)
        if where is not None:  # else evicted meanwhile: nothing to record
            self._tenants[where[0]].processes[where[1]].connections[key] = phase

    def _victim(self, newcomer: Peer, in_tenant: int,
                in_process: int) -> tuple[Hashable, Peer] | None:
        """The connection to close so that `newcomer` gets in, or None."""
        own = tenant_of(newcomer)
        others = [t for t in self._tenants if t != own]
        # Among equals, the newest: a party that keeps coming back displaces itself.
        biggest = max(reversed(others), key=lambda t: self._tenants[t].count, default=None)
        exclude: int | None = None
        if biggest is not None and self._tenants[biggest].count > in_tenant:
            tenant = self._tenants[biggest]
        elif in_tenant:  # its own tenant holds the most: room from its biggest process
            tenant, exclude = self._tenants[own], newcomer.pid
        else:
            return None
        candidates = [p for p in tenant.processes.values() if p.peer.pid != exclude]
        process = max(reversed(candidates), key=lambda p: len(p.connections), default=None)
        if process is None or (exclude is not None and len(process.connections) <= in_process):
            return None  # the newcomer's process holds as many as any of its tenant's
        connections = process.connections
        return min(reversed(connections), key=lambda k: connections[k]), process.peer


class PeerLog:
    """How often the broker tells about one tenant: the first event of a window is told at
    once; later ones in the window are counted, and their number goes with the next line
    told about that tenant."""

    LIMIT = 1024

    def __init__(self, window: float = 10.0) -> None:
        self._window = window
        self._since: dict[Hashable, float] = {}
        self._held_back: dict[Hashable, int] = {}

    def allow(self, tenant: Hashable, now: float) -> int | None:
        """None: do not log this event. Else log it, saying that this many were held back
        since the last line about this tenant."""
        start = self._since.get(tenant)
        if start is not None and now - start < self._window:
            self._held_back[tenant] = self._held_back.get(tenant, 0) + 1
            return None
        if len(self._since) >= self.LIMIT:  # forget quiet tenants (bounded memory)
            for quiet in [t for t, s in self._since.items()
                          if now - s >= self._window and t not in self._held_back]:
                del self._since[quiet]
        self._since[tenant] = now
        return self._held_back.pop(tenant, 0)
