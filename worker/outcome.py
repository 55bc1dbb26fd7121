"""The one status/sense mapping of an SG_IO outcome (QEMU >= 5.2, spec 3.3), as pure code.

Order: ioctl errno, then host_status, then driver timeout, then the device's status
byte with whatever sense the kernel wrote. One deliberate deviation: a host_status the C
helper does not know (e.g. DID_ERROR) is CHECK CONDITION 0b/08/00, not GOOD: an
outcome nobody can vouch for must never read as success.
"""

from __future__ import annotations

import errno as E

from prguard.shared.scsi import SENSE_SIZE, PrReply, Sense, SenseCode, Status
from prguard.worker.sgio import SgIoOutcome

SG_ERR_DRIVER_TIMEOUT = 0x06

ERRNO_TABLE: dict[int, tuple[Status, SenseCode | None]] = {
    E.EDOM: (Status.TASK_SET_FULL, None),
    E.ENODEV: (Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    E.EREMOTEIO: (Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    E.ENOMEM: (Status.CHECK_CONDITION, Sense.TARGET_FAILURE),
    E.EBADE: (Status.RESERVATION_CONFLICT, None),
    E.ENODATA: (Status.CHECK_CONDITION, Sense.READ_ERROR),
    E.ENOMEDIUM: (Status.CHECK_CONDITION, Sense.NO_MEDIUM),
    E.EINVAL: (Status.CHECK_CONDITION, Sense.INVALID_FIELD),
    E.ENOSPC: (Status.CHECK_CONDITION, Sense.SPACE_ALLOC_FAILED),
}
ERRNO_DEFAULT = (Status.CHECK_CONDITION, Sense.IO_ERROR)

#: Linux DID_* host byte values -> reply (scsi_sense_from_host_status).
HOST_TABLE: dict[int, tuple[Status, SenseCode | None]] = {
    0x01: (Status.CHECK_CONDITION, Sense.LUN_NOT_RESPONDING),  # DID_NO_CONNECT
    0x02: (Status.BUSY, None),  # DID_BUS_BUSY
    0x03: (Status.CHECK_CONDITION, Sense.COMMAND_TIMEOUT),  # DID_TIME_OUT
    0x04: (Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE),  # DID_BAD_TARGET
    0x05: (Status.CHECK_CONDITION, Sense.COMMAND_ABORTED),  # DID_ABORT
    0x08: (Status.CHECK_CONDITION, Sense.RESET),  # DID_RESET
    0x0E: (Status.CHECK_CONDITION, Sense.I_T_NEXUS_LOSS),  # DID_TRANSPORT_DISRUPTED
    0x10: (Status.CHECK_CONDITION, Sense.TARGET_FAILURE),  # DID_TARGET_FAILURE
    0x11: (Status.RESERVATION_CONFLICT, None),  # DID_NEXUS_FAILURE
    0x12: (Status.CHECK_CONDITION, Sense.SPACE_ALLOC_FAILED),  # DID_ALLOC_FAILURE
    0x13: (Status.CHECK_CONDITION, Sense.READ_ERROR),  # DID_MEDIUM_ERROR
}
#: prguard's answer for host bytes the table lacks (the C helper answers GOOD).
HOST_DEFAULT = (Status.CHECK_CONDITION, Sense.LUN_COMM_FAILURE)


def _generated(status: Status, code: SenseCode | None, kernel_sense: bytes) -> PrReply:
    if code is None:
        return PrReply(int(status), kernel_sense)
    # scsi_build_sense overwrites the first 18 bytes and leaves the rest as it was.
    built = code.fixed_format()
    return PrReply(int(status), built[:18] + kernel_sense[18:])


def map_outcome(outcome: SgIoOutcome, allocation_length: int, pr_in: bool) -> PrReply:
    """Reply for QEMU. PR IN data: bytes transferred, cut to the allocation length."""
    sense = outcome.sense[:SENSE_SIZE].ljust(SENSE_SIZE, b"\0")
    if outcome.errno:
        status, code = ERRNO_TABLE.get(outcome.errno, ERRNO_DEFAULT)
        return _generated(status, code, sense)
    if outcome.host_status:
        status, code = HOST_TABLE.get(outcome.host_status, HOST_DEFAULT)
        return _generated(status, code, sense)
    if outcome.driver_status & SG_ERR_DRIVER_TIMEOUT:
        return PrReply(int(Status.BUSY), sense)
    if outcome.status != Status.GOOD:
        return PrReply(outcome.status, sense)
    if not pr_in:
        return PrReply(int(Status.GOOD), sense)
    transferred = len(outcome.data) - min(max(outcome.resid, 0), len(outcome.data))
    return PrReply(int(Status.GOOD), sense, outcome.data[:min(transferred, allocation_length)])
