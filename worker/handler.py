"""What the worker does with one datagram: decode, re-validate, run, answer.

Pure decisions over the datagram and fd facts; the SG_IO itself is injected so the
receiving thread runs it through the per-device gate and tests can see every refusal
without a device. Each message type the worker accepts has its handler in `HANDLERS`;
anything else it is sent is Malformed.

At -vvv the worker logs every SG_IO it issued, one line each, after the call:

    worker: request 7: SG_IO on 7:0 cdb 5e00...00 -> errno EINVAL host 0x00 driver 0x00
    status 0x00 resid 0; reply status 0x02 sense 05/24/00, 0 bytes

(on one line). It names the device (major:minor), the CDB, what the kernel answered and
what the broker is sent. Operators see what reached the device; the tests use it to
tell a request that reached SG_IO from a refusal with the same answer (SG_IO on a loop
device fails with EINVAL, which maps to 05/24/00 like a refusal). Keep its format.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    Alive,
    Forget,
    Identified,
    Identify,
    Malformed,
    Message,
    MsgType,
    PolicyReloaded,
    Probe,
    Refused,
    ReloadPolicy,
    SgIoRequest,
    SgIoResult,
    decode,
)
from prguard.shared.rules import FdFacts, FdKind, check_framing, check_request
from prguard.shared.scsi import Opcode, PrReply, Sense, Status, transfer_length
from prguard.worker.guard import Admitted, Guard, Refusal
from prguard.worker.outcome import map_outcome
from prguard.worker.sgio import SgIoOutcome

log = logging.getLogger("prguard.worker")


class Job(NamedTuple):
    """A request that passed every check and may go to the device."""

    request: SgIoRequest
    fd: int
    rdev: int
    #: st_mode's file type of the fd (block or character device)
    file_type: int = stat.S_IFBLK


#: What screening a datagram comes to: work for the device, the answer to send, or
#: nothing to answer (Forget).
Screened = Job | Message | None
#: A message type's handler: the decoded message, its fd, the facts about that fd (None
#: when there was no fd or it could not be inspected) and the guard (None when neither
#: audit nor policy is on).
Handler = Callable[[Message, int | None, FdFacts | None, Guard | None], Screened]


def screen(datagram: bytes, fd: int | None, facts: FdFacts | None,
           guard: Guard | None = None) -> Screened:
    """Turn a datagram into a Job, or into the answer that refuses it.

    `facts` is None when there was no fd (or it could not be inspected).
    """
    try:
        message = decode(datagram)
    except ChannelError as exc:
        return Malformed(str(exc)[:200])
    handler = HANDLERS.get(message.TYPE)
    if handler is None:
        return Malformed(f"{type(message).__name__} is not a request")
    return handler(message, fd, facts, guard)


def file_type(facts: FdFacts | None) -> int | None:
    """The st_mode file type the device identity lookup wants, None for no device."""
    if facts is None:
        return None
    if facts.kind is FdKind.SCSI_GENERIC:
        return stat.S_IFCHR
    if facts.kind in (FdKind.BLOCK_DISK, FdKind.PARTITION):
        return stat.S_IFBLK
    return None


def _sg_io_request(message: Message, fd: int | None, facts: FdFacts | None,
                   guard: Guard | None) -> Screened:
    """Re-validate everything the broker already checked: the worker trusts nobody."""
    assert isinstance(message, SgIoRequest)
    request = message
    problem = check_framing(request.cdb, len(request.data))
    if problem is None and (fd is None or facts is None):
        problem = "no usable fd with the request"
    if problem is not None:
        return Refused(request.id, Status.CHECK_CONDITION, Sense.INVALID_FIELD.fixed_format(),
                       problem)
    assert fd is not None and facts is not None
    verdict = check_request(request.cdb, facts)
    if verdict is not None:
        if guard is not None:
            guard.rules_refusal(guard.clients.get(request.connection), request.cdb,
                                request.data, file_type(facts), facts.rdev,
                                int(verdict.status), verdict.sense, verdict.reason)
        return Refused(request.id, verdict.status, verdict.sense_bytes, verdict.reason)
    return Job(request, fd, facts.rdev, file_type(facts) or stat.S_IFBLK)


def _identify(message: Message, fd: int | None, facts: FdFacts | None,
              guard: Guard | None) -> Screened:
    """A new client connection: who it is, read from the pidfd that came with it."""
    assert isinstance(message, Identify)
    if guard is None:
        return Malformed("Identify while neither audit nor policy is on")
    guard.identify(message.connection, message.pid, message.uid, message.gid, fd)
    return Identified(message.id)


def _forget(message: Message, fd: int | None, facts: FdFacts | None,
            guard: Guard | None) -> Screened:
    assert isinstance(message, Forget)
    if guard is None:
        return Malformed("Forget while neither audit nor policy is on")
    guard.clients.remove(message.connection)
    return None


def _reload_policy(message: Message, fd: int | None, facts: FdFacts | None,
                   guard: Guard | None) -> Screened:
    assert isinstance(message, ReloadPolicy)
    if guard is None:
        return PolicyReloaded(message.id, False, "no --policy was given")
    ok, reason = guard.reload_policy()
    return PolicyReloaded(message.id, ok, reason[:200])


def _probe(message: Message, fd: int | None, facts: FdFacts | None,
           guard: Guard | None) -> Screened:
    """The watchdog's question, answered by the thread that took it: it is free. A probe
    carries no fd; one that does is a broker that does not follow the protocol."""
    assert isinstance(message, Probe)
    if fd is not None:
        return Malformed("a probe with an fd")
    return Alive(message.id)


HANDLERS: dict[MsgType, Handler] = {
    MsgType.SGIO_REQUEST: _sg_io_request,
    MsgType.PROBE: _probe,
    MsgType.IDENTIFY: _identify,
    MsgType.FORGET: _forget,
    MsgType.RELOAD_POLICY: _reload_policy,
}


def run(job: Job, sg_io: Callable[[int, bytes, bytes], SgIoOutcome],
        guard: Guard | None = None) -> SgIoResult | Refused:
    cdb = job.request.cdb
    admitted: Admitted | None = None
    if guard is not None:
        verdict = guard.before(guard.clients.get(job.request.connection), cdb,
                               job.request.data, job.file_type, job.rdev)
        if isinstance(verdict, Refusal):
            return Refused(job.request.id, verdict.status, verdict.sense.fixed_format(),
                           verdict.reason)
        admitted = verdict
    outcome = sg_io(job.fd, cdb, job.request.data)
    reply = map_outcome(outcome, transfer_length(cdb), cdb[0] == Opcode.PERSISTENT_RESERVE_IN)
    if log.isEnabledFor(logging.DEBUG):  # the request path: format only if shown
        log.debug("worker: request %d: SG_IO on %d:%d cdb %s -> errno %s host %#04x "
                  "driver %#04x status %#04x resid %d; reply status %#04x sense %s, %d bytes",
                  job.request.id, os.major(job.rdev), os.minor(job.rdev), cdb.hex(),
                  errno.errorcode.get(outcome.errno, str(outcome.errno)), outcome.host_status,
                  outcome.driver_status, outcome.status, outcome.resid, reply.status,
                  f"{reply.sense[2] & 0xF:02x}/{reply.sense[12]:02x}/{reply.sense[13]:02x}"
                  if reply.status == Status.CHECK_CONDITION else "-", len(reply.data))
    if admitted is not None:
        assert guard is not None
        replaced = guard.after(admitted, outcome, reply.status, reply.sense)
        if replaced is not None:
            reply = PrReply.generated(Status(replaced.status), replaced.sense)
    return SgIoResult(job.request.id, reply)
