"""The worker's decisions on one datagram, without a device or a process: every refusal
`handler.screen` can give, and what `handler.run` makes of the device's answer."""

from __future__ import annotations

import errno
import stat

import pytest

from prguard.client.session import pr_in_cdb, pr_out_cdb
from prguard.shared.messages import (
    Alive,
    Malformed,
    Message,
    Probe,
    Ready,
    Refused,
    SgIoRequest,
    SgIoResult,
)
from prguard.shared.rules import FdFacts, FdKind
from prguard.shared.scsi import ZERO_SENSE, PrReply, Sense, SenseCode, Status
from prguard.worker.handler import Job, run, screen
from prguard.worker.sgio import SgIoOutcome

FD = 42
RDEV = 0x800
DISK = FdFacts(FdKind.BLOCK_DISK, read_only=False, rdev=RDEV)
DISK_RO = FdFacts(FdKind.BLOCK_DISK, read_only=True, rdev=RDEV)
SG = FdFacts(FdKind.SCSI_GENERIC, read_only=False, rdev=0x1500)


def req(cdb: bytes, data: bytes = b"", rid: int = 7) -> bytes:
    return SgIoRequest(rid, cdb, data).encode()


@pytest.mark.parametrize(("datagram", "fd", "facts", "sense", "reason"), [
    # framing: what the QEMU side already guarantees, checked again
    (req(b"\x2a" + bytes(15)), FD, DISK, Sense.INVALID_FIELD,
     "opcode 0x2a is not PERSISTENT RESERVE IN/OUT"),
    (req(pr_in_cdb(0, 8193)), FD, DISK, Sense.INVALID_FIELD, "transfer length over 8192"),
    (req(pr_in_cdb(0, 24), bytes(24)), FD, DISK, Sense.INVALID_FIELD,
     "24 data bytes where the CDB says 0"),
    (req(pr_out_cdb(0, 24), bytes(23)), FD, DISK, Sense.INVALID_FIELD,
     "23 data bytes where the CDB says 24"),
    # no fd, or one that could not be inspected
    (req(pr_in_cdb()), None, None, Sense.INVALID_FIELD, "no usable fd with the request"),
    (req(pr_in_cdb()), FD, None, Sense.INVALID_FIELD, "no usable fd with the request"),
    # the request rules
    (req(pr_out_cdb(0, 24), bytes(24)), FD, DISK_RO, Sense.INVALID_OPCODE,
     "PR OUT on a read-only fd"),
    (req(pr_in_cdb()), FD, FdFacts(FdKind.PARTITION, read_only=False), Sense.IO_ERROR,
     "fd is partition"),
    (req(pr_out_cdb(0, 24), bytes(24)), FD, FdFacts(FdKind.DM_NOT_MULTIPATH, read_only=False),
     Sense.IO_ERROR, "fd is device-mapper map that is not a whole-LU multipath map"),
    (req(pr_in_cdb()), FD, FdFacts(FdKind.UNKNOWN_BLOCK, read_only=False), Sense.IO_ERROR,
     "fd is block device sysfs does not describe"),
    (req(pr_in_cdb()), FD, FdFacts(FdKind.OTHER, read_only=False), Sense.IO_ERROR,
     "fd is not a SCSI device"),
    (req(pr_in_cdb(4)), FD, DISK, Sense.INVALID_FIELD, "undefined service action 0x04"),
    (req(b"\x5f\0\0\0\0\x00\x01\x00\x18" + bytes(7), bytes(24)), FD, DISK,
     Sense.INVALID_FIELD, "parameter list length over 65535"),
])
def test_every_refusal(datagram: bytes, fd: int | None, facts: FdFacts | None,
                       sense: SenseCode, reason: str) -> None:
    assert screen(datagram, fd, facts) == Refused(7, Status.CHECK_CONDITION,
                                                  sense.fixed_format(), reason)


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"", "not a msgpack message"),
    (b"\xc1", "not a msgpack message"),
    (bytes(300), "not a msgpack message"),
    (Ready(1234).encode(), "Ready is not a request"),
    (SgIoResult(1, PrReply(0, ZERO_SENSE)).encode(), "SgIoResult is not a request"),
])
def test_what_is_not_a_request_is_malformed(datagram: bytes, reason: str) -> None:
    answer = screen(datagram, FD, DISK)
    assert isinstance(answer, Malformed)
    assert reason in answer.reason and len(answer.reason) <= 200


@pytest.mark.parametrize(("cdb", "data", "facts"), [
    (pr_in_cdb(0, 24), b"", DISK),
    (pr_in_cdb(0, 24), b"", DISK_RO),  # PR IN on a read-only fd is fine
    (pr_in_cdb(3, 8192), b"", SG),
    (pr_out_cdb(0, 24), bytes(24), DISK),
    (pr_out_cdb(8, 0), b"", SG),
])
def test_valid_requests_become_jobs_for_their_device(cdb: bytes, data: bytes,
                                                    facts: FdFacts) -> None:
    job = screen(req(cdb, data), FD, facts)
    assert job == Job(SgIoRequest(7, cdb, data), FD, facts.rdev,
                      stat.S_IFCHR if facts is SG else stat.S_IFBLK)


def outcome(err: int = 0, status: int = 0, data: bytes = b"", resid: int = 0,
            sense: bytes = b"") -> SgIoOutcome:
    return SgIoOutcome(errno=err, status=status, host_status=0, driver_status=0, resid=resid,
                       sense=sense, data=data)


def test_run_hands_the_job_to_sg_io_and_maps_its_answer() -> None:
    calls: list[tuple[int, bytes, bytes]] = []
    body = bytes(range(8)) + bytes(16)

    def sg_io(fd: int, cdb: bytes, data: bytes) -> SgIoOutcome:
        calls.append((fd, cdb, data))
        return outcome(data=body, resid=0)

    job = Job(SgIoRequest(9, pr_in_cdb(0, 24), b""), FD, RDEV)
    result = run(job, sg_io)
    assert calls == [(FD, pr_in_cdb(0, 24), b"")]
    assert result == SgIoResult(9, PrReply(Status.GOOD, ZERO_SENSE, body))


def test_run_never_reports_good_for_a_failed_call() -> None:
    job = Job(SgIoRequest(3, pr_out_cdb(0, 24), bytes(24)), FD, RDEV)
    result = run(job, lambda fd, cdb, data: outcome(err=errno.EINVAL))
    assert isinstance(result, Message) and isinstance(result, SgIoResult)
    assert result.id == 3 and result.reply.status == Status.CHECK_CONDITION
    assert result.reply.data == b""


def test_a_liveness_probe_is_answered_at_once_without_a_device() -> None:
    """Whichever thread takes it answers Alive with its id, and no Job is made."""
    assert screen(Probe(41).encode(), None, None) == Alive(41)
    # A probe never carries an fd: one that does is a broker off the protocol.
    assert screen(Probe(41).encode(), 7, FdFacts(FdKind.BLOCK_DISK, read_only=False)) == \
        Malformed("a probe with an fd")
    # Alive goes the other way: a worker is never sent one.
    assert isinstance(screen(Alive(41).encode(), None, None), Malformed)
