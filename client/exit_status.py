"""prguard-client's exit status: sg_persist's, which is sg3_utils' (sg3_utils(8), EXIT
STATUS), so that a script written for sg_persist reads the same number for the same
outcome. Pure: a reply, an errno or a usage mistake in, a number out.

The category of a CHECK CONDITION follows sg3_utils' sg_err_category_sense(); a status
other than GOOD and CHECK CONDITION has its own number; an OS error is 50 + errno (50
for errno values of 47 and up).
"""

from __future__ import annotations

from enum import IntEnum

from prguard.client.decode import DecodeError, decode_sense
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import SenseKey, Status


class ExitStatus(IntEnum):
    """The numbers and names of sg3_utils' SG_LIB_* exit values prguard-client uses."""

    GOOD = 0
    SYNTAX_ERROR = 1  #: an option or its value is wrong
    NOT_READY = 2
    MEDIUM_HARD = 3  #: MEDIUM ERROR, HARDWARE ERROR or BLANK CHECK
    ILLEGAL_REQUEST = 5  #: other than an invalid operation code
    UNIT_ATTENTION = 6
    DATA_PROTECT = 7
    INVALID_OP = 9  #: ILLEGAL REQUEST, invalid command operation code (20/00)
    COPY_ABORTED = 10
    ABORTED_COMMAND = 11
    MISCOMPARE = 14
    NO_SENSE = 20
    RECOVERED = 21
    LBA_OUT_OF_RANGE = 22
    RESERVATION_CONFLICT = 24
    CONDITION_MET = 25
    BUSY = 26
    TASK_SET_FULL = 27
    ACA_ACTIVE = 28
    TASK_ABORTED = 29
    CONTRADICT = 31  #: options that exclude each other, or one missing for another
    TIMEOUT = 33  #: the helper did not answer in time
    PROTECTION = 40  #: ABORTED COMMAND with ASC 0x10
    OS_ERROR = 50  #: plus errno, see `of_errno`
    MALFORMED = 97  #: PR IN data that does not decode
    SENSE = 98  #: a CHECK CONDITION fitting no other category
    OTHER = 99  #: the helper closed the connection, or sent no usable reply


_STATUS: dict[int, ExitStatus] = {
    Status.GOOD: ExitStatus.GOOD,
    Status.RESERVATION_CONFLICT: ExitStatus.RESERVATION_CONFLICT,
    0x04: ExitStatus.CONDITION_MET,
    Status.BUSY: ExitStatus.BUSY,
    Status.TASK_SET_FULL: ExitStatus.TASK_SET_FULL,
    0x30: ExitStatus.ACA_ACTIVE,
    0x40: ExitStatus.TASK_ABORTED,
}

_SENSE_KEY: dict[int, ExitStatus] = {
    SenseKey.NO_SENSE: ExitStatus.NO_SENSE,
    0x1: ExitStatus.RECOVERED,
    SenseKey.NOT_READY: ExitStatus.NOT_READY,
    SenseKey.MEDIUM_ERROR: ExitStatus.MEDIUM_HARD,
    SenseKey.HARDWARE_ERROR: ExitStatus.MEDIUM_HARD,
    0x8: ExitStatus.MEDIUM_HARD,  # BLANK CHECK
    SenseKey.UNIT_ATTENTION: ExitStatus.UNIT_ATTENTION,
    SenseKey.DATA_PROTECT: ExitStatus.DATA_PROTECT,
    0xA: ExitStatus.COPY_ABORTED,
    0xE: ExitStatus.MISCOMPARE,
}

#: sg3_utils sets 51..96 aside for errno 1..46.
_LAST_ERRNO = ExitStatus.MALFORMED - ExitStatus.OS_ERROR - 1


def of_sense(sense: bytes) -> ExitStatus:
    """The category of a CHECK CONDITION's sense, as sg_err_category_sense() has it."""
    try:
        decoded = decode_sense(sense)
    except DecodeError:
        return ExitStatus.SENSE
    if decoded is None:
        return ExitStatus.SENSE
    key, asc, ascq = decoded.code.key, decoded.code.asc, decoded.code.ascq
    if key == SenseKey.ILLEGAL_REQUEST:
        if (asc, ascq) == (0x20, 0x00):
            return ExitStatus.INVALID_OP
        if (asc, ascq) == (0x21, 0x00):
            return ExitStatus.LBA_OUT_OF_RANGE
        return ExitStatus.ILLEGAL_REQUEST
    if key == SenseKey.ABORTED_COMMAND:
        return ExitStatus.PROTECTION if asc == 0x10 else ExitStatus.ABORTED_COMMAND
    return _SENSE_KEY.get(key, ExitStatus.SENSE)


def of_reply(reply: PrReply, pr_out: bool) -> ExitStatus:
    """The exit status for a reply, before its data is looked at.

    sg_persist counts a CHECK CONDITION with NO SENSE or RECOVERED ERROR as success.
    So does this for PR OUT; a PR IN so answered brings no data back through the
    helper (the protocol carries data only with GOOD), so it keeps its category.
    """
    if reply.status == Status.CHECK_CONDITION:
        category = of_sense(reply.sense)
        if pr_out and category in (ExitStatus.NO_SENSE, ExitStatus.RECOVERED):
            return ExitStatus.GOOD
        return category
    return _STATUS.get(reply.status, ExitStatus.OTHER)


def of_errno(errno: int | None) -> int:
    """A failed system call (opening the device, connecting to the socket)."""
    if errno is None or errno <= 0 or errno > _LAST_ERRNO:
        return ExitStatus.OS_ERROR
    return ExitStatus.OS_ERROR + errno
