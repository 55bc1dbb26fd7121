"""The exit status is sg_persist's: each outcome's number, and each number's meaning
as sg3_utils itself spells it (sg_decode_sense --err=N, on this machine)."""

from __future__ import annotations

import errno
import subprocess

import pytest

from prguard.client.exit_status import ExitStatus, of_errno, of_reply, of_sense
from prguard.shared.qemu_protocol import PrReply
from prguard.shared.scsi import ZERO_SENSE, Sense, SenseCode, Status


def fixed(key: int, asc: int, ascq: int) -> bytes:
    return SenseCode(key, asc, ascq).fixed_format()


def descriptor(key: int, asc: int, ascq: int) -> bytes:
    return bytes([0x72, key, asc, ascq]).ljust(96, b"\0")


@pytest.mark.parametrize(("sense", "status"), [
    (fixed(0x2, 0x04, 0x01), ExitStatus.NOT_READY),
    (fixed(0x3, 0x11, 0x00), ExitStatus.MEDIUM_HARD),
    (fixed(0x4, 0x44, 0x00), ExitStatus.MEDIUM_HARD),
    (fixed(0x8, 0x00, 0x00), ExitStatus.MEDIUM_HARD),  # BLANK CHECK
    (Sense.INVALID_FIELD.fixed_format(), ExitStatus.ILLEGAL_REQUEST),
    (Sense.INVALID_PARAM.fixed_format(), ExitStatus.ILLEGAL_REQUEST),
    (Sense.INVALID_OPCODE.fixed_format(), ExitStatus.INVALID_OP),
    (fixed(0x5, 0x21, 0x00), ExitStatus.LBA_OUT_OF_RANGE),
    (fixed(0x6, 0x2A, 0x03), ExitStatus.UNIT_ATTENTION),
    (descriptor(0x6, 0x29, 0x00), ExitStatus.UNIT_ATTENTION),
    (fixed(0x7, 0x27, 0x07), ExitStatus.DATA_PROTECT),
    (fixed(0xA, 0x00, 0x00), ExitStatus.COPY_ABORTED),
    (Sense.IO_ERROR.fixed_format(), ExitStatus.ABORTED_COMMAND),
    (Sense.LUN_COMM_FAILURE.fixed_format(), ExitStatus.ABORTED_COMMAND),
    (fixed(0xB, 0x10, 0x01), ExitStatus.PROTECTION),
    (fixed(0xE, 0x1D, 0x00), ExitStatus.MISCOMPARE),
    (fixed(0x0, 0x00, 0x00), ExitStatus.NO_SENSE),
    (fixed(0x1, 0x00, 0x00), ExitStatus.RECOVERED),
    (fixed(0x9, 0x00, 0x00), ExitStatus.SENSE),  # vendor specific
    (fixed(0xD, 0x00, 0x00), ExitStatus.SENSE),  # VOLUME OVERFLOW
    (ZERO_SENSE, ExitStatus.SENSE),  # CHECK CONDITION without sense
    (b"\x7e" + bytes(95), ExitStatus.SENSE),  # not sense data at all
])
def test_check_condition_categories_follow_sg_err_category_sense(
        sense: bytes, status: ExitStatus) -> None:
    assert of_sense(sense) == status
    assert of_reply(PrReply(Status.CHECK_CONDITION, sense), pr_out=False) == status


@pytest.mark.parametrize(("status", "code"), [
    (Status.GOOD, 0), (Status.RESERVATION_CONFLICT, 24), (0x04, 25), (Status.BUSY, 26),
    (Status.TASK_SET_FULL, 27), (0x30, 28), (0x40, 29), (0x22, 99),
])
def test_statuses(status: int, code: int) -> None:
    for pr_out in (False, True):
        assert of_reply(PrReply(status, ZERO_SENSE), pr_out) == code


@pytest.mark.parametrize("key", [0x0, 0x1])
def test_no_sense_and_recovered_error_are_success_for_pr_out_only(key: int) -> None:
    reply = PrReply(Status.CHECK_CONDITION, fixed(key, 0, 0))
    assert of_reply(reply, pr_out=True) == ExitStatus.GOOD
    assert of_reply(reply, pr_out=False) == (20 if key == 0 else 21)


@pytest.mark.parametrize(("number", "code"), [
    (errno.EPERM, 51), (errno.ENOENT, 52), (errno.EACCES, 63), (errno.ENOTDIR, 70),
    (46, 96), (47, 50), (errno.ECONNREFUSED, 50), (None, 50),
])
def test_os_errors_are_fifty_plus_errno(number: int | None, code: int) -> None:
    assert of_errno(number) == code


#: What sg_decode_sense --err=N says of each number this command uses.
MEANINGS = {
    ExitStatus.SYNTAX_ERROR: "Syntax error", ExitStatus.NOT_READY: "not ready",
    ExitStatus.MEDIUM_HARD: "Medium or hardware error",
    ExitStatus.ILLEGAL_REQUEST: "Illegal request", ExitStatus.UNIT_ATTENTION: "Unit attention",
    ExitStatus.DATA_PROTECT: "Data protect", ExitStatus.INVALID_OP: "Invalid opcode",
    ExitStatus.COPY_ABORTED: "Copy aborted", ExitStatus.ABORTED_COMMAND: "Aborted command",
    ExitStatus.MISCOMPARE: "Miscompare", ExitStatus.NO_SENSE: "No sense",
    ExitStatus.RECOVERED: "Recovered error", ExitStatus.LBA_OUT_OF_RANGE: "out of range",
    ExitStatus.RESERVATION_CONFLICT: "Reservation conflict",
    ExitStatus.CONDITION_MET: "Condition met", ExitStatus.BUSY: "Busy",
    ExitStatus.TASK_SET_FULL: "Task set full", ExitStatus.ACA_ACTIVE: "ACA",  # (sic "aactive")
    ExitStatus.TASK_ABORTED: "Task aborted", ExitStatus.CONTRADICT: "Contradict",
    ExitStatus.TIMEOUT: "timeout", ExitStatus.PROTECTION: "Protection",
    ExitStatus.MALFORMED: "Malformed", ExitStatus.SENSE: "other sense",
    ExitStatus.OTHER: "other error",
}


@pytest.mark.parametrize("status", [s for s in ExitStatus if s not in (0, 50)])
def test_each_number_means_what_sg3_utils_says(status: ExitStatus) -> None:
    said = subprocess.run(["sg_decode_sense", f"--err={int(status)}"], capture_output=True,
                          text=True, check=True).stdout
    assert MEANINGS[status].lower() in said.lower(), said


def test_fifty_plus_errno_is_the_errno_for_sg3_utils_too() -> None:
    said = subprocess.run(["sg_decode_sense", f"--err={of_errno(errno.EACCES)}"],
                          capture_output=True, text=True, check=True).stdout
    assert said.strip() == "Permission denied"
