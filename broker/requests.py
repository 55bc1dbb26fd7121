"""Answering one request: the broker's own checks, the hand-over to the worker, and the
one place where the broker knows what a request came to (`Requests.settle`).

No sockets here except the channel behind WorkerClient; the connection shell hands in a
complete request and gets the encoded reply back through a callback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from prguard.broker.admission import Peer
from prguard.broker.multipath import Multipath
from prguard.broker.stats import BY_STATUS, Outcome, Stats, sense_key
from prguard.broker.trace import Tracer
from prguard.broker.worker_client import Answer, NoAnswer, WorkerClient, WorkerLost
from prguard.shared import fdcheck
from prguard.shared.messages import Refused
from prguard.shared.qemu_protocol import PrRequest, ReplyNotAllowed, ServerConnection
from prguard.shared.rules import FdFacts, FdKind, check_request
from prguard.shared.scsi import Opcode, PrReply, Sense, Status, service_action

log = logging.getLogger("prguard.broker")

#: What the broker answers when it cannot vouch for the outcome (worker lost, no answer
#: in time, an answer QEMU must not get): never GOOD.
UNKNOWN_OUTCOME = PrReply.generated(Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE)

OnReply = Callable[[bytes], None]
_CHECK_CONDITION = int(Status.CHECK_CONDITION)
_ACCESS_DENIED = Sense.ACCESS_DENIED.fixed_format()
_NO_RECORD = Sense.TARGET_FAILURE.fixed_format()


def cdb_text(cdb: bytes) -> str:
    """A request as log lines name it: `PR IN sa 0x00 len 8192`."""
    name = "PR IN" if cdb[0] == Opcode.PERSISTENT_RESERVE_IN else "PR OUT"
    return f"{name} sa {service_action(cdb):#04x} len {int.from_bytes(cdb[7:9], 'big')}"


def sense_text(reply: PrReply) -> str:
    if reply.status != Status.CHECK_CONDITION:
        return "-"
    return f"{reply.sense[2] & 0xF:02x}/{reply.sense[12]:02x}/{reply.sense[13]:02x}"


class Requests:
    """Every request of every connection goes through `answer`, and every reply
    through `settle`."""

    def __init__(self, worker: WorkerClient, tracer: Tracer, stats: Stats,
                 clock: Callable[[], float], multipath: Multipath | None = None) -> None:
        self._worker = worker
        #: with multipath on: device-mapper maps are served by translation
        self._multipath = multipath
        self._tracer = tracer
        self._stats = stats
        self._clock = clock
        #: every request goes to the worker, refusals included, to be recorded
        self.forward_refusals = False

    def answer(self, conn: ServerConnection, request: PrRequest, peer: Peer,
               on_reply: OnReply, client: int = 0) -> None:
        """Answer `request` (whose fd this takes over): at once if the broker's own
        checks refuse it, else once the worker has answered. `on_reply` gets the encoded
        reply, from this call or later from the loop. `client` is the connection as the
        worker knows it (0: clients are not identified).

        With an audit log the broker refuses nothing itself: every request goes to the
        worker, which applies the same rules, gives the same answer and records it."""
        started = self._clock()
        tracer = self._tracer
        if tracer.on("prguard_request"):
            tracer.emit("prguard_request", pid=peer.pid, opcode=hex(request.cdb[0]),
                        sa=hex(service_action(request.cdb)), length=request.transfer_length)
        try:
            # What fstat and fcntl tell; what sysfs tells (a partition?) the worker
            # decides: the broker reads no file.
            facts = fdcheck.inspect_fd(request.fd, with_sysfs=False)
        except OSError:
            facts = FdFacts(FdKind.OTHER, read_only=True)
        verdict = check_request(request.cdb, facts)
        if verdict is not None and not self.forward_refusals:
            os.close(request.fd)
            reply = PrReply(verdict.status, verdict.sense_bytes)
            if tracer.on("prguard_refused"):
                tracer.emit("prguard_refused", pid=peer.pid, reason=repr(verdict.reason),
                            status=hex(reply.status), sense=str(verdict.sense))
            if log.isEnabledFor(logging.INFO):  # the request path: format only if shown
                log.info("%s: %s -> %s (%s)", peer, cdb_text(request.cdb),
                         verdict.sense, verdict.reason)
            on_reply(self.settle(conn, request, peer, reply, started, logged=True,
                                 outcome=Outcome.REFUSED_VALIDATION))
            return

        if (verdict is None and self._multipath is not None
                and self._multipath.routes(facts)):  # a refusal goes to be recorded
            self._multipath.answer(
                request, facts, peer, client,
                lambda reply, logged, outcome: on_reply(
                    self.settle(conn, request, peer, reply, started, logged, outcome)),
                lambda: self._forward(conn, request, peer, on_reply, started, client))
            return
        self._forward(conn, request, peer, on_reply, started, client)

    def _forward(self, conn: ServerConnection, request: PrRequest, peer: Peer,
                 on_reply: OnReply, started: float, client: int) -> None:
        """To the worker, with the request's fd (taken over)."""

        def on_answer(answer: Answer) -> None:
            reply, logged, outcome = self._reply_for(answer, request, peer)
            on_reply(self.settle(conn, request, peer, reply, started, logged, outcome))

        self._worker.forward(request.cdb, request.parameter_list, request.fd, on_answer,
                             client)

    def _reply_for(self, answer: Answer, request: PrRequest, peer: Peer
                   ) -> tuple[PrReply, bool, str | None]:
        """The reply for the worker's answer, whether that has been logged, and the
        outcome if it is not the device's."""
        if isinstance(answer, WorkerLost):
            log.error("%s: %s: outcome unknown, worker lost (%s)", peer,
                      cdb_text(request.cdb), answer.reason)
            return UNKNOWN_OUTCOME, True, Outcome.WORKER_LOST
        if isinstance(answer, NoAnswer):
            log.error("%s: %s: no answer from the worker within %g s; outcome unknown", peer,
                      cdb_text(request.cdb), answer.seconds)
            return UNKNOWN_OUTCOME, True, Outcome.WORKER_TIMEOUT
        if isinstance(answer, Refused):  # a partition, or checks the broker cannot make
            reply = PrReply(answer.status, answer.sense)
            if self._tracer.on("prguard_refused"):
                self._tracer.emit("prguard_refused", pid=peer.pid, reason=repr(answer.reason),
                                  status=hex(reply.status), sense=sense_text(reply))
            if answer.sense == _ACCESS_DENIED:
                log.warning("%s: %s refused by the policy: %s", peer, cdb_text(request.cdb),
                            answer.reason)
                return reply, True, Outcome.REFUSED_POLICY
            if answer.sense == _NO_RECORD and "audit record" in answer.reason:
                return reply, True, Outcome.REFUSED_AUDIT  # the worker said so loudly
            if log.isEnabledFor(logging.INFO):
                log.info("%s: %s -> %s (%s; the worker's answer)", peer,
                         cdb_text(request.cdb), sense_text(reply), answer.reason)
            return reply, True, Outcome.REFUSED_VALIDATION
        return answer.reply, False, None

    def settle(self, conn: ServerConnection, request: PrRequest, peer: Peer,
               reply: PrReply, started: float, logged: bool = False,
               outcome: str | None = None) -> bytes:
        """The reply QEMU gets for `request`, encoded: where the broker's part of a
        request ends, whatever it came to, and where it is counted (`outcome`: None when
        the device answered). A reply QEMU must not get (data where the protocol allows
        none) becomes UNKNOWN_OUTCOME here."""
        try:
            wire = conn.send_reply(reply)
        except ReplyNotAllowed as exc:
            log.error("%s: worker answered %d data bytes for %s (%s); not passed on", peer,
                      len(reply.data), cdb_text(request.cdb), exc)
            reply = UNKNOWN_OUTCOME
            wire = conn.send_reply(reply)
            outcome = Outcome.BAD_ANSWER
        cdb = request.cdb
        status = reply.status
        self._stats.request_done(
            cdb[0], cdb[1] & 0x1F,
            BY_STATUS.get(status, Outcome.OTHER_STATUS) if outcome is None else outcome,
            sense_key(reply.sense) if status == _CHECK_CONDITION else -1,
            self._clock() - started)
        if not logged and log.isEnabledFor(logging.INFO):
            log.info("%s: %s -> status %#04x sense %s, %d bytes", peer,
                     cdb_text(request.cdb), reply.status, sense_text(reply),
                     len(reply.data))
        if self._tracer.on("prguard_reply"):
            self._tracer.emit("prguard_reply", pid=peer.pid, status=hex(reply.status),
                              sense=sense_text(reply), size=len(reply.data))
        return wire
