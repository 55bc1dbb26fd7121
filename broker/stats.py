"""What the broker counts about its work: plain numbers, pure bookkeeping.

The request path adds to an int or a dict and puts a latency in a bucket: no
formatting, no lock (the broker is one thread), no clock of its own (the caller passes
the times it already has). Every few seconds the metrics file, the STATUS= line and the
watchdog read a snapshot of these numbers.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from prguard.shared.scsi import Opcode, Status

#: Upper bounds (seconds) of the latency buckets: from a request answered by the broker
#: alone (tens of microseconds) to one that waited for a device's SG_IO timeout.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Outcome:
    """How a request ended, as the metrics name it. Plain strings: the request path
    hashes them into a counter's key, and an Enum member hashes by a Python call."""

    GOOD = "good"
    RESERVATION_CONFLICT = "reservation_conflict"
    CHECK_CONDITION = "check_condition"  #: from the device; labelled with its sense key
    BUSY = "busy"
    TASK_SET_FULL = "task_set_full"
    OTHER_STATUS = "other_status"
    REFUSED_VALIDATION = "refused_validation"  #: the request rules, broker's or worker's
    REFUSED_POLICY = "refused_policy"  #: the tenant policy (--policy)
    REFUSED_AUDIT = "refused_audit"  #: a PR OUT whose audit record could not be written
    WORKER_TIMEOUT = "worker_timeout"  #: no answer within the worker deadline (a limit)
    WORKER_LOST = "worker_lost"  #: the worker died or broke the channel under it
    BAD_ANSWER = "bad_answer"  #: the worker answered what QEMU must not get


BY_STATUS: dict[int, str] = {int(Status.GOOD): Outcome.GOOD,
                             int(Status.RESERVATION_CONFLICT): Outcome.RESERVATION_CONFLICT,
                             int(Status.CHECK_CONDITION): Outcome.CHECK_CONDITION,
                             int(Status.BUSY): Outcome.BUSY,
                             int(Status.TASK_SET_FULL): Outcome.TASK_SET_FULL}


def device_outcome(status: int) -> str:
    """The outcome of a request the device answered."""
    return BY_STATUS.get(status, Outcome.OTHER_STATUS)


def sense_key(sense: bytes) -> int:
    """The sense key of a sense field, fixed (0x70/0x71) or descriptor (0x72/0x73) format;
    -1 when there is none."""
    if not sense:
        return -1
    code = sense[0] & 0x7F
    if code in (0x70, 0x71) and len(sense) > 2:
        return sense[2] & 0x0F
    if code in (0x72, 0x73) and len(sense) > 1:
        return sense[1] & 0x0F
    return -1


@dataclass
class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum, as Prometheus keeps them."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass
class LastError:
    """The most recent warning or error the broker logged (for STATUS=)."""

    at: float  #: wall-clock time
    text: str


class Stats:
    """The broker's counters. Everything here is touched from the event loop only."""

    def __init__(self, now: float | None = None) -> None:
        self.started = time.time() if now is None else now
        #: (opcode, service action, outcome, sense key or -1) -> requests
        self.requests: dict[tuple[int, int, str, int], int] = {}
        #: opcode -> latency from the request's last byte read to its reply sent
        self.latency: dict[int, Histogram] = {Opcode.PERSISTENT_RESERVE_IN: Histogram(),
                                              Opcode.PERSISTENT_RESERVE_OUT: Histogram()}
        #: the present state, as of the last report (the reporter fills these in)
        self.clients = 0
        self.connections_open = 0
        self.in_flight = 0
        self.connections_accepted = 0
        #: "max_connections" | "max_per_peer" -> connections closed at once
        self.connections_refused: Counter[str] = Counter()
        #: connections closed in their handshake to make room for a new one
        self.connections_evicted = 0
        #: "message" | "reply" -> connections closed for missing that deadline
        self.deadline_closes: Counter[str] = Counter()
        #: "protocol" -> connections closed for a protocol violation
        self.protocol_closes = 0
        self.worker_deaths = 0
        self.worker_healthy = True
        #: False once the broker is on its way out (the last file it writes says so)
        self.serving = True
        #: carried over from the previous instance's metrics file, then this one
        self.starts = 1
        self.last_error: LastError | None = None

    def request_done(self, opcode: int, action: int, outcome: str, key: int,
                     seconds: float) -> None:
        """One request answered: the request path's only call (about a microsecond)."""
        requests = self.requests
        counted = (opcode, action, outcome, key)
        requests[counted] = requests.get(counted, 0) + 1
        histogram = self.latency[opcode]
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def failed_requests(self) -> int:
        return sum(n for (_, _, outcome, _), n in self.requests.items()
                   if outcome != Outcome.GOOD)


def status_line(stats: Stats, now: float) -> str:
    """The one-line STATUS= summary: `serving 12 clients, 4821 requests (3 failed), last
    error 2 min ago: ...`."""
    clients = stats.clients
    text = (f"serving {clients} client{'' if clients == 1 else 's'}, "
            f"{stats.total_requests} request{'' if stats.total_requests == 1 else 's'}")
    failed = stats.failed_requests
    if failed:
        text += f" ({failed} failed)"
    if not stats.worker_healthy:
        text += ", WORKER NOT ANSWERING"
    if stats.last_error is None:
        return text + ", no errors"
    message = stats.last_error.text
    if len(message) > 160:
        message = message[:159] + "…"
    return f"{text}, last error {ago(now - stats.last_error.at)} ago: {message}"


def ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
