"""The request path's pieces, each timed in-process on the real code (µs per call).

What each process does for one READ KEYS on a loop device, split as the profile reports
it: parse (the QEMU bytes into a request / the datagram into a message), check (fd facts
and the request rules), encode (the message to the other process), ioctl (SG_IO and
building its header), decode (the other process's message), reply (mapping the outcome
/ settling and encoding the reply). Whatever a process spends beyond the sum of its
pieces is system calls for sockets and the cost of being woken (the event loop, context
switches, cross-vCPU wake-ups), which only the whole-process figures show.
"""

from __future__ import annotations

import os
import time
import timeit
from collections.abc import Callable

from prguard.broker.requests import Requests
from prguard.broker.stats import Stats, device_outcome, sense_key
from prguard.broker.trace import Tracer
from prguard.shared import fdcheck
from prguard.shared.messages import SgIoRequest, SgIoResult, decode
from prguard.shared.qemu_protocol import (
    PrRequest,
    ServerConnection,
    encode_reply,
    reply_fault,
)
from prguard.shared.rules import check_request
from prguard.shared.scsi import PrReply, Sense, Status
from prguard.worker import handler, sgio
from prguard.worker.outcome import map_outcome

CDB = bytes([0x5E, 0, 0, 0, 0, 0, 0]) + (8192).to_bytes(2, "big") + bytes(7)
REPEAT = 5


def _time(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=REPEAT)) / number * 1e6


def measure(device: str, number: int = 5000) -> dict[str, dict[str, float]]:
    """{process: {piece: µs per request}} for the broker and the worker."""
    fd = os.open(device, os.O_RDWR)
    try:
        conn = ServerConnection()
        conn.initiate()
        conn.receive_data(bytes(4))
        conn.next_event()
        # only its settle() runs here, which needs no worker
        stats = Stats()
        started = time.monotonic()
        requests = Requests(None, Tracer(frozenset(), None),  # type: ignore[arg-type]
                            stats, time.monotonic)
        result = SgIoResult(1, PrReply(Status.CHECK_CONDITION, Sense.INVALID_FIELD.fixed_format()))
        result_wire = result.encode()
        request_wire = SgIoRequest(1, CDB, b"").encode()
        facts = fdcheck.inspect_fd(fd, with_sysfs=True)
        outcome = sgio.issue(fd, CDB, b"", 30000)
        job = handler.screen(request_wire, fd, facts)
        assert isinstance(job, handler.Job)

        def parse_only() -> None:
            conn.wanted()
            conn.receive_data(CDB, (fd,))
            conn.next_event()
            conn._state = type(conn._state).RECV_CDB  # back to waiting for a CDB
            conn._pending = None

        conn.wanted()
        conn.receive_data(CDB, (fd,))
        pending = conn.next_event()
        assert isinstance(pending, PrRequest)
        conn._state = type(conn._state).RECV_CDB  # back to waiting for a CDB
        conn._pending = None

        def settle_parts(request: PrRequest) -> None:
            """What settle() does beyond the state change: the rule, the encoding, the
            count (broker/stats.py), the checks for logging and tracing."""
            reply = result.reply
            reply_fault(request, reply)
            encode_reply(reply)
            stats.request_done(request.cdb[0], request.cdb[1] & 0x1F,
                               device_outcome(reply.status), sense_key(reply.sense),
                               time.monotonic() - started)
            requests._tracer.on("prguard_reply")

        parse = _time(parse_only, number)
        broker = {
            "parse": parse,
            "check": _time(lambda: check_request(CDB, fdcheck.inspect_fd(fd, with_sysfs=False)),
                           number),
            "encode": _time(lambda: SgIoRequest(1, CDB, b"").encode(), number),
            "decode": _time(lambda: decode(result_wire), number),
            "reply": _time(lambda: settle_parts(pending), number),
        }
        worker = {
            "parse": _time(lambda: decode(request_wire), number),
            "check": _time(lambda: handler.screen(request_wire, fd,
                                                  fdcheck.inspect_fd(fd, with_sysfs=True)),
                           number)
            - _time(lambda: decode(request_wire), number),
            "ioctl": _time(lambda: sgio.issue(fd, CDB, b"", 30000), number),
            "reply": _time(lambda: map_outcome(outcome, 8192, pr_in=True), number),
            "encode": _time(lambda: result.encode(), number),
        }
        return {"broker": broker, "worker": worker}
    finally:
        os.close(fd)
