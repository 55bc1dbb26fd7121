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
from collections.abc import Callable
from typing import NamedTuple

from prguard.shared.errors import ChannelError
from prguard.shared.messages import (
    Alive,
    Malformed,
    Message,
    MsgType,
    Probe,
    Refused,
    SgIoRequest,
    SgIoResult,
    decode,
)
from prguard.shared.rules import FdFacts, check_framing, check_request
from prguard.shared.scsi import Opcode, Sense, Status, transfer_length
from prguard.worker.outcome import map_outcome
from prguard.worker.sgio import SgIoOutcome

log = logging.getLogger("prguard.worker")


class Job(NamedTuple):
    """A request that passed every check and may go to the device."""

    request: SgIoRequest
    fd: int
    rdev: int


#: What screening a datagram comes to: work for the device, or the answer to send.
Screened = Job | Message
#: A message type's handler: the decoded message, its fd and the facts about that fd
#: (None when there was no fd or it could not be inspected).
Handler = Callable[[Message, int | None, FdFacts | None], Screened]


def screen(datagram: bytes, fd: int | None, facts: FdFacts | None) -> Screened:
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
    return handler(message, fd, facts)


def _sg_io_request(message: Message, fd: int | None, facts: FdFacts | None) -> Screened:
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
        return Refused(request.id, verdict.status, verdict.sense_bytes, verdict.reason)
    return Job(request, fd, facts.rdev)


def _probe(message: Message, fd: int | None, facts: FdFacts | None) -> Screened:
    """The watchdog's question, answered by the thread that took it: it is free. A probe
    carries no fd; one that does is a broker that does not follow the protocol."""
    assert isinstance(message, Probe)
    if fd is not None:
        return Malformed("a probe with an fd")
    return Alive(message.id)


HANDLERS: dict[MsgType, Handler] = {
    MsgType.SGIO_REQUEST: _sg_io_request,
    MsgType.PROBE: _probe,
}


def run(job: Job, sg_io: Callable[[int, bytes, bytes], SgIoOutcome]) -> SgIoResult:
    cdb = job.request.cdb
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
    return SgIoResult(job.request.id, reply)
